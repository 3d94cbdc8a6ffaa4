"""Alembic migrations of job-service agree with the ORM models and can be run
again safely."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from videojobs.jobservice.store.database import Database, alembic_config
from videojobs.jobservice.store.models import Base


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    try:
        yield db
    finally:
        await db.dispose()


def _head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head, "the migration scripts define a head revision"
    return head


async def _schema_differences(db: Database) -> list:
    def compare(connection) -> list:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)

    async with db._write_engine.connect() as connection:
        return await connection.run_sync(compare)


async def _table_names(db: Database) -> set[str]:
    async with db._write_engine.connect() as connection:
        return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))


async def _versions(db: Database) -> list[str]:
    async with db._write_engine.connect() as connection:
        rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
        return [row[0] for row in rows]


async def test_fresh_database_has_no_tables(database: Database) -> None:
    """Before migrating, the models differ from the (empty) schema: the
    comparison below is able to see a difference."""
    assert await _table_names(database) == set()
    differences = await _schema_differences(database)
    added = {diff[1].name for diff in differences if diff[0] == "add_table"}
    assert added == set(Base.metadata.tables)


async def test_migrated_schema_matches_models(database: Database) -> None:
    """After migrating, autogenerate finds no difference between the schema and
    the models (tables, columns, types, nullability, indexes, constraints)."""
    await database.migrate()
    assert set(Base.metadata.tables) <= await _table_names(database)
    assert await _schema_differences(database) == []


async def test_version_table_holds_head(database: Database) -> None:
    """alembic_version holds exactly the head revision of the scripts."""
    await database.migrate()
    assert await _versions(database) == [_head_revision()]


async def test_migrate_twice_is_idempotent(database: Database) -> None:
    """A second migrate changes nothing: same version, same schema, data kept."""
    await database.migrate()
    await database.migrate()
    assert await _versions(database) == [_head_revision()]
    assert await _schema_differences(database) == []

    async with database._write_engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO jobs (job_id, pipeline, parameters, state, attempt, max_attempts,"
                " file_name, input_key, input_size_bytes, input_sha256, progress_fraction,"
                " progress_stage, last_sequence, created_at, updated_at) VALUES"
                " (:job_id, 'probe', '{}', 'QUEUED', 1, 3, 'a.mp4', 'k', 1, :sha, 0.0, '',"
                " 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            ),
            {"job_id": "0" * 32, "sha": "0" * 64},
        )
    await database.migrate()
    async with database._write_engine.connect() as connection:
        rows = (await connection.execute(text("SELECT job_id FROM jobs"))).all()
    assert [row[0] for row in rows] == ["0" * 32]
    assert await _versions(database) == [_head_revision()]


async def test_reopened_database_migrates_as_noop(tmp_path: Path) -> None:
    """A second Database on the same file (a restarted server) migrates without
    error and sees the same head."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'reopen.db'}"
    first = Database(url)
    try:
        await first.migrate()
    finally:
        await first.dispose()
    second = Database(url)
    try:
        await second.migrate()
        assert await _versions(second) == [_head_revision()]
        assert await _schema_differences(second) == []
    finally:
        await second.dispose()
