"""`make bench` (latency): how soon a worker holds a job after it was
committed, and how soon 100 followers of one job see its events.

One job-service process on a fresh SQLite database (the embedded default).
A scripted worker (a real DispatchService stream with 64 slots, taking jobs
and holding them) records when each assignment arrives.

- Dispatch latency: job created (its `create_time`, stamped in the submit's
  transaction) -> assignment received by the worker. Idle: one submit at a
  time. Under load: 8 clients submitting at once.
- Followers: 100 StreamResults streams on one running job; the worker
  reports progress, each report sent once every follower saw the one before.
  Latency = the follower's receive time - the event's create_time.

One host, one clock. Numbers are printed, never asserted (targets: dispatch
p50 <= 2 ms and p99 <= 10 ms idle).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import grpc
from bench_replicas import Followers, ScriptedWorker, _summary
from benchkit import job_service, report_only

from videojobs.client import AsyncJobClient
from videojobs.stack.sample_video import write_sample_video
from videojobs.v1 import job_service_pb2 as js
from videojobs.v1 import job_service_pb2_grpc

SLOTS = 64
IDLE_JOBS = 60
LOADED_JOBS = 60
LOAD_CLIENTS = 8
FOLLOWERS = 100
FOLLOWED_EVENTS = 40
STEP_TIMEOUT = 10.0


def _seconds(stamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


async def dispatch_latencies(
    client: AsyncJobClient, worker: ScriptedWorker, video: Path, jobs: int, clients: int
) -> list[float]:
    """Submits `jobs` jobs from `clients` concurrent submitters; returns each
    job's created -> held latency."""
    created: dict[str, float] = {}
    held: dict[str, float] = {}
    arrived = asyncio.Condition()

    async def collect() -> None:
        while len(held) < jobs:
            assignment = await asyncio.wait_for(worker.assignments.get(), STEP_TIMEOUT)
            held[assignment.job_id] = time.time()
            async with arrived:
                arrived.notify_all()

    async def submitter(count: int) -> None:
        for _ in range(count):
            job = await client.submit(video, pipeline="probe")
            created[job.job_id] = _seconds(job.create_time)
            if clients == 1:  # idle: the next submit only once this one is held
                async with arrived:
                    await asyncio.wait_for(
                        arrived.wait_for(lambda job_id=job.job_id: job_id in held), STEP_TIMEOUT
                    )

    collector = asyncio.create_task(collect())
    share = [jobs // clients + (1 if n < jobs % clients else 0) for n in range(clients)]
    await asyncio.gather(*(submitter(count) for count in share))
    await collector
    return [held[job_id] - created[job_id] for job_id in created]


async def follower_latencies(address: str, worker: ScriptedWorker, video: Path) -> list[float]:
    """100 followers on one job while the worker reports progress."""
    async with AsyncJobClient(address, token="") as client:
        job = await client.submit(video, pipeline="probe")
    assignment = await asyncio.wait_for(worker.assignments.get(), STEP_TIMEOUT)
    assert assignment.job_id == job.job_id
    channel = grpc.aio.insecure_channel(address)
    stub = job_service_pb2_grpc.JobServiceStub(channel)
    followers = Followers()
    tasks = [
        asyncio.create_task(followers.follow(stub, "A", job.job_id, n)) for n in range(FOLLOWERS)
    ]
    try:
        if not await followers.wait_all(job.job_id, FOLLOWERS, 2):
            raise RuntimeError("the followers did not catch up with the job's history")
        for step in range(1, FOLLOWED_EVENTS + 1):
            worker.progress(assignment, step / (FOLLOWED_EVENTS + 1))
            await followers.wait_all(job.job_id, FOLLOWERS, 2 + step)
        await stub.CancelJob(js.CancelJobRequest(job_id=job.job_id), timeout=10)
        await asyncio.wait_for(asyncio.gather(*tasks), STEP_TIMEOUT)
    finally:
        for task in tasks:
            task.cancel()
        await channel.close()
    return followers.latencies["A"]


async def measure(address: str, video: Path) -> None:
    async with AsyncJobClient(address, token="") as client:
        for name, jobs, clients in (
            ("idle", IDLE_JOBS, 1),
            (f"under load ({LOAD_CLIENTS} submitting)", LOADED_JOBS, LOAD_CLIENTS),
        ):
            worker = ScriptedWorker(address, capacity=SLOTS)
            await worker.start()
            try:
                latencies = await dispatch_latencies(client, worker, video, jobs, clients)
            finally:
                await worker.close()
            # The held jobs go back to the queue and stay there: the next
            # worker takes them first, so cancel them.
            async for job in client.iter_jobs(states=[1, 2]):
                await client.cancel(job.job_id)
            print(
                f"latency: dispatch, job created -> worker holds it, {name}: {_summary(latencies)}"
            )
    worker = ScriptedWorker(address, capacity=SLOTS)
    await worker.start()
    try:
        latencies = await follower_latencies(address, worker, video)
    finally:
        await worker.close()
    print(f"latency: event -> each of {FOLLOWERS} followers of one job: {_summary(latencies)}")


async def run() -> None:
    with tempfile.TemporaryDirectory(prefix="videojobs-bench-latency-") as scratch:
        root = Path(scratch)
        video = root / "small.mp4"
        write_sample_video(video, width=160, height=120, fps=25, frames=25)
        async with job_service(root / "data", LEASE_DURATION="60") as server:
            await measure(server.address, video)


def main() -> None:
    """Runs the measurements and prints them; exits 0 whatever it finds."""
    report_only("latency", run)


if __name__ == "__main__":
    main()
