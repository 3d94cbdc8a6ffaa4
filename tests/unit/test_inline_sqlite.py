"""The embedded SQLite database runs on the event loop's thread
(`store/inline_sqlite.py`): statements make no thread hop, another process's
write lock is waited for without blocking the loop, readers never wait, and
every commit is fsynced."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import timedelta

import pytest
from sqlalchemy import event, text

from videojobs.jobservice.domain import utc_now
from videojobs.jobservice.store import Database
from videojobs.jobservice.store.inline_sqlite import DRIVER

from support.waiting import eventually


@pytest.fixture
async def database(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'videojobs.db'}")
    await db.migrate()
    try:
        yield db
    finally:
        await db.dispose()


def other_process_connection(db: Database) -> sqlite3.Connection:
    """A connection of its own, as another process (a retention run) has."""
    connection = sqlite3.connect(db.url.database, isolation_level=None, timeout=0)
    connection.execute("PRAGMA journal_mode=WAL")
    return connection


async def staged_owner(db: Database, key: str) -> str | None:
    async with db.reading() as repository:
        return await repository.staged_upload_owner(key)


async def test_statements_run_on_the_event_loop_thread(database: Database) -> None:
    assert database._write_engine.dialect.driver == DRIVER
    threads: set[int] = set()
    for engine in (database._write_engine, database._read_engine):
        event.listen(
            engine.sync_engine,
            "before_cursor_execute",
            lambda *args: threads.add(threading.get_ident()),
        )
    async with database.transaction() as repository:
        await repository.claim_staged_upload("uploads/" + "a" * 32, "acme")
    assert await staged_owner(database, "uploads/" + "a" * 32) == "acme"
    assert threads == {threading.get_ident()}


async def test_a_writer_never_waits_inside_sqlite(database: Database) -> None:
    # Its waits for another process happen between tries, with the loop running.
    async with database._write_engine.connect() as connection:
        assert (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 0


async def test_every_commit_is_fsynced(database: Database) -> None:
    # synchronous=FULL (2): a commit returns once it is on disk, in WAL mode.
    for engine in (database._write_engine, database._read_engine):
        async with engine.connect() as connection:
            assert (await connection.exec_driver_sql("PRAGMA synchronous")).scalar() == 2
            assert (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"


async def test_a_writer_waits_for_another_process_without_blocking_the_loop(
    database: Database,
) -> None:
    other = other_process_connection(database)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:

        async def write() -> None:
            async with database.transaction() as repository:
                await repository.claim_staged_upload("uploads/" + "b" * 32, "acme")

        writer = asyncio.create_task(write())
        ticks = 0

        async def loop_runs_on() -> bool:
            nonlocal ticks
            ticks += 1
            return ticks >= 25

        # The loop keeps turning (25 rounds of `eventually`) while the writer waits.
        await eventually(loop_runs_on, interval=0.01, what="the loop to keep running")
        assert not writer.done()
        # A reader is not held up by either.
        assert await asyncio.wait_for(staged_owner(database, "uploads/" + "b" * 32), 1) is None
    finally:
        other.execute("COMMIT")
        other.close()
    await asyncio.wait_for(writer, 10)
    assert await staged_owner(database, "uploads/" + "b" * 32) == "acme"


async def test_writers_of_this_process_take_turns(database: Database) -> None:
    order: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with database.transaction() as repository:
            await repository.claim_staged_upload("uploads/" + "c" * 32, "acme")
            order.append("first in")
            inside.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        await inside.wait()
        async with database.transaction() as repository:
            # A session takes the connection at its first statement.
            await repository.claim_staged_upload("uploads/" + "d" * 32, "acme")
            order.append("second wrote")

    tasks = [asyncio.create_task(first()), asyncio.create_task(second())]
    await inside.wait()
    await eventually(
        lambda: asyncio.sleep(0, result=database._write_engine.pool.checkedout() == 1),
        what="the first writer to hold the connection",
    )
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == ["first in", "first out", "second wrote"]
    for key in ("c", "d"):
        assert await staged_owner(database, "uploads/" + key * 32) == "acme"


async def test_a_lock_held_past_the_wait_is_a_clear_error(database: Database, monkeypatch) -> None:
    from sqlalchemy.exc import OperationalError

    from videojobs.jobservice.store import inline_sqlite

    monkeypatch.setattr(inline_sqlite, "WRITE_LOCK_WAIT_SECONDS", 0.3)
    other = other_process_connection(database)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            async with database.transaction() as repository:
                await repository.forget_staged_uploads_before(utc_now() - timedelta(days=1))
    finally:
        other.execute("ROLLBACK")
        other.close()
    # The connection is usable again at once.
    async with database.transaction() as repository:
        await repository.claim_staged_upload("uploads/" + "e" * 32, "acme")
    async with database.reading() as repository:
        assert (
            await repository.session.execute(text("SELECT count(*) FROM staged_uploads"))
        ).scalar() == 1
