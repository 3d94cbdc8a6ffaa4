"""What the single-server benchmarks share: a job-service process on a fresh
data directory, and a main() that reports instead of failing."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from videojobs.stack.__main__ import BIN, Child


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a benchmark's job-service: this process's, without
    any VIDEOJOBS_* setting of the caller, plus a fresh data dir, a free
    port, quiet logs and `settings` (VIDEOJOBS_* names without the prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOJOBS_")}
    env.update(
        VIDEOJOBS_DATA_DIR=str(data_dir),
        VIDEOJOBS_LISTEN="127.0.0.1:0",
        VIDEOJOBS_LOG_LEVEL="WARNING",
    )
    env.update({f"VIDEOJOBS_{name}": value for name, value in settings.items()})
    return env


@contextlib.asynccontextmanager
async def job_service(data_dir: Path, **settings: str) -> AsyncIterator[Child]:
    """A job-service process, ready; stopped on the way out."""
    server = Child(
        "job-service", [str(BIN / "videojobs-server")], service_env(data_dir, **settings)
    )
    try:
        await asyncio.to_thread(server.wait_ready)
        yield server
    finally:
        server.stop()


def report_only(label: str, run: Callable[[], Awaitable[None]]) -> None:
    """Runs `run()`; a benchmark that breaks says so and exits 0 (it reports,
    never fails the build)."""
    try:
        asyncio.run(run())
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a benchmark reports, never fails
        print(f"{label}: benchmark did not complete: {type(exc).__name__}: {exc}")
