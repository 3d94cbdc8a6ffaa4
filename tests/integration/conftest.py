"""A real job-service (grpc.aio on 127.0.0.1:0, temp SQLite and storage) per test."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from videojobs.jobservice.server import JobServiceApp, build_job_service
from videojobs.jobservice.settings import JobServiceSettings
from videojobs.storage import open_blob_store
from videojobs.v1 import job_service_pb2_grpc

from support.postgres import fresh_database


@dataclasses.dataclass
class RunningJobService:
    """A started job-service and what a test needs to reach into it."""

    app: JobServiceApp
    address: str
    data_dir: Path
    stub: job_service_pb2_grpc.JobServiceStub

    @property
    def storage(self):
        """The same storage the server writes (a second handle on its root)."""
        return open_blob_store(self.app.settings.storage_url)


def make_settings(data_dir: Path, **overrides) -> JobServiceSettings:
    """Test settings: port 0, short leases, files under `data_dir`."""
    values = dict(
        listen="127.0.0.1:0",
        database_url=f"sqlite+aiosqlite:///{data_dir / 'videojobs.db'}",
        storage_url=str(data_dir / "storage"),
        heartbeat_interval=0.2,
        lease_duration=2.0,
        shutdown_grace=0.5,
    )
    values.update(overrides)
    return JobServiceSettings(**values)


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request, tmp_path) -> AsyncIterator[str]:
    """Every integration test runs on the embedded default (SQLite) and on
    PostgreSQL (skipped, with the reason, when no server is reachable)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'videojobs.db'}"
        return
    async with fresh_database() as url:
        yield url


@pytest.fixture
async def start_job_service(tmp_path, database_url) -> AsyncIterator:
    """Factory: `await start_job_service(**setting_overrides)`; all are stopped at
    teardown. Services started in one test share its database."""
    started: list[tuple[JobServiceApp, grpc.aio.Channel]] = []

    async def start(data_dir: Path | None = None, **overrides) -> RunningJobService:
        directory = data_dir or tmp_path / "data"
        directory.mkdir(parents=True, exist_ok=True)
        overrides.setdefault("database_url", database_url)
        app = build_job_service(make_settings(directory, **overrides))
        address = await app.start()
        channel = grpc.aio.insecure_channel(address)
        started.append((app, channel))
        return RunningJobService(
            app, address, directory, job_service_pb2_grpc.JobServiceStub(channel)
        )

    yield start
    for app, channel in reversed(started):
        await channel.close()
        await app.stop()


@pytest.fixture
async def job_service(start_job_service) -> RunningJobService:
    """One job-service with default test settings."""
    return await start_job_service()
