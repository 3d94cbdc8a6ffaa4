"""Chaos across replicas: two job-service processes (A and B) on one fresh
PostgreSQL database and one shared storage directory, three workers (two on
A, one on B, concurrency 2 each), 200 `probe` jobs submitted alternately to A
and B, followers of 20 jobs on the replica that did not take the submit.
About a third into the run (while the followed jobs are submitted and at
least three followers are live on B) B is kill -9'd and restarted on the
same port; its worker and its followers reconnect by themselves.

Every job must end SUCCEEDED with exactly one `completed` event, gapless
event sequences, one result document and one attempts/<n>/ directory of
outputs; every follower must end with the job's full, gapless event stream.

The safety-net resync is pushed out of reach (VIDEOJOBS_RESYNC_INTERVAL=60)
so that dispatch, stop orders and followers on the other replica can only be
woken by LISTEN/NOTIFY notices. The time from "submit returned on A" to "job
assigned to B's worker" is measured and printed.

Submits are paced (at most as many jobs in flight as there are worker
slots) so that most jobs find a free slot and the A -> B figure measures
notice latency, not queueing; the 20 followed jobs are submitted as one
burst, and B is killed during it, so that followers are live when B dies.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest

from videojobs.storage import StorageKey, open_blob_store
from videojobs.v1 import job_pb2, job_service_pb2_grpc
from videojobs.v1 import job_service_pb2 as js

from support.postgres import fresh_database
from support.processes import ServiceProcess, Stack, wait_connected
from support.waiting import eventually_sync

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(420)]

JOBS = 200
WORKER_CONCURRENCY = 2
WORKERS = {"A": ("a1", "a2"), "B": ("b1",)}
SLOTS = WORKER_CONCURRENCY * sum(len(ids) for ids in WORKERS.values())
# Job indices submitted as one burst a third into the run, each followed on
# the other replica; B is killed during the burst, while followers are on it.
FOLLOWED = range(JOBS // 3, JOBS // 3 + 20)
RUN_DEADLINE = 240.0  # seconds for all jobs to end (a loaded 2-core machine needs ~150)
SERVER_ENV = {
    "VIDEOJOBS_LEASE_DURATION": "6",
    "VIDEOJOBS_HEARTBEAT_INTERVAL": "0.5",
    "VIDEOJOBS_RETRY_BACKOFF_BASE": "0.2",
    # Out of reach during the run: only notices may wake the other replica.
    "VIDEOJOBS_RESYNC_INTERVAL": "60",
    "VIDEOJOBS_LOG_LEVEL": "INFO",
}
WORKER_ENV = {"VIDEOJOBS_WORKER_CONCURRENCY": str(WORKER_CONCURRENCY)}
# Clients find a restarted replica quickly (gRPC's default reconnect backoff
# grows to minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]
# A notice wakes B's dispatcher in milliseconds; with a free slot on B and an
# empty queue, a job submitted on A and run on B must be assigned well
# before the (disabled) safety net could have found it.
IDLE_ASSIGN_BOUND_SECONDS = 5.0


# fixtures ----------------------------------------------------------------------


@pytest.fixture
def database_url():
    """A fresh PostgreSQL database (skips, or fails under
    VIDEOJOBS_REQUIRE_SERVICES=1, when no server is reachable)."""
    loop = asyncio.new_event_loop()
    database = fresh_database()
    try:
        url = loop.run_until_complete(database.__aenter__())
    except BaseException:
        loop.close()
        raise
    try:
        yield url
    finally:
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()


@pytest.fixture
def replicas(tmp_path, database_url):
    """Two stacks (own data dir and port each) whose servers share the
    database and the storage directory; all their processes are stopped at
    teardown (before the database is dropped)."""
    storage = tmp_path / "shared-storage"
    storage.mkdir()
    stacks = {"A": Stack(tmp_path / "a"), "B": Stack(tmp_path / "b")}
    env = dict(SERVER_ENV, VIDEOJOBS_DATABASE_URL=database_url, VIDEOJOBS_STORAGE_URL=str(storage))
    try:
        yield stacks, env, storage
    finally:
        for stack in stacks.values():
            stack.stop_all()


# clients -----------------------------------------------------------------------


class Client:
    """A JobService stub on its own channel to one replica."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = job_service_pb2_grpc.JobServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def submit(self, data: bytes, request_id: str, deadline: float) -> job_pb2.Job:
        """SubmitVideo, retried with the same request_id while the replica is
        away (a retried submit never makes a second job)."""
        header = js.UploadHeader(
            file_name="clip.mp4",
            pipeline="probe",
            request_id=request_id,
            expected_size_bytes=len(data),
            expected_sha256=hashlib.sha256(data).hexdigest(),
        )

        def messages():
            yield js.SubmitVideoRequest(header=header)
            for offset in range(0, len(data), 65536):
                yield js.SubmitVideoRequest(chunk=data[offset : offset + 65536])

        while True:
            try:
                return self.stub.SubmitVideo(messages(), timeout=20, wait_for_ready=True).job
            except grpc.RpcError as exc:
                retryable = exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                if not retryable or time.monotonic() > deadline:
                    raise

    def jobs(self, *states: int) -> list[job_pb2.Job]:
        """Every job (of `states`), all pages."""
        jobs, token = [], ""
        while True:
            page = self.stub.ListJobs(
                js.ListJobsRequest(page_size=1000, page_token=token, states=states),
                timeout=30,
                wait_for_ready=True,
            )
            jobs += page.jobs
            token = page.next_page_token
            if not token:
                return jobs

    def events(self, job_id: str) -> list[job_pb2.JobEvent]:
        """Every event of an ended job, from sequence 0."""
        return [
            r.event
            for r in self.stub.StreamResults(
                js.StreamResultsRequest(job_id=job_id), timeout=60, wait_for_ready=True
            )
        ]


def _terminal(event: job_pb2.JobEvent) -> bool:
    return event.WhichOneof("payload") in ("completed", "failed", "cancelled")


def _ended(follower: Follower) -> bool:
    return bool(follower.events) and _terminal(follower.events[-1])


@dataclass
class Follower:
    """Follows one job's StreamResults on one replica, resuming after the last
    sequence it saw whenever the stream breaks, until the terminal event."""

    replica: str
    address: str
    job_id: str
    deadline: float
    events: list[job_pb2.JobEvent] = field(default_factory=list)
    breaks: list[str] = field(default_factory=list)  # status codes of broken streams
    error: str | None = None
    thread: threading.Thread | None = None

    def start(self) -> Follower:
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"follow-{self.job_id}")
        self.thread.start()
        return self

    def _run(self) -> None:
        with grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS) as channel:
            stub = job_service_pb2_grpc.JobServiceStub(channel)
            while (left := self.deadline - time.monotonic()) > 0:
                after = self.events[-1].sequence if self.events else 0
                try:
                    for response in stub.StreamResults(
                        js.StreamResultsRequest(job_id=self.job_id, after_sequence=after),
                        timeout=left,
                        wait_for_ready=True,
                    ):
                        self.events.append(response.event)
                        if _terminal(response.event):
                            return
                    self.breaks.append("ended without a terminal event")
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        self.error = f"{exc.code().name}: {exc.details()}"
                        return
                    self.breaks.append(exc.code().name)
            self.error = "deadline passed before the terminal event"


# the run ---------------------------------------------------------------------


@dataclass
class Progress:
    """What the monitor saw and the submitter needs (guarded by `changed`)."""

    changed: threading.Condition = field(default_factory=threading.Condition)
    submitted: int = 0
    active: int = 0  # jobs not ended (QUEUED or RUNNING), by the last look plus submits since
    ended: int = 0  # jobs submitted and ended, by the last look
    b_killed: bool = False
    submitter_error: BaseException | None = None
    submitter_done: bool = False

    def look(self, client: Client) -> None:
        """Counts the jobs not ended yet (a short list, cheap to poll)."""
        with self.changed:
            before = self.submitted
        active = len(client.jobs(job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING))
        with self.changed:
            # Jobs submitted during the call may be counted twice: pacing errs
            # on the slow side.
            self.active = active + self.submitted - before
            self.ended = before - active
            self.changed.notify_all()


def _submit_all(
    clients: dict[str, Client],
    addresses: dict[str, str],
    data: bytes,
    progress: Progress,
    records: list[dict],
    followers: list[Follower],
    deadline: float,
    kill_b,
) -> None:
    last_followed_on_b = max(i for i in FOLLOWED if i % 2 == 0)
    try:
        for index in range(JOBS):
            if index not in FOLLOWED:
                # Paced: at most one job in flight per worker slot.
                with progress.changed:
                    if not progress.changed.wait_for(
                        lambda: progress.active < SLOTS,
                        timeout=max(0.0, deadline - time.monotonic()),
                    ):
                        raise AssertionError(f"jobs stopped ending ({progress})")
            replica = "A" if index % 2 == 0 else "B"
            job = clients[replica].submit(data, f"replicas-{index}", deadline)
            records.append(
                {"index": index, "job_id": job.job_id, "replica": replica, "returned": time.time()}
            )
            if index in FOLLOWED:
                other = "B" if replica == "A" else "A"
                follower = Follower(other, addresses[other], job.job_id, deadline).start()
                followers.append(follower)
            with progress.changed:
                progress.submitted += 1
                progress.active += 1
            if index in FOLLOWED and other == "B" and not progress.b_killed:
                # Kill B while followers are on it: once its newest follower
                # has the stream open (it replayed the first event) and at
                # least 3 (or, at the end of the burst, 1) are still live.
                eventually_sync(
                    lambda f=follower: f.events or f.error,
                    timeout=20,
                    what="the follower to open its stream",
                )
                live = [f for f in followers if f.replica == "B" and not _ended(f)]
                if len(live) >= 3 or index == last_followed_on_b:
                    kill_b(len(live))
    except BaseException as exc:  # noqa: BLE001 - handed to the test thread
        progress.submitter_error = exc
    finally:
        with progress.changed:
            progress.submitter_done = True
            progress.changed.notify_all()


def _percentiles(values: list[float]) -> str:
    if not values:
        return "n=0"
    ordered = sorted(values)
    return (
        f"n={len(ordered)} p50 {statistics.median(ordered) * 1000:.0f} ms, "
        f"max {ordered[-1] * 1000:.0f} ms"
    )


def _seconds(timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


def test_two_replicas_survive_kill_of_one(replicas, sample_mp4):
    stacks, server_env, storage = replicas
    servers = {name: stack.start_server(**server_env) for name, stack in stacks.items()}
    addresses = {name: stack.address for name, stack in stacks.items()}
    workers: dict[str, ServiceProcess] = {}
    worker_replica: dict[str, str] = {}
    for name, ids in WORKERS.items():
        for worker_id in ids:
            workers[worker_id] = stacks[name].start_worker(worker_id, **WORKER_ENV)
            worker_replica[worker_id] = name
    clients = {name: Client(address) for name, address in addresses.items()}
    monitor = Client(addresses["A"])  # A never dies

    started = time.monotonic()
    deadline = started + RUN_DEADLINE
    progress = Progress()
    records: list[dict] = []
    followers: list[Follower] = []
    chaos = {"killed_at": None, "restarted_at": None, "reconnected_at": None, "live_on_b": 0}

    def kill_b(live_followers: int) -> None:
        """kill -9 of B (from the submitter, the moment followers are on it)."""
        servers["B"].kill()
        chaos.update(killed_at=time.time(), ended_at_kill=progress.ended, live_on_b=live_followers)
        progress.b_killed = True

    def step() -> bool:
        """One look at the jobs; restarts B on its port once it was killed.
        True when every job was submitted and has ended."""
        progress.look(monitor)
        if progress.submitter_error is not None:
            raise progress.submitter_error
        if progress.b_killed and chaos["restarted_at"] is None:
            servers["B"] = stacks["B"].start_server(**server_env)
            assert stacks["B"].address == addresses["B"], "B must come back on its port"
            chaos["restarted_at"] = time.time()
            for worker_id in WORKERS["B"]:
                wait_connected(workers[worker_id], timeout=30)
            chaos["reconnected_at"] = time.time()
        return progress.submitter_done and progress.active == 0

    submitter = threading.Thread(
        target=_submit_all,
        args=(clients, addresses, sample_mp4, progress, records, followers, deadline, kill_b),
        daemon=True,
    )
    submitter.start()
    try:
        eventually_sync(step, timeout=RUN_DEADLINE, interval=0.05, what=f"{JOBS} jobs to end")
        submitter.join(timeout=30)
        for follower in followers:
            follower.thread.join(timeout=max(1.0, deadline - time.monotonic()))
        elapsed = time.monotonic() - started

        # Every job SUCCEEDED once, with one output and gapless events ----------
        killed_at, restarted_at = chaos["killed_at"], chaos["restarted_at"]
        reconnected_at, live_followers_on_b_at_kill = chaos["reconnected_at"], chaos["live_on_b"]
        assert killed_at is not None, "B was never killed"
        assert len(records) == JOBS
        submitted = {r["job_id"]: r for r in records}
        assert len(submitted) == JOBS, "two submits made one job"
        jobs = {job.job_id: job for job in monitor.jobs()}
        assert set(jobs) == set(submitted), "jobs lost or invented"
        states = Counter(job_pb2.JobState.Name(job.state) for job in jobs.values())
        assert states == Counter({"JOB_STATE_SUCCEEDED": JOBS}), states

        store = open_blob_store(str(storage))
        events_of: dict[str, list[job_pb2.JobEvent]] = {}
        for n, (job_id, job) in enumerate(sorted(jobs.items())):
            # Read the history from both replicas, alternately.
            events = clients["AB"[n % 2]].events(job_id)
            events_of[job_id] = events
            assert [e.sequence for e in events] == list(range(1, len(events) + 1)), job_id
            completed = [e for e in events if e.WhichOneof("payload") == "completed"]
            assert len(completed) == 1, f"{job_id} recorded {len(completed)} results"
            assert events[-1] is completed[0], f"{job_id}: events after the result"
            assert completed[0].completed.output_key == job.output_key
            outcomes = [a.outcome for a in job.attempts]
            assert outcomes.count(job_pb2.ATTEMPT_OUTCOME_SUCCEEDED) == 1, (job_id, outcomes)
            assert outcomes[-1] == job_pb2.ATTEMPT_OUTCOME_SUCCEEDED, (job_id, outcomes)
            assert job.output_key == f"jobs/{job_id}/attempts/{job.attempt}/results.json"
            assert store.exists(StorageKey(job.output_key)), f"{job_id}: no result document"
            keys = [info.key.value for info in store.list(StorageKey.join("jobs", job_id))]
            attempt_dirs = {
                key.split("/")[3] for key in keys if key.startswith(f"jobs/{job_id}/attempts/")
            }
            assert attempt_dirs == {str(job.attempt)}, f"{job_id} has outputs {keys}"

        # Followers on the other replica saw everything -----------------------
        assert len(followers) == len(FOLLOWED)
        for follower in followers:
            assert follower.error is None, (follower.replica, follower.job_id, follower.error)
            assert [e.sequence for e in follower.events] == list(
                range(1, len(follower.events) + 1)
            ), (follower.replica, follower.job_id)
            assert follower.events == events_of[follower.job_id], (
                f"follower of {follower.job_id} on {follower.replica} saw another history"
            )
        broken_on_b = [f for f in followers if f.replica == "B" and f.breaks]
        assert live_followers_on_b_at_kill > 0, "no follower was live on B when it died"
        assert broken_on_b, "no follower on B saw its stream break"
        assert not [f for f in followers if f.replica == "A" and f.breaks], "A's streams broke"

        # B's worker came back and worked for the restarted B -----------------
        after_restart = [
            a
            for job in jobs.values()
            for a in job.attempts
            if worker_replica.get(a.worker_id) == "B" and _seconds(a.start_time) > restarted_at
        ]
        assert after_restart, "B's worker got no job after B restarted"

        # A -> B assignment latency -------------------------------------------
        queued: list[tuple[str, float, float]] = []  # (job, QUEUED at, next RUNNING at)
        for job_id, events in events_of.items():
            since = None
            for event in events:
                if event.WhichOneof("payload") != "state_changed":
                    continue
                if event.state_changed.to_state == job_pb2.JOB_STATE_QUEUED:
                    since = _seconds(event.create_time)
                elif event.state_changed.to_state == job_pb2.JOB_STATE_RUNNING and since:
                    queued.append((job_id, since, _seconds(event.create_time)))
                    since = None
        b_busy = [
            (_seconds(a.start_time), _seconds(a.end_time))
            for job in jobs.values()
            for a in job.attempts
            if worker_replica.get(a.worker_id) == "B"
        ]
        cross, idle, idle_from_commit = [], [], []
        for record in records:
            if record["replica"] != "A":
                continue
            job, events = jobs[record["job_id"]], events_of[record["job_id"]]
            running = next(
                e
                for e in events
                if e.WhichOneof("payload") == "state_changed"
                and e.state_changed.to_state == job_pb2.JOB_STATE_RUNNING
            )
            attempt = next(a for a in job.attempts if a.number == running.attempt)
            if worker_replica.get(attempt.worker_id) != "B":
                continue
            at = record["returned"]
            delay = _seconds(running.create_time) - at
            cross.append(delay)
            # A free slot on B, B's worker connected, nothing else waiting.
            others_waiting = sum(
                start < at < end for job_id, start, end in queued if job_id != job.job_id
            )
            b_running = sum(start <= at < end for start, end in b_busy)
            b_away = killed_at <= at <= reconnected_at
            if not others_waiting and b_running < WORKER_CONCURRENCY and not b_away:
                idle.append(delay)
                # The QUEUED event is written in the submit's own transaction.
                idle_from_commit.append(
                    _seconds(running.create_time) - _seconds(events[0].create_time)
                )

        print(
            f"\nreplicas chaos: {JOBS} jobs in {elapsed:.1f}s; B killed at "
            f"{chaos['ended_at_kill']} ended, back on its port in {restarted_at - killed_at:.2f}s, "
            f"its worker reconnected after {reconnected_at - killed_at:.2f}s; "
            f"followers on B live at the kill {live_followers_on_b_at_kill}, "
            f"resumed {len(broken_on_b)}; attempts per job "
            f"{dict(Counter(job.attempt for job in jobs.values()))}"
        )
        print(f"submit on A -> assigned on B, every such job: {_percentiles(cross)}")
        print(
            f"submit on A -> assigned on B, B slot free and queue empty at submit: "
            f"{_percentiles(idle)}; from the job's QUEUED event instead: "
            f"{_percentiles(idle_from_commit)}"
        )
        assert cross, "no job submitted on A ran on B"
        assert max(idle, default=0.0) < IDLE_ASSIGN_BOUND_SECONDS, _percentiles(idle)
    finally:
        for client in (*clients.values(), monitor):
            client.close()
