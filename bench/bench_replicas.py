"""`make bench` (replicas): how fast an event reaches a follower on another
job-service replica.

Two job-service processes (A and B) on one fresh PostgreSQL database and one
shared storage directory. A scripted worker connected to A takes a few
`probe` jobs and reports progress for them; followers of every job listen on
B (the event crosses replicas through PostgreSQL LISTEN/NOTIFY) and, for
comparison, on A (same replica, in-process notice). Latency of one delivery
= the follower's receive time - the event's create_time (one host, one
clock). Each report is sent only once every follower saw the one before, so
the numbers measure delivery, not a backlog.

The database server is named by VIDEOJOBS_TEST_POSTGRES_URL (as for the
tests; default: the local `postgres` superuser on 127.0.0.1:5432). When it
cannot be reached the benchmark says so and exits 0. Numbers are printed,
never asserted (target: p50 < 20 ms across replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from sqlalchemy.engine import make_url

from videojobs.client import AsyncJobClient
from videojobs.stack.__main__ import BIN, Child
from videojobs.stack.sample_video import write_sample_video
from videojobs.v1 import dispatch_service_pb2 as dp
from videojobs.v1 import dispatch_service_pb2_grpc, job_pb2, job_service_pb2_grpc
from videojobs.v1 import job_service_pb2 as js

DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
JOBS = 8
EVENTS_PER_JOB = 25  # JOBS * EVENTS_PER_JOB progress events in all
FOLLOWERS_PER_JOB = 5  # on each replica
TARGET_P50_MS = 20.0
STEP_TIMEOUT = 10.0  # seconds every follower gets to see one event


def _dsn(url) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def _fresh_database(admin_url: str):
    """Creates a scratch database and yields its URL (None when PostgreSQL
    cannot be reached, with the reason printed); drops it afterwards."""
    import asyncpg

    url = make_url(admin_url)
    try:
        admin = await asyncpg.connect(_dsn(url), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        print(
            f"replicas: skipped, PostgreSQL not reachable at {url.render_as_string()}: "
            f"{exc!r} (set VIDEOJOBS_TEST_POSTGRES_URL)"
        )
        yield None
        return
    name = f"videojobs_bench_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class ScriptedWorker:
    """One DispatchService stream: takes assignments, sends what it is told,
    heartbeats the leases it holds."""

    def __init__(self, address: str, capacity: int) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.outgoing: asyncio.Queue = asyncio.Queue()
        self.assignments: asyncio.Queue = asyncio.Queue()
        self.held: list[dp.Assignment] = []
        self.hello = dp.WorkerHello(
            worker_id="bench-scripted", pipelines=["probe"], max_concurrent_jobs=capacity
        )
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        stub = dispatch_service_pb2_grpc.DispatchServiceStub(self.channel)
        self.call = stub.Connect(self._requests())
        welcome = await anext(aiter(self.call))
        interval = welcome.welcome.heartbeat_interval.ToTimedelta().total_seconds()
        self._tasks = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self._heartbeat(max(0.1, interval))),
        ]

    async def _requests(self):
        yield dp.ConnectRequest(hello=self.hello)
        while (message := await self.outgoing.get()) is not None:
            yield message

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for response in self.call:
                if response.WhichOneof("payload") == "assignment":
                    self.held.append(response.assignment)
                    await self.assignments.put(response.assignment)

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)  # the worker's own rhythm, not a wait for a result
            running = [dp.HeldLease(job_id=a.job_id, lease_token=a.lease_token) for a in self.held]
            self.outgoing.put_nowait(dp.ConnectRequest(heartbeat=dp.Heartbeat(running=running)))

    def progress(self, assignment: dp.Assignment, fraction: float) -> None:
        self.outgoing.put_nowait(
            dp.ConnectRequest(
                progress=dp.JobProgressReport(
                    job_id=assignment.job_id,
                    lease_token=assignment.lease_token,
                    progress=job_pb2.Progress(fraction=fraction, stage="bench"),
                )
            )
        )

    async def close(self) -> None:
        self.outgoing.put_nowait(None)
        for task in self._tasks:
            task.cancel()
        self.call.cancel()
        await self.channel.close()


class Followers:
    """StreamResults followers; records (replica, latency) of every progress event."""

    def __init__(self) -> None:
        self.latencies: dict[str, list[float]] = {"A": [], "B": []}
        self.seen: dict[tuple[str, int], int] = {}  # (job, follower) -> last sequence
        self.changed = asyncio.Condition()
        self.errors: list[str] = []

    async def follow(self, stub, replica: str, job_id: str, number: int) -> None:
        try:
            async for response in stub.StreamResults(js.StreamResultsRequest(job_id=job_id)):
                received = time.time()
                event = response.event
                if event.WhichOneof("payload") == "progress":
                    created = event.create_time.seconds + event.create_time.nanos / 1e9
                    self.latencies[replica].append(received - created)
                async with self.changed:
                    self.seen[(job_id, number)] = event.sequence
                    self.changed.notify_all()
        except grpc.aio.AioRpcError as exc:
            self.errors.append(f"{replica} {job_id}: {exc.code().name} {exc.details()}")

    async def wait_all(self, job_id: str, count: int, sequence: int) -> bool:
        """Waits until the `count` followers of `job_id` saw `sequence`."""

        def caught_up() -> bool:
            return all(self.seen.get((job_id, n), 0) >= sequence for n in range(count))

        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(caught_up), STEP_TIMEOUT)
            except TimeoutError:
                return False
        return True


def _summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return (
        f"n={len(ms)} p50 {q[49]:.1f} ms, p95 {q[94]:.1f} ms, p99 {q[98]:.1f} ms, "
        f"max {ms[-1]:.1f} ms"
    )


async def measure(addresses: dict[str, str], video: Path) -> None:
    channels = {name: grpc.aio.insecure_channel(address) for name, address in addresses.items()}
    stubs = {name: job_service_pb2_grpc.JobServiceStub(c) for name, c in channels.items()}
    worker = ScriptedWorker(addresses["A"], capacity=JOBS)
    await worker.start()
    followers = Followers()
    tasks: list[asyncio.Task] = []
    try:
        async with AsyncJobClient(addresses["A"], token="") as client:
            job_ids = [(await client.submit(video, pipeline="probe")).job_id for _ in range(JOBS)]
        assignments = {}
        for _ in range(JOBS):
            assignment = await asyncio.wait_for(worker.assignments.get(), STEP_TIMEOUT)
            assignments[assignment.job_id] = assignment
        assert set(assignments) == set(job_ids), "the scripted worker got other jobs"
        count = 2 * FOLLOWERS_PER_JOB
        for job_id in job_ids:
            for number in range(count):
                replica = "B" if number < FOLLOWERS_PER_JOB else "A"
                tasks.append(
                    asyncio.create_task(followers.follow(stubs[replica], replica, job_id, number))
                )
        # Every follower has replayed QUEUED and RUNNING: from here on it is live.
        for job_id in job_ids:
            if not await followers.wait_all(job_id, count, 2):
                print("replicas: followers did not catch up with the history", file=sys.stderr)
                return
        lagging = 0

        async def report(job_id: str) -> None:
            nonlocal lagging
            assignment = assignments[job_id]
            for step in range(1, EVENTS_PER_JOB + 1):
                worker.progress(assignment, step / (EVENTS_PER_JOB + 1))
                # QUEUED (1), RUNNING (2), then one progress event per report.
                if not await followers.wait_all(job_id, count, 2 + step):
                    lagging += 1

        started = time.perf_counter()
        await asyncio.gather(*(report(job_id) for job_id in job_ids))
        seconds = time.perf_counter() - started
        for job_id in job_ids:
            await stubs["A"].CancelJob(js.CancelJobRequest(job_id=job_id), timeout=10)
        await asyncio.wait_for(asyncio.gather(*tasks), STEP_TIMEOUT)
    finally:
        for task in tasks:
            task.cancel()
        await worker.close()
        for channel in channels.values():
            await channel.close()

    events = JOBS * EVENTS_PER_JOB
    print(
        f"replicas: {events} progress events from a worker on A ({JOBS} jobs) in {seconds:.1f} s, "
        f"{FOLLOWERS_PER_JOB} followers per job on each replica"
    )
    print(
        f"  event -> follower on B (other replica, LISTEN/NOTIFY): {_summary(followers.latencies['B'])}"
    )
    print(
        f"  event -> follower on A (same replica):                 {_summary(followers.latencies['A'])}"
    )
    if followers.latencies["B"]:
        p50 = statistics.median(followers.latencies["B"]) * 1000
        verdict = "met" if p50 < TARGET_P50_MS else "NOT met"
        print(f"  target p50 < {TARGET_P50_MS:.0f} ms across replicas: {verdict} ({p50:.1f} ms)")
    if lagging or followers.errors:
        print(f"  steps not seen by every follower within {STEP_TIMEOUT:.0f} s: {lagging}")
        for error in followers.errors[:5]:
            print(f"  follower error: {error}")


async def run() -> None:
    admin_url = os.environ.get("VIDEOJOBS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    async with _fresh_database(admin_url) as database_url:
        if database_url is None:
            return
        with tempfile.TemporaryDirectory(prefix="videojobs-bench-replicas-") as scratch:
            root = Path(scratch)
            video = root / "small.mp4"
            write_sample_video(video, width=320, height=240, fps=25, frames=50)
            servers: dict[str, Child] = {}
            try:
                for name in ("A", "B"):
                    env = dict(
                        {k: v for k, v in os.environ.items() if not k.startswith("VIDEOJOBS_")},
                        VIDEOJOBS_DATA_DIR=str(root / name),
                        VIDEOJOBS_DATABASE_URL=database_url,
                        VIDEOJOBS_STORAGE_URL=str(root / "storage"),
                        VIDEOJOBS_LISTEN="127.0.0.1:0",
                        VIDEOJOBS_LEASE_DURATION="60",
                        VIDEOJOBS_LOG_LEVEL="WARNING",
                    )
                    servers[name] = Child(
                        f"job-service {name}", [str(BIN / "videojobs-server")], env
                    )
                    # Started one after the other: the first one migrates.
                    await asyncio.to_thread(servers[name].wait_ready)
                addresses = {name: server.address for name, server in servers.items()}
                await measure(addresses, video)
            finally:
                for server in servers.values():
                    server.stop()


def main() -> None:
    """Runs the measurement and prints it; exits 0 whatever it finds."""
    try:
        asyncio.run(run())
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a benchmark reports, never fails
        print(f"replicas: benchmark did not complete: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
