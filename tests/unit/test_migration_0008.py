"""Migrations 0007 and 0008 keep existing jobs and their events (SQLite rebuilds
`jobs`, whose events refer to it), and 0008 turns every existing job's `a+b` pipeline name into a set
(job_pipelines rows) that dispatch and ListJobs match on, on SQLite and on
PostgreSQL, and downgrades back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import pytest
import sqlalchemy as sa

from videojobs.jobservice.store.database import Database

from support.postgres import fresh_database

# Pipeline names as versions before 0008 stored them, and the sets they mean.
STORED_NAMES = {
    "a" * 32: ("probe", ["probe"]),
    "b" * 32: ("ocr+scenes", ["ocr", "scenes"]),
    "c" * 32: ("detect+ocr+scenes+thumbnails", ["detect", "ocr", "scenes", "thumbnails"]),
}


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request, tmp_path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
        try:
            yield db
        finally:
            await db.dispose()
        return
    async with fresh_database() as url:
        db = Database(url)
        try:
            yield db
        finally:
            await db.dispose()


def _value_for(column: dict):
    """A value for a NOT NULL column without a server default."""
    kind = column["type"]
    if isinstance(kind, sa.DateTime):
        return datetime(2026, 1, 1)
    if isinstance(kind, (sa.Integer, sa.Float, sa.Numeric)):
        return 0
    if isinstance(kind, sa.JSON):
        return {}
    return "x"


async def _insert_jobs_at_0007(db: Database) -> None:
    async with db._write_engine.connect() as connection:

        def insert(sync_connection) -> None:
            columns = sa.inspect(sync_connection).get_columns("jobs")
            table = sa.Table("jobs", sa.MetaData(), autoload_with=sync_connection)
            for job_id, (name, _) in STORED_NAMES.items():
                row = {
                    c["name"]: _value_for(c)
                    for c in columns
                    if not c["nullable"] and c.get("default") is None and c["name"] != "position"
                }
                row.update(job_id=job_id, pipeline=name, state="QUEUED", tenant="default")
                sync_connection.execute(table.insert().values(**row))
                # An event refers to the job: rebuilding `jobs` must keep it valid.
                sync_connection.execute(
                    sa.text(
                        "INSERT INTO job_events (job_id, sequence, created_at, kind, "
                        "job_state, attempt, payload) VALUES (:j, 1, :t, 'state_changed', "
                        "'QUEUED', 1, '{}')"
                    ),
                    {"j": job_id, "t": datetime(2026, 1, 1)},
                )

        await connection.run_sync(insert)
        await connection.commit()


async def _pipeline_sets(db: Database) -> dict[str, list[str]]:
    async with db._write_engine.connect() as connection:
        rows = await connection.execute(
            sa.text("SELECT job_id, pipeline FROM job_pipelines ORDER BY job_id, pipeline")
        )
        found: dict[str, list[str]] = {}
        for job_id, name in rows:
            found.setdefault(job_id, []).append(name)
        return found


async def _table_names(db: Database) -> set[str]:
    async with db._write_engine.connect() as connection:
        return set(await connection.run_sync(lambda c: sa.inspect(c).get_table_names()))


async def test_existing_names_become_sets_and_downgrade_removes_them(database: Database) -> None:
    await database.migrate("0007")
    await _insert_jobs_at_0007(database)

    await database.migrate("0008")

    assert await _pipeline_sets(database) == {
        job_id: names for job_id, (_, names) in STORED_NAMES.items()
    }
    # The display name stays as it was (read through the models, which need
    # the later revisions too).
    await database.migrate()
    async with database.reading() as repository:
        for job_id, (name, names) in STORED_NAMES.items():
            job = await repository.get(job_id)
            assert job.pipeline == name
            assert list(job.pipelines) == names

    await database.downgrade("0006")
    assert "job_pipelines" not in await _table_names(database)
    await database.migrate()
    assert len(await _pipeline_sets(database)) == len(STORED_NAMES)
