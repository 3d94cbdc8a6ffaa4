"""Warm pipeline processes (worker.pool), as real processes: a child runs many
jobs, each with its own result; it is recycled after its job count or above
its memory ceiling; a stopped job's child is killed and replaced; a crashed
child is replaced and the next job runs."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
from pathlib import Path

import pytest

from videojobs.stack.sample_video import write_sample_video
from videojobs.storage import StorageKey, open_blob_store
from videojobs.storage.blobstore import put_bytes
from videojobs.worker.pool import ChildPool
from videojobs.worker.protocol import ChildTask
from videojobs.worker.runner import RunningJob, run_child

from support.child_tasks import probe_task
from support.waiting import eventually

pytestmark = pytest.mark.e2e

# Two inputs a probe tells apart.
SIZES = {"small": (160, 120), "wide": (320, 96)}


@pytest.fixture
def storage(tmp_path) -> Path:
    root = tmp_path / "storage"
    store = open_blob_store(str(root))
    for name, (width, height) in SIZES.items():
        video = io.BytesIO()
        write_sample_video(video, width=width, height=height, frames=10)
        put_bytes(store, StorageKey(f"jobs/{name}/input/source.mp4"), video.getvalue())
    return root


def _task(storage: Path, name: str, attempt: int = 1) -> ChildTask:
    return probe_task(str(storage), name, attempt)


async def _run(pool: ChildPool, task: ChildTask) -> tuple[dict, RunningJob]:
    job = RunningJob(task.job_id, task.attempt, "lease", task.pipeline)

    async def ignore(_line: dict) -> None:
        return None

    return await run_child(job, task, ignore, pool), job


async def _handed_to_a_child(job: RunningJob) -> None:
    async def child():
        return job.child

    await eventually(child, timeout=10, what="the job to reach a child")


def _pool(**overrides) -> ChildPool:
    settings = {"memory_limit_bytes": 0, "max_jobs_per_child": 100, "max_rss_bytes": 0}
    settings.update(overrides)
    return ChildPool(1, **settings)


async def test_one_child_runs_many_jobs_each_with_its_own_result(storage):
    pool = _pool()
    await pool.start()
    try:
        pids, summaries = [], {}
        for name in ["small", "wide", "small", "wide"]:
            terminal, job = await _run(pool, _task(storage, name))
            assert terminal["type"] == "completed", terminal
            pids.append(job.child.pid)
            summaries.setdefault(name, []).append(
                (terminal["summary"]["width"], terminal["summary"]["height"])
            )
        assert len(set(pids)) == 1, pids  # warm: no new process per job
        assert pool.started == 1
        assert summaries == {name: [size, size] for name, size in SIZES.items()}
        with open_blob_store(str(storage)).open_read(
            StorageKey("jobs/wide/attempts/1/results.json")
        ) as handle:
            assert json.load(handle)["job_id"] == "wide"
    finally:
        await pool.close()


async def test_a_child_is_recycled_after_its_job_count(storage):
    pool = _pool(max_jobs_per_child=2)
    await pool.start()
    try:
        pids = []
        for _ in range(5):
            terminal, job = await _run(pool, _task(storage, "small"))
            assert terminal["type"] == "completed", terminal
            pids.append(job.child.pid)
        # Jobs 1-2, 3-4 and 5 ran in three processes, in that order.
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4], pids
        assert pool.started == 3
    finally:
        await pool.close()


async def test_a_child_over_its_memory_ceiling_is_recycled(storage):
    pool = _pool(max_rss_bytes=1)  # every child is over it after any job
    await pool.start()
    try:
        first, one = await _run(pool, _task(storage, "small"))
        second, two = await _run(pool, _task(storage, "wide"))
        assert first["type"] == second["type"] == "completed"
        assert one.child.pid != two.child.pid
    finally:
        await pool.close()


async def test_stopping_a_hung_job_kills_its_child_and_the_pool_replaces_it(storage):
    pool = _pool()
    await pool.start()
    try:
        child = await pool.acquire()
        os.kill(child.pid, signal.SIGSTOP)  # the next job hangs in it
        pool.release(child)
        job = RunningJob("small", 1, "lease", "probe")

        async def ignore(_line: dict) -> None:
            return None

        running = asyncio.create_task(run_child(job, _task(storage, "small"), ignore, pool))
        await _handed_to_a_child(job)
        await job.stop("cancelled")
        assert await asyncio.wait_for(running, 10) == {"type": "stopped", "reason": "cancelled"}
        assert child.process.returncode == -signal.SIGKILL
        terminal, after = await _run(pool, _task(storage, "wide"))
        assert terminal["type"] == "completed", terminal
        assert after.child.pid != child.pid
    finally:
        await pool.close()


async def test_a_crashed_child_fails_its_job_retryably_and_is_replaced(storage):
    pool = _pool()
    await pool.start()
    try:
        child = await pool.acquire()
        os.kill(child.pid, signal.SIGSTOP)
        pool.release(child)
        job = RunningJob("small", 1, "lease", "probe")

        async def ignore(_line: dict) -> None:
            return None

        running = asyncio.create_task(run_child(job, _task(storage, "small"), ignore, pool))
        await _handed_to_a_child(job)
        os.kill(child.pid, signal.SIGKILL)  # a crash, not a stop
        terminal = await asyncio.wait_for(running, 10)
        assert terminal["type"] == "failed"
        assert terminal["reason"] == "PIPELINE_PROCESS_DIED"
        assert terminal["retryable"] is True
        assert "SIGKILL" in terminal["message"]
        again, after = await _run(pool, _task(storage, "small", attempt=2))
        assert again["type"] == "completed", again
        assert after.child.pid != child.pid
    finally:
        await pool.close()


async def test_closing_the_pool_leaves_no_process(storage):
    pool = ChildPool(2, memory_limit_bytes=0, max_jobs_per_child=100, max_rss_bytes=0)
    await pool.start()
    children = [await pool.acquire(), await pool.acquire()]
    for child in children:
        pool.release(child)
    await pool.close()
    assert all(child.process.returncode is not None for child in children)
