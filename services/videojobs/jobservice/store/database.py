"""The database handle: engines, units of work, migrations.

SQLite (the embedded default) gets WAL, a busy timeout, and `BEGIN IMMEDIATE`
for write transactions: a transaction that reads and then writes would
otherwise fail with SQLITE_BUSY when another writer got in between. Reads use
a second engine with deferred transactions so they never wait for writers.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import AsyncIterator
from importlib import resources

from alembic import command
from alembic.config import Config
from sqlalchemy import event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import AsyncAdaptedQueuePool

from videojobs.jobservice.notifier import InProcessNotifier, Notifier
from videojobs.jobservice.store.inline_sqlite import (
    DRIVER as INLINE_DRIVER,
)
from videojobs.jobservice.store.inline_sqlite import (
    INLINE_BUSY_TIMEOUT_MS,
    begin_immediate,
)
from videojobs.jobservice.store.models import ServerSecretRow
from videojobs.jobservice.store.repository import JobRepository

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _configure_sqlite(engine: AsyncEngine, *, writer: bool, inline: bool) -> None:
    # Inline, a writer never waits inside SQLite (begin_immediate waits with
    # the loop running) and a reader only briefly; with aiosqlite's threads,
    # SQLite's own busy handler waits.
    if inline:
        busy_timeout_ms = 0 if writer else INLINE_BUSY_TIMEOUT_MS
    else:
        busy_timeout_ms = SQLITE_BUSY_TIMEOUT_MS

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # Durability: every commit is fsynced (see README, "Durability").
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection) -> None:
        if inline:
            # Straight to the driver: SQLAlchemy's statement machinery cost
            # more than the BEGIN itself, once per transaction.
            driver_connection = connection.connection.dbapi_connection
            if writer:
                begin_immediate(driver_connection)
            else:
                driver_connection.execute("BEGIN")
        elif writer:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


class SingleReplicaError(RuntimeError):
    """A second job-service on one SQLite database (SQLite is single-replica)."""


# Serialises migrations of replicas starting together on PostgreSQL.
MIGRATION_LOCK_KEY = 0x76696465  # "vide"


class Database:
    """Owns the engines and hands out units of work over a JobRepository.

    Each write unit of work hands the notices its changes produced (jobs
    queued, events appended, leases to stop) to `notifier`: inside the
    transaction (so PostgreSQL sends them to other replicas on commit) and to
    this process right after the commit.
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        notifier: Notifier | None = None,
        inline_sqlite: bool = True,
    ) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        # A SQLite file runs on the event loop's thread (see inline_sqlite.py)
        # unless `inline_sqlite` is off: then aiosqlite, a thread per connection.
        inline = (
            self.is_sqlite and inline_sqlite and self.url.database not in (None, "", ":memory:")
        )
        if self.is_sqlite:
            engine_url = self.url.set(drivername=f"sqlite+{INLINE_DRIVER}") if inline else self.url
            # One write connection: writers of this process queue for it in
            # the pool (asyncio-aware), not in SQLite's busy handler.
            self._write_engine = create_async_engine(
                engine_url,
                echo=echo,
                poolclass=AsyncAdaptedQueuePool,
                pool_size=1,
                max_overflow=0,
                pool_timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
            )
            _configure_sqlite(self._write_engine, writer=True, inline=inline)
            self._read_engine = create_async_engine(engine_url, echo=echo)
            _configure_sqlite(self._read_engine, writer=False, inline=inline)
        else:
            self._write_engine = create_async_engine(self.url, echo=echo)
            self._read_engine = self._write_engine
        self._write_sessions = async_sessionmaker(self._write_engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self._read_engine, expire_on_commit=False)
        self._inline = inline
        self.notifier: Notifier = notifier or InProcessNotifier()
        self._replica_lock: int | None = None

    @property
    def write_engine(self) -> AsyncEngine:
        """The engine of write units of work (for instrumentation: its
        `sync_engine` takes SQLAlchemy event listeners)."""
        return self._write_engine

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[JobRepository]:
        """A write unit of work: commits on success, rolls back on error; its
        notices go out on commit."""
        async with self._session(self._write_sessions) as session, session.begin():
            repository = JobRepository(session, skip_locked=not self.is_sqlite)
            yield repository
            notices = repository.pending_notices()
            if notices:
                await self.notifier.before_commit(session, notices)
        if notices:
            self.notifier.after_commit(notices)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[JobRepository]:
        """A read-only unit of work."""
        async with self._session(self._read_sessions) as session, session.begin():
            yield JobRepository(session)

    @contextlib.asynccontextmanager
    async def _session(self, sessions: async_sessionmaker) -> AsyncIterator[AsyncSession]:
        """A session, closed at the end. SQLAlchemy closes an AsyncSession in
        a task of its own, shielded, so a cancellation cannot cut the close
        short (a connection awaiting its reset on the way back to the pool).
        On inline SQLite nothing in the close waits, so it cannot be cut
        short: it runs here, without the task and its two turns of the loop."""
        if not self._inline:
            async with sessions() as session:
                yield session
            return
        session = sessions()
        try:
            yield session
        finally:
            await session.close()

    def hold_single_replica_lock(self) -> None:
        """On SQLite, makes this process the database's only job-service: an
        exclusive lock on `<database>.lock`, held until `dispose()` (or the
        process's end, however it ends).

        Raises:
            SingleReplicaError: another job-service holds it.
        """
        if not self.is_sqlite or self._replica_lock is not None:
            return
        path = self.url.database
        if not path or path == ":memory:":
            return
        lock_path = f"{path}.lock"
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise SingleReplicaError(
                f"another job-service already runs on the SQLite database {path}: SQLite "
                "is the single-replica default; run several replicas on PostgreSQL "
                "(VIDEOJOBS_DATABASE_URL=postgresql+asyncpg://...)"
            ) from None
        self._replica_lock = descriptor

    def _release_single_replica_lock(self) -> None:
        if self._replica_lock is not None:
            os.close(self._replica_lock)  # closing the descriptor releases the flock
            self._replica_lock = None

    async def shared_secret(self, name: str) -> bytes:
        """The secret called `name` (32 random bytes), created on first use and
        the same for every replica and every restart sharing this database."""
        query = select(ServerSecretRow.value).where(ServerSecretRow.name == name)
        for _ in range(3):
            try:
                async with self._write_sessions() as session, session.begin():
                    value = (await session.execute(query)).scalar_one_or_none()
                    if value is None:
                        value = secrets.token_hex(32)
                        session.add(ServerSecretRow(name=name, value=value))
                return bytes.fromhex(value)
            except IntegrityError:
                continue  # another replica created it first: read theirs
        raise RuntimeError(f"could not read or create the server secret {name!r}")

    async def migrate(self, revision: str = "head") -> None:
        """Brings the schema to the newest Alembic revision (or `revision`).
        On PostgreSQL, replicas starting together take turns (an advisory
        lock), so each migration runs once."""
        await self._run_migrations(command.upgrade, revision)

    async def downgrade(self, revision: str) -> None:
        """Takes the schema back to `revision` (operators and tests)."""
        await self._run_migrations(command.downgrade, revision)

    async def _run_migrations(self, action, revision: str) -> None:
        async with self._write_engine.connect() as connection:
            if self.is_sqlite:
                # SQLite changes a column by rebuilding its table (copy, drop,
                # rename): with foreign keys on, dropping `jobs` fails while
                # events refer to it. They are switched off for the migration
                # (outside any transaction, where SQLite allows it) and
                # checked afterwards, as SQLite's documentation prescribes.
                await connection.run_sync(_driver_sql, "PRAGMA foreign_keys=OFF")
            else:
                await connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            try:
                await connection.run_sync(_migrate_to, action, revision)
                if self.is_sqlite:
                    broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
                    if broken:
                        raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
                await connection.commit()
            finally:
                if self.is_sqlite:
                    await connection.run_sync(_driver_sql, "PRAGMA foreign_keys=ON")

    async def dispose(self) -> None:
        """Closes every pooled connection (and releases the replica lock)."""
        self._release_single_replica_lock()
        await self._write_engine.dispose()
        if self._read_engine is not self._write_engine:
            await self._read_engine.dispose()


def alembic_config() -> Config:
    """The Alembic configuration of job-service's migrations (packaged with the code)."""
    config = Config()
    script_location = resources.files("videojobs.jobservice.store") / "migrations"
    config.set_main_option("script_location", str(script_location))
    return config


def _driver_sql(connection, statement: str) -> None:
    """Runs `statement` on the driver's connection, outside SQLAlchemy's
    transaction handling (PRAGMA foreign_keys takes effect only there)."""
    cursor = connection.connection.dbapi_connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


def _migrate_to(connection, action, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    action(config, revision)
