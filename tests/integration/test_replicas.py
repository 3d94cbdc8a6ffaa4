"""Several job-service replicas on one database.

PostgreSQL: two replicas (A and B) on one database and one shared storage
directory, with `resync_interval=60` so that only notices (LISTEN/NOTIFY) can
explain a reaction within seconds: cross-replica wake-up of dispatchers,
cancel routing, result followers, session replacement, requeue of a lease a
reconnecting worker does not announce, and lease expiry handled exactly once.

Both backends: the ListJobs `pipeline` filter (set inclusion) and workers
announcing many pipelines. SQLite: a second job-service on one database file
is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

# pytest (importlib mode) registers this directory's conftest under this name.
from tests.integration.conftest import RunningJobService, make_settings
from videojobs.jobservice.server import build_job_service
from videojobs.jobservice.store.database import SingleReplicaError
from videojobs.pipelines import builtin_catalogue
from videojobs.v1 import dispatch_service_pb2 as dpb
from videojobs.v1 import job_pb2, job_service_pb2_grpc
from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import rich_error
from support.postgres import fresh_database
from support.scripted_worker import ScriptedWorker
from support.uploads import submit
from support.waiting import eventually

# Far below RESYNC_SECONDS: a reaction within this many seconds was caused by a
# notice, not by the safety-net re-read.
PROMPT_SECONDS = 5.0
RESYNC_SECONDS = 60.0
# Long enough that no lease expires during a test that does not want it to
# (scripted workers only heartbeat when told).
LONG_LEASE_SECONDS = 30.0

QUEUED = job_pb2.JOB_STATE_QUEUED
RUNNING = job_pb2.JOB_STATE_RUNNING


# -- helpers ------------------------------------------------------------------


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database (skipped with the reason, or failed under
    VIDEOJOBS_REQUIRE_SERVICES=1, when no server is reachable)."""
    async with fresh_database() as url:
        yield url


class Replicas:
    """Starts job-services on one PostgreSQL database, each with its own data
    dir and all with the same storage directory; stops them (once each)."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self._tmp_path = tmp_path
        self._database_url = database_url
        self._running: list[tuple[RunningJobService, grpc.aio.Channel]] = []

    async def start(self, name: str, **overrides) -> RunningJobService:
        """A started replica called `name` (its data dir is replica-<name>)."""
        directory = self._tmp_path / f"replica-{name}"
        directory.mkdir(parents=True, exist_ok=False)
        values = dict(
            database_url=self._database_url,
            storage_url=str(self._tmp_path / "shared-storage"),
            resync_interval=RESYNC_SECONDS,
            lease_duration=LONG_LEASE_SECONDS,
        )
        values.update(overrides)
        app = build_job_service(make_settings(directory, **values))
        address = await app.start()
        channel = grpc.aio.insecure_channel(address)
        replica = RunningJobService(
            app, address, directory, job_service_pb2_grpc.JobServiceStub(channel)
        )
        self._running.append((replica, channel))
        return replica

    async def stop(self, replica: RunningJobService) -> None:
        """Stops one replica (gracefully: its leases stay in the database)."""
        for index, (running, channel) in enumerate(self._running):
            if running is replica:
                del self._running[index]
                await channel.close()
                await replica.app.stop()
                return

    async def stop_all(self) -> None:
        """Stops every replica still running, newest first."""
        while self._running:
            await self.stop(self._running[-1][0])


@pytest.fixture
async def replicas(tmp_path, postgres_url) -> AsyncIterator[Replicas]:
    """`await replicas.start("a", **overrides)`; all are stopped at teardown."""
    started = Replicas(tmp_path, postgres_url)
    try:
        yield started
    finally:
        await started.stop_all()


async def _job(service: RunningJobService, job_id: str) -> job_pb2.Job:
    return (await service.stub.GetStatus(js.GetStatusRequest(job_id=job_id))).job


async def _collect(stub, job_id: str, after: int = 0) -> list[job_pb2.JobEvent]:
    """Every event after `after` up to the terminal one (the job must end)."""
    call = stub.StreamResults(js.StreamResultsRequest(job_id=job_id, after_sequence=after))
    return [response.event async for response in call]


def _state_changes(events) -> list[tuple[int, int, int]]:
    """(from_state, to_state, attempt) of every state_changed event."""
    return [
        (e.state_changed.from_state, e.state_changed.to_state, e.attempt)
        for e in events
        if e.WhichOneof("payload") == "state_changed"
    ]


async def _submit_several(stub, data: bytes, pipelines: list[str]) -> job_pb2.Job:
    return await submit(stub, data, pipeline="", pipelines=pipelines)


async def _wait_state(service, job_id, state, what: str, timeout: float = 20.0) -> job_pb2.Job:
    async def reached():
        job = await _job(service, job_id)
        return job if job.state == state else None

    return await eventually(reached, timeout=timeout, what=what)


async def _connected(replica: RunningJobService, worker_id: str) -> None:
    """Waits until `replica` has a live session of `worker_id`."""

    async def present():
        return any(s.worker_id == worker_id for s in replica.app.coordinator.sessions)

    await eventually(present, timeout=PROMPT_SECONDS, what=f"a session of {worker_id}")


def _notices_received(replica: RunningJobService) -> int:
    return replica.app.database.notifier.received


# -- A. PostgreSQL: two replicas ------------------------------------------------


async def test_a_job_submitted_on_one_replica_wakes_a_worker_on_the_other(replicas, sample_mp4):
    a = await replicas.start("a")
    b = await replicas.start("b")
    assert a.app.database.notifier.listening and b.app.database.notifier.listening
    async with ScriptedWorker(b.address, store=b.storage, worker_id="on-b") as worker:
        await _connected(b, "on-b")
        received_before = _notices_received(b)
        job = await submit(a.stub, sample_mp4)
        submitted_at = time.monotonic()
        assignment = await worker.next("assignment", timeout=PROMPT_SECONDS)
        latency = time.monotonic() - submitted_at
        print(f"\ncross-replica wake-up: submit on A -> assignment on B in {latency * 1000:.1f} ms")
        assert assignment.job_id == job.job_id
        assert assignment.attempt == 1
        assert latency < PROMPT_SECONDS
        # B heard of it through a notice from A (not its 60 s re-read).
        assert _notices_received(b) > received_before
        worker.complete(assignment)
        await _wait_state(a, job.job_id, job_pb2.JOB_STATE_SUCCEEDED, "success")


async def test_cancel_on_one_replica_stops_the_worker_on_the_other(replicas, sample_mp4):
    a = await replicas.start("a")
    b = await replicas.start("b")
    async with ScriptedWorker(b.address, store=b.storage, worker_id="on-b") as worker:
        job = await submit(a.stub, sample_mp4)
        assignment = await worker.next("assignment", timeout=PROMPT_SECONDS)
        assert assignment.job_id == job.job_id
        cancel_called_at = time.monotonic()
        cancelled = await a.stub.CancelJob(
            js.CancelJobRequest(job_id=job.job_id, reason="changed my mind")
        )
        assert cancelled.job.state == job_pb2.JOB_STATE_CANCELLED
        stop = await worker.next("stop_job", timeout=PROMPT_SECONDS)
        latency = time.monotonic() - cancel_called_at
        print(f"\ncancel routing: CancelJob call on A -> stop_job on B in {latency * 1000:.1f} ms")
        assert stop.job_id == job.job_id
        assert stop.lease_token == assignment.lease_token
        assert stop.reason == dpb.STOP_REASON_CANCELLED
    final = await _job(b, job.job_id)
    assert final.state == job_pb2.JOB_STATE_CANCELLED


async def test_a_follower_on_one_replica_sees_events_made_on_the_other(replicas, sample_mp4):
    a = await replicas.start("a")
    b = await replicas.start("b")
    job = await submit(a.stub, sample_mp4)
    async with ScriptedWorker(a.address, store=a.storage, worker_id="on-a") as worker:
        assignment = await worker.next("assignment", timeout=PROMPT_SECONDS)
        assert assignment.job_id == job.job_id

        received: list[job_pb2.JobEvent] = []
        arrived: list[float] = []
        got_partial = asyncio.Event()
        call = b.stub.StreamResults(js.StreamResultsRequest(job_id=job.job_id))

        async def follow():
            async for response in call:
                received.append(response.event)
                arrived.append(time.monotonic())
                if response.event.WhichOneof("payload") == "partial_result":
                    got_partial.set()

        follower = asyncio.create_task(follow())
        try:
            # The follower has replayed what is stored (queued, running) and waits.
            async def replayed():
                return len(received) >= 2

            await eventually(replayed, timeout=PROMPT_SECONDS, what="the replay")
            worker.progress(assignment, 0.25, "decoding")
            worker.partial(assignment, {"frame": 1, "text": "HELLO"})
            partial_sent = time.monotonic()
            # A live event made on A reaches B's follower while the job runs.
            await asyncio.wait_for(got_partial.wait(), PROMPT_SECONDS)
            partial_latency = arrived[-1] - partial_sent
            assert (await _job(b, job.job_id)).state == RUNNING
            worker.progress(assignment, 1.0, "done")
            worker.complete(assignment, summary={"frames": 50})
            completed_sent = time.monotonic()
            await asyncio.wait_for(follower, PROMPT_SECONDS)
        finally:
            call.cancel()
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await follower
    completion_latency = arrived[-1] - completed_sent
    print(
        f"\nfollower on B: partial result in {partial_latency * 1000:.1f} ms, "
        f"completion in {completion_latency * 1000:.1f} ms after A's worker sent them"
    )
    assert [e.WhichOneof("payload") for e in received] == [
        "state_changed",
        "state_changed",
        "progress",
        "partial_result",
        "progress",
        "completed",
    ]
    assert [e.sequence for e in received] == list(range(1, len(received) + 1))
    assert [e.job_id for e in received] == [job.job_id] * len(received)
    assert received[0].state_changed.to_state == QUEUED
    assert received[1].state_changed.to_state == RUNNING
    assert received[2].progress.fraction == pytest.approx(0.25)
    assert received[3].partial_result.data["text"] == "HELLO"
    assert received[4].progress.fraction == pytest.approx(1.0)
    assert received[-1].job_state == job_pb2.JOB_STATE_SUCCEEDED
    assert received[-1].completed.summary["frames"] == 50
    # What B streamed live is exactly what is stored.
    assert await _collect(b.stub, job.job_id) == received


async def test_a_worker_reconnecting_to_another_replica_keeps_its_announced_lease(
    replicas, sample_mp4
):
    a = await replicas.start("a")
    b = await replicas.start("b")
    job = await submit(a.stub, sample_mp4)
    async with contextlib.AsyncExitStack() as stack:
        old = await stack.enter_async_context(
            ScriptedWorker(a.address, store=a.storage, worker_id="w-1")
        )
        assignment = await old.next("assignment", timeout=PROMPT_SECONDS)
        assert assignment.job_id == job.job_id
        held = [dpb.HeldLease(job_id=job.job_id, lease_token=assignment.lease_token)]
        new = await stack.enter_async_context(
            ScriptedWorker(b.address, store=b.storage, worker_id="w-1", held=held)
        )
        # The older stream, on the other replica, ends: replaced.
        error = await old.ended(timeout=PROMPT_SECONDS)
        assert error is not None, "the replaced session's stream ended with OK"
        details = rich_error(error)
        assert details.code == grpc.StatusCode.ABORTED, details
        assert details.reason == "SESSION_REPLACED", details
        # The lease moved with the worker: nothing was requeued.
        running = await _job(a, job.job_id)
        assert running.state == RUNNING
        assert running.attempt == 1
        # The new session completes the job with the same lease token.
        new.heartbeat(assignment)
        new.complete(assignment)
        final = await _wait_state(b, job.job_id, job_pb2.JOB_STATE_SUCCEEDED, "success")
        # No stop order for the lease it kept.
        assert new.responses.empty(), new.responses
    assert final.attempt == 1
    assert [(t.number, t.outcome) for t in final.attempts] == [
        (1, job_pb2.ATTEMPT_OUTCOME_SUCCEEDED)
    ]
    assert final.output_key == f"jobs/{job.job_id}/attempts/1/results.json"
    changes = _state_changes(await _collect(a.stub, job.job_id))
    assert [(f, t) for f, t, _ in changes] == [
        (job_pb2.JOB_STATE_UNSPECIFIED, QUEUED),
        (QUEUED, RUNNING),
    ]


async def test_a_worker_reconnecting_elsewhere_without_its_lease_gets_the_job_requeued(
    replicas, sample_mp4
):
    a = await replicas.start("a")
    b = await replicas.start("b")
    job = await submit(a.stub, sample_mp4)
    async with contextlib.AsyncExitStack() as stack:
        old = await stack.enter_async_context(
            ScriptedWorker(a.address, store=a.storage, worker_id="w-1")
        )
        first = await old.next("assignment", timeout=PROMPT_SECONDS)
        assert (first.job_id, first.attempt) == (job.job_id, 1)
        # The worker restarted and lost track of the job: its hello holds no lease.
        new = await stack.enter_async_context(
            ScriptedWorker(b.address, store=b.storage, worker_id="w-1")
        )
        reconnected_at = time.monotonic()
        # The job went back to the queue with its next attempt at once...
        stored = await _collect_until(b, job.job_id, 3)
        assert _state_changes(stored)[2] == (RUNNING, QUEUED, 2)
        assert "reconnected without it" in stored[2].state_changed.reason
        # ...and is assigned again (to the worker's new session, the only one free).
        second = await new.next("assignment", timeout=PROMPT_SECONDS)
        latency = time.monotonic() - reconnected_at
        print(f"\nreconnect without lease: reassigned on B in {latency * 1000:.1f} ms")
        assert (second.job_id, second.attempt) == (job.job_id, 2)
        assert second.lease_token != first.lease_token
        error = await old.ended(timeout=PROMPT_SECONDS)
        assert error is not None and rich_error(error).reason == "SESSION_REPLACED"
        new.complete(second)
        final = await _wait_state(b, job.job_id, job_pb2.JOB_STATE_SUCCEEDED, "success")
    assert final.attempt == 2
    assert [(t.number, t.outcome) for t in final.attempts] == [
        (1, job_pb2.ATTEMPT_OUTCOME_LEASE_LOST),
        (2, job_pb2.ATTEMPT_OUTCOME_SUCCEEDED),
    ]
    changes = _state_changes(await _collect(a.stub, job.job_id))
    assert [(f, t) for f, t, _ in changes].count((RUNNING, QUEUED)) == 1


async def _collect_until(
    service: RunningJobService, job_id: str, count: int
) -> list[job_pb2.JobEvent]:
    """The first `count` events of a job (waiting for them, at most PROMPT_SECONDS)."""
    events: list[job_pb2.JobEvent] = []
    call = service.stub.StreamResults(js.StreamResultsRequest(job_id=job_id))

    async def read():
        async for response in call:
            events.append(response.event)
            if len(events) >= count:
                return

    try:
        await asyncio.wait_for(read(), PROMPT_SECONDS)
    finally:
        call.cancel()
    return events


async def test_an_expired_lease_is_requeued_exactly_once(replicas, sample_mp4):
    timings = dict(heartbeat_interval=0.2, lease_duration=1.0)
    a = await replicas.start("a", **timings)
    b = await replicas.start("b", **timings)
    job = await submit(a.stub, sample_mp4)
    async with ScriptedWorker(a.address, store=a.storage, worker_id="silent") as silent:
        assignment = await silent.next("assignment", timeout=PROMPT_SECONDS)
        assert (assignment.job_id, assignment.attempt) == (job.job_id, 1)
        assigned_at = time.monotonic()
        # A job nobody runs, queued on B: both replicas' reapers wake up (a
        # JobsQueued notice), read the lease's expiry as their next deadline,
        # and so both reach for the expired lease at the same moment.
        bystander = await submit(b.stub, sample_mp4, pipeline="ocr")
        # No heartbeats: the lease runs out; the worker is told, once.
        stop = await silent.next("stop_job", timeout=PROMPT_SECONDS + 1.0)
        print(f"\nlease expiry: stop_job {time.monotonic() - assigned_at:.2f} s after assignment")
        assert stop.job_id == job.job_id
        assert stop.lease_token == assignment.lease_token
        assert stop.reason == dpb.STOP_REASON_LEASE_LOST
        requeued = await _wait_state(b, job.job_id, QUEUED, "requeue", timeout=PROMPT_SECONDS)
        # Nothing is due any more, on either replica.
        assert await a.app.coordinator.reaper.process_due() == 0
        assert await b.app.coordinator.reaper.process_due() == 0
        assert requeued.attempt == 2
        assert [(t.number, t.outcome) for t in requeued.attempts] == [
            (1, job_pb2.ATTEMPT_OUTCOME_LEASE_LOST)
        ]
        # End the job so its event stream ends, then read every event.
        await b.stub.CancelJob(js.CancelJobRequest(job_id=job.job_id))
        events = await asyncio.wait_for(_collect(b.stub, job.job_id), PROMPT_SECONDS)
        # The silent worker got exactly one stop order (the cancel of a queued
        # job stops nobody).
        assert silent.responses.empty(), silent.responses
    changes = _state_changes(events)
    requeues = [c for c in changes if c[:2] == (RUNNING, QUEUED)]
    # One RUNNING -> QUEUED change, ending attempt 1 (the event carries the
    # attempt the job moved on to).
    assert len(requeues) == 1, changes
    assert requeues[0][2] == 2
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    final = await _job(a, job.job_id)
    assert final.state == job_pb2.JOB_STATE_CANCELLED
    assert final.attempt == 2
    assert (await _job(a, bystander.job_id)).state == QUEUED


async def test_a_lease_left_by_a_stopped_replica_expires_on_the_other_in_time(replicas, sample_mp4):
    timings = dict(heartbeat_interval=0.2, lease_duration=1.0)
    a = await replicas.start("a", **timings)
    b = await replicas.start("b", **timings)
    job = await submit(a.stub, sample_mp4)
    async with ScriptedWorker(a.address, store=a.storage, worker_id="gone") as worker:
        assignment = await worker.next("assignment", timeout=PROMPT_SECONDS)
        assert assignment.job_id == job.job_id
        # A goes away while the job runs (a rolling restart): its leases stay
        # in the database for the worker to take to another replica...
        await replicas.stop(a)
    # ...but this worker never comes back: B must expire the lease when it runs
    # out (1 s), not at its 60 s safety-net re-read.
    await _wait_state(
        b, job.job_id, QUEUED, "B to expire the orphaned lease", timeout=PROMPT_SECONDS
    )


# -- B. Both backends -------------------------------------------------------------


async def test_list_filter_by_pipeline_matches_jobs_that_include_it(job_service, sample_mp4):
    probe = await submit(job_service.stub, sample_mp4)
    several = await _submit_several(job_service.stub, sample_mp4, ["probe", "scenes"])
    assert list(several.pipelines) == ["probe", "scenes"]

    async def listed(pipeline: str) -> list[str]:
        response = await job_service.stub.ListJobs(js.ListJobsRequest(pipeline=pipeline))
        return [j.job_id for j in response.jobs]

    assert await listed("scenes") == [several.job_id]
    assert await listed("probe") == [several.job_id, probe.job_id]  # newest first
    assert await listed("probe+scenes") == [several.job_id]
    assert await listed("ocr") == []
    assert await listed("") == [several.job_id, probe.job_id]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await listed("nope")
    details = rich_error(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "pipeline" in details.violations, details.violations


async def test_a_worker_announcing_many_pipelines_gets_multi_pipeline_jobs(job_service, sample_mp4):
    job = await _submit_several(job_service.stub, sample_mp4, ["scenes", "ocr"])
    real = sorted(builtin_catalogue().names)
    made_up = [f"made-up-{i:02d}" for i in range(12)]
    pipelines = (*real, *made_up)
    assert len(pipelines) > 10
    async with ScriptedWorker(
        job_service.address, store=job_service.storage, worker_id="wide", pipelines=pipelines
    ) as worker:
        assignment = await worker.next("assignment", timeout=PROMPT_SECONDS * 2)
        assert assignment.job_id == job.job_id
        assert assignment.pipeline == "ocr+scenes"
        worker.complete(assignment)
        await _wait_state(job_service, job.job_id, job_pb2.JOB_STATE_SUCCEEDED, "success")


# -- C. SQLite is single-replica ----------------------------------------------------


async def test_a_second_job_service_on_one_sqlite_database_is_refused(tmp_path: Path):
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'videojobs.db'}"

    def settings(name: str):
        directory = tmp_path / name
        directory.mkdir()
        return make_settings(directory, database_url=database_url)

    first = build_job_service(settings("first"))
    await first.start()
    first_running = True
    try:
        second = build_job_service(settings("second"))
        try:
            with pytest.raises(SingleReplicaError, match="PostgreSQL"):
                await second.start()
        finally:
            await second.stop()
        await first.stop()
        first_running = False

        third = build_job_service(settings("third"))
        address = await third.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = job_service_pb2_grpc.JobServiceStub(channel)
                listed = await stub.ListJobs(js.ListJobsRequest())
                assert list(listed.jobs) == []
        finally:
            await third.stop()
    finally:
        if first_running:
            await first.stop()


async def test_followers_of_one_job_on_another_replica_share_each_read(replicas, sample_mp4):
    """Five followers on B of a job whose events A writes: each notice wakes
    all five, but one of them reads the database and the others take what it
    read; every follower still gets every event, in order, without gaps."""
    a = await replicas.start("a")
    b = await replicas.start("b")
    job = await submit(a.stub, sample_mp4)
    followers = 5
    live_events = 20
    async with ScriptedWorker(a.address, store=a.storage) as worker:
        assignment = await worker.next("assignment", timeout=PROMPT_SECONDS)
        streams = [
            b.stub.StreamResults(js.StreamResultsRequest(job_id=job.job_id))
            for _ in range(followers)
        ]
        received: list[list] = [[] for _ in streams]

        async def follow(call, into: list) -> None:
            async for response in call:
                into.append(response.event)

        tasks = [asyncio.create_task(follow(c, r)) for c, r in zip(streams, received, strict=True)]

        async def all_have(count: int) -> bool:
            return all(len(r) >= count for r in received)

        await eventually(lambda: all_have(2), what="the replay on B")
        database = b.app.database
        reads = 0
        real_reading = database.reading

        def counting_reading():
            nonlocal reads
            reads += 1
            return real_reading()

        database.reading = counting_reading
        try:
            for index in range(live_events):
                worker.partial(assignment, {"index": index})
                await eventually(
                    lambda count=index + 3: all_have(count), what="every follower on B"
                )
        finally:
            database.reading = real_reading
        worker.complete(assignment, summary={"frames": 50})
        await asyncio.wait_for(asyncio.gather(*tasks), PROMPT_SECONDS)

    # One read per event (with a little slack for a safety-net wake), not five.
    assert reads <= live_events + 3, f"{reads} reads for {live_events} events x {followers}"
    stored = await _collect(b.stub, job.job_id)
    for events in received:
        assert events == stored
        assert [e.sequence for e in events] == list(range(1, len(stored) + 1))
