"""The database handle: engines, units of work, migrations.

SQLite (the embedded default) gets WAL, a busy timeout, and `BEGIN IMMEDIATE`
for write transactions: a transaction that reads and then writes would
otherwise fail with SQLITE_BUSY when another writer got in between. Reads use
a second engine with deferred transactions so they never wait for writers.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from importlib import resources

from alembic import command
from alembic.config import Config
from sqlalchemy import event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from videojobs.jobservice.store.models import ServerSecretRow
from videojobs.jobservice.store.repository import JobRepository

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _configure_sqlite(engine: AsyncEngine, begin_statement: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection) -> None:
        connection.exec_driver_sql(begin_statement)


class Database:
    """Owns the engines and hands out units of work over a JobRepository.

    `on_commit` is called after each successful write transaction with the ids
    of the jobs that got new events, so live followers can be woken.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self._write_engine = create_async_engine(self.url, echo=echo)
        if self.is_sqlite:
            _configure_sqlite(self._write_engine, "BEGIN IMMEDIATE")
            self._read_engine = create_async_engine(self.url, echo=echo)
            _configure_sqlite(self._read_engine, "BEGIN")
        else:
            self._read_engine = self._write_engine
        self._write_sessions = async_sessionmaker(self._write_engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self._read_engine, expire_on_commit=False)
        self.on_commit: Callable[[set[str]], None] | None = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[JobRepository]:
        """A write unit of work: commits on success, rolls back on error."""
        async with self._write_sessions() as session, session.begin():
            repository = JobRepository(session)
            yield repository
        if repository.jobs_with_new_events and self.on_commit is not None:
            self.on_commit(repository.jobs_with_new_events)

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[JobRepository]:
        """A read-only unit of work."""
        async with self._read_sessions() as session, session.begin():
            yield JobRepository(session)

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

    async def migrate(self) -> None:
        """Brings the schema to the newest Alembic revision."""
        async with self._write_engine.connect() as connection:
            await connection.run_sync(_upgrade_to_head)
            await connection.commit()

    async def dispose(self) -> None:
        """Closes every pooled connection."""
        await self._write_engine.dispose()
        if self._read_engine is not self._write_engine:
            await self._read_engine.dispose()


def alembic_config() -> Config:
    """The Alembic configuration of job-service's migrations (packaged with the code)."""
    config = Config()
    script_location = resources.files("videojobs.jobservice.store") / "migrations"
    config.set_main_option("script_location", str(script_location))
    return config


def _upgrade_to_head(connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
