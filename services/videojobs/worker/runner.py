"""Runs one assignment in a warm pipeline child (see `pool`) and relays what
it says.

The event loop only awaits pipes, so heartbeats and the job-service stream
keep flowing however heavy the decoding is. Stopping a job kills its child;
the pool starts another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from videojobs.worker.protocol import ChildTask

if TYPE_CHECKING:
    from videojobs.worker.pool import ChildPool, WarmChild

log = logging.getLogger(__name__)

# Longest protocol line accepted from a child (a partial result).
MAX_LINE_BYTES = 16 * 1024 * 1024
# glibc malloc reserves 64 MiB of address space per arena and creates up to
# 8 per core, one for each busy thread (decoder, OpenCV and ONNX Runtime
# threads). The children's memory limit caps address space, so unbounded
# arenas would make it trip on many-core machines on address space nobody
# uses. Four arenas cost nothing measurable on decoding or OCR; an operator's
# own MALLOC_ARENA_MAX wins.
CHILD_MALLOC_ARENA_MAX = "4"


@dataclass
class RunningJob:
    """An assignment in the worker's hands."""

    job_id: str
    attempt: int
    lease_token: str
    pipeline: str
    start_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    progress_fraction: float = 0.0
    stop_reason: str | None = None
    child: WarmChild | None = None

    async def stop(self, reason: str) -> None:
        """Stops the job: its child is killed (the pool replaces it)."""
        self.stop_reason = reason
        child = self.child
        if child is None or not child.alive:
            return
        child.kill()
        await child.process.wait()


Report = Callable[[dict[str, Any]], Awaitable[None]]


async def run_child(
    job: RunningJob, task: ChildTask, report: Report, pool: ChildPool
) -> dict[str, Any]:
    """Runs `task` in a warm child from `pool`, passing progress and partial
    lines to `report` as they come; returns the terminal line (completed or
    failed).

    A child that dies without a terminal line becomes a retryable INTERNAL
    failure; a job stopped on purpose becomes `{"type": "stopped"}`.
    """
    if job.stop_reason is not None:
        return {"type": "stopped", "reason": job.stop_reason}
    child = await pool.acquire()
    job.child = child
    process = child.process
    terminal: dict[str, Any] | None = None
    finished: dict[str, Any] = {}
    try:
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write((json.dumps(task.to_dict()) + "\n").encode())
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died while idle: reading finds the end at once
        while True:
            raw = await process.stdout.readline()
            if not raw:
                await process.wait()
                break
            try:
                line = json.loads(raw)
            except ValueError:
                log.warning("job %s: child wrote a line that is not JSON", job.job_id)
                continue
            kind = line.get("type")
            if kind in ("completed", "failed"):
                terminal = line
            elif kind == "idle":
                finished = line
                break
            elif kind == "progress":
                job.progress_fraction = float(line.get("fraction", 0.0))
                await report(line)
            elif kind == "partial":
                await report(line)
    except BaseException:
        # The worker is stopping this job (or itself): never leave a child behind.
        child.kill()
        await asyncio.shield(process.wait())
        pool.release(child)
        raise
    pool.release(
        child,
        rss_bytes=int(finished.get("rss_bytes", 0)),
        near_memory_limit=bool(finished.get("near_memory_limit")),
    )
    if job.stop_reason is not None:
        return {"type": "stopped", "reason": job.stop_reason}
    if terminal is not None:
        return terminal
    return {
        "type": "failed",
        "code": "INTERNAL",
        "message": f"the {task.pipeline} pipeline process ended unexpectedly "
        f"({_describe_exit(process.returncode)})",
        "reason": "PIPELINE_PROCESS_DIED",
        "retryable": True,
    }


def child_environment() -> dict[str, str]:
    """The environment of a pipeline child: the worker's, with malloc arenas
    bounded (see CHILD_MALLOC_ARENA_MAX)."""
    return {"MALLOC_ARENA_MAX": CHILD_MALLOC_ARENA_MAX, **os.environ}


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"
