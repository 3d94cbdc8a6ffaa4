"""Warm pipeline processes: a pool of pre-started children, one per slot.

Starting a Python child that imports PyAV, OpenCV, NumPy and the pipelines
costs about half a second of CPU; a short job costs far less. So each slot
has a child that has already imported everything and runs one job at a time,
many jobs over its life (`python -m videojobs.worker.child --warm`).

What per-job processes gave is kept:

- a crash, hang, cancel or timeout kills only that child (the worker kills it
  to stop its job), and the pool starts a replacement at once;
- a child is recycled (closed, replaced) after `max_jobs_per_child` jobs, when
  its resident memory passed `max_rss_bytes`, or when a job came near its
  address-space limit, so memory fragmentation and leaks cannot accumulate;
- no state passes between jobs: each job gets fresh pipeline objects and
  analyzers, its own storage connection and spool file (see `child.run_task`).

The pool is warm before the worker says hello (`start()` waits until every
child reported `ready`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from dataclasses import dataclass, field

from videojobs.worker.runner import MAX_LINE_BYTES, child_environment

log = logging.getLogger(__name__)

# How long a child may take to import the pipelines and say `ready`.
READY_TIMEOUT_SECONDS = 120.0
# How long a child closed for recycling gets to exit before it is killed.
RETIRE_GRACE_SECONDS = 2.0
# A child that failed to start is retried after this long (then doubling).
RESTART_BACKOFF_SECONDS = 0.5
MAX_RESTART_BACKOFF_SECONDS = 10.0


class PoolClosed(RuntimeError):
    """The pool is closing: no child will be handed out."""


@dataclass(eq=False)
class WarmChild:
    """One pre-started pipeline child."""

    process: asyncio.subprocess.Process
    jobs_run: int = 0
    # Set when the child must not run another job (it was killed, it came
    # near its memory limit, or it reached its job count).
    retire: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.returncode is None

    def kill(self) -> None:
        """Kills the child at once (its job is being stopped)."""
        self.retire = True
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class ChildPool:
    """`size` warm children; `acquire()` hands out an idle one."""

    def __init__(
        self,
        size: int,
        *,
        memory_limit_bytes: int,
        max_jobs_per_child: int,
        max_rss_bytes: int,
    ) -> None:
        self.size = size
        self._memory_limit_bytes = memory_limit_bytes
        self.max_jobs_per_child = max_jobs_per_child
        self.max_rss_bytes = max_rss_bytes
        self._idle: asyncio.Queue[WarmChild] = asyncio.Queue()
        self._children: set[WarmChild] = set()
        self._spawning: set[asyncio.Task] = set()
        self._closed = False
        #: Children started over the pool's life (the first `size` included).
        self.started = 0

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        """Starts every child and waits until each has imported the pipelines."""
        children = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for child in children:
            self._idle.put_nowait(child)
        log.info("%d warm pipeline process(es) ready", self.size)

    async def close(self) -> None:
        """Stops every child (idle ones exit when their stdin closes)."""
        self._closed = True
        for task in list(self._spawning):
            task.cancel()
        for task in list(self._spawning):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.gather(*(self._stop(child) for child in list(self._children)))

    # -- handing out ---------------------------------------------------------

    async def acquire(self) -> WarmChild:
        """An idle, live child (waits for one while all are busy)."""
        while True:
            if self._closed:
                raise PoolClosed("the worker is stopping")
            child = await self._idle.get()
            if child.alive and not child.retire:
                return child
            # It died while idle (killed from outside, or its memory limit):
            # replace it and look again.
            self._replace(child)

    def release(
        self, child: WarmChild, rss_bytes: int = 0, near_memory_limit: bool = False
    ) -> None:
        """`child` finished a job: back to the idle children, or recycled."""
        child.jobs_run += 1
        reason = None
        if not child.alive or child.retire:
            reason = "stopped or died"
        elif near_memory_limit:
            reason = "came near its memory limit"
        elif self.max_rss_bytes and rss_bytes > self.max_rss_bytes:
            reason = f"resident memory {rss_bytes // (1024 * 1024)} MiB over the ceiling"
        elif self.max_jobs_per_child and child.jobs_run >= self.max_jobs_per_child:
            reason = f"ran {child.jobs_run} jobs"
        if reason is None and not self._closed:
            self._idle.put_nowait(child)
            return
        if reason is not None:
            log.info("recycling pipeline process %d: %s", child.pid, reason)
        self._replace(child)

    # -- internals -----------------------------------------------------------

    def _replace(self, child: WarmChild) -> None:
        """Stops `child` and starts its replacement in the background."""
        task = asyncio.create_task(self._stop_and_respawn(child))
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)

    async def _stop_and_respawn(self, child: WarmChild) -> None:
        await self._stop(child)
        delay = RESTART_BACKOFF_SECONDS
        while not self._closed:
            try:
                replacement = await self._spawn()
            except Exception:  # noqa: BLE001 - keep trying: a slot without a child is lost capacity
                log.exception("could not start a pipeline process; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(MAX_RESTART_BACKOFF_SECONDS, delay * 2)
                continue
            if self._closed:
                await self._stop(replacement)
                return
            self._idle.put_nowait(replacement)
            return

    async def _spawn(self) -> WarmChild:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "videojobs.worker.child",
            "--warm",
            "--memory-limit-bytes",
            str(self._memory_limit_bytes),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=MAX_LINE_BYTES,
            env=child_environment(),
        )
        child = WarmChild(process)
        self._children.add(child)
        self.started += 1
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_SECONDS)
            if json.loads(line or b"{}").get("type") != "ready":
                raise RuntimeError(f"pipeline process {process.pid} did not start: {line[:200]!r}")
        except BaseException:
            await self._stop(child)
            raise
        return child

    async def _stop(self, child: WarmChild) -> None:
        """Closes the child's stdin (an idle child exits), kills it after a grace."""
        self._children.discard(child)
        process = child.process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        if process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), RETIRE_GRACE_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
