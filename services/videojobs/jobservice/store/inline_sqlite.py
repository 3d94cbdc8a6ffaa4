"""SQLite on the event loop's own thread: the `sqlite+videojobs_inline` dialect.

SQLAlchemy's asyncio support runs ORM code in a greenlet and expects every
DBAPI call to be awaitable; aiosqlite makes them so by handing each call
(cursor, execute, fetch, close, commit) to a thread of its own and waiting
for the answer. For the short statements of job-service, on a local file in
WAL mode, those hand-offs cost many times the statements themselves (about
0.4 ms each against some microseconds, several per statement).

This dialect is plain pysqlite marked as asyncio-capable: the calls run
synchronously inside SQLAlchemy's greenlet, with no thread hop. That is safe
where nothing inside SQLite waits long:

- WAL readers never wait for the writer;
- writers in this process queue for the one write connection in the
  asyncio-aware pool (`Database` gives the write engine a pool of one), not
  in SQLite;
- a write lock held by another process (a `videojobs-server retention` run,
  a migration) is waited for with `asyncio.sleep` between tries of `BEGIN
  IMMEDIATE` (see `begin_immediate`), never by blocking the loop;
- the write connection has no busy timeout (`BEGIN IMMEDIATE` fails at
  once and is tried again after a sleep); readers have a short one
  (`INLINE_BUSY_TIMEOUT_MS`) for the rare moments they meet a checkpoint or
  a recovery.

What still runs on the loop is the statement itself: a large scan (a long
GetStats window) holds the loop for its duration rather than a thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time

from sqlalchemy import pool
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.util import await_

DRIVER = "videojobs_inline"
# A reader that meets a checkpoint or a WAL recovery waits at most this long
# (blocking the loop); writers never wait inside SQLite (see begin_immediate).
INLINE_BUSY_TIMEOUT_MS = 100
# How long a writer waits, in all, for another process's write lock.
WRITE_LOCK_WAIT_SECONDS = 30.0


async def _resumed() -> None:
    """Nothing: awaited so SQLAlchemy's asyncio layer sees its greenlet
    switch once per statement (it refuses a driver that never does), without
    giving the loop a turn."""


class InlineCursor(sqlite3.Cursor):
    """A pysqlite cursor whose statements pass through SQLAlchemy's `await_`."""

    def execute(self, *args, **kwargs):  # noqa: D102 - sqlite3.Cursor.execute
        await_(_resumed())
        return super().execute(*args, **kwargs)

    def executemany(self, *args, **kwargs):  # noqa: D102 - sqlite3.Cursor.executemany
        await_(_resumed())
        return super().executemany(*args, **kwargs)

    async def _async_soft_close(self) -> None:
        """What SQLAlchemy's asyncio layer calls before a result leaves the
        greenlet: a pysqlite cursor holds nothing that needs awaiting."""


class InlineConnection(sqlite3.Connection):
    """A pysqlite connection that hands out InlineCursors."""

    def cursor(self, factory=InlineCursor):  # noqa: D102 - sqlite3.Connection.cursor
        return super().cursor(factory)


class InlineSQLiteDialect(SQLiteDialect_pysqlite):
    """pysqlite, called on the event loop thread inside SQLAlchemy's greenlet."""

    driver = DRIVER
    is_async = True
    supports_statement_cache = True

    def connect(self, *cargs, **cparams):
        """A pysqlite connection of the InlineConnection class."""
        cparams["factory"] = InlineConnection
        return super().connect(*cargs, **cparams)

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        """An asyncio-aware pool: a checkout waits with `await`, never by blocking."""
        if cls._is_url_file_db(url):
            return pool.AsyncAdaptedQueuePool
        return pool.StaticPool


registry.register(f"sqlite.{DRIVER}", __name__, "InlineSQLiteDialect")


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database is busy" in text


def begin_immediate(connection: sqlite3.Connection) -> None:
    """`BEGIN IMMEDIATE` on a driver connection, waiting for another
    process's write lock with `asyncio.sleep` (the loop runs on) between
    tries, up to WRITE_LOCK_WAIT_SECONDS; then SQLAlchemy's OperationalError
    of the last "database is locked"."""
    deadline = time.monotonic() + WRITE_LOCK_WAIT_SECONDS
    delay = 0.001
    while True:
        try:
            connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc) or time.monotonic() + delay > deadline:
                raise OperationalError("BEGIN IMMEDIATE", (), exc) from exc
        await_(asyncio.sleep(delay))
        delay = min(delay * 2, 0.05)
