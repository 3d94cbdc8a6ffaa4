"""Chaos: 200 jobs, 3 workers; a worker is kill -9'd every few seconds (always
one that holds jobs) and replaced; job-service is kill -9'd and restarted
twice. Every job must end SUCCEEDED with exactly one recorded result and one
output, none lost, none recorded twice, and jobs hit by kills show attempt > 1.

Kills are paced by progress (every N completed jobs), not by the clock, so the
test stresses the same way on a fast or a slow machine."""

from __future__ import annotations

import itertools
import time
from collections import Counter

import grpc
import pytest

from videojobs.storage import StorageKey, open_blob_store
from videojobs.v1 import job_pb2, worker_service_pb2, worker_service_pb2_grpc
from videojobs.v1 import job_service_pb2 as js

from support.processes import ServiceProcess, wait_connected
from support.sync_api import TERMINAL, Api
from support.videos import write_sample_video
from support.waiting import eventually_sync

pytestmark = pytest.mark.e2e

JOBS = 200
WORKERS = 3
KILL_EVERY_COMPLETED = 10
SERVER_KILLS_AT = (0.3, 0.65)  # fractions of jobs completed
SERVER_ENV = {
    "VIDEOJOBS_LEASE_DURATION": "6",
    "VIDEOJOBS_HEARTBEAT_INTERVAL": "0.5",
    "VIDEOJOBS_RETRY_BACKOFF_BASE": "0.2",
}
WORKER_ENV = {"VIDEOJOBS_WORKER_CONCURRENCY": "2"}
# Scene detection over 20 s of video decodes 500 frames: long enough per
# job (warm workers run a probe in milliseconds, 200 frames in about 0.1 s)
# that the kills, paced by completed jobs, land while jobs run.
PIPELINE = "scenes"


@pytest.fixture(scope="module")
def chaos_mp4(tmp_path_factory) -> bytes:
    """A 20 s, 320x240, 25 fps H.264 MP4 (500 frames, about 70 KB)."""
    path = tmp_path_factory.mktemp("videos") / "chaos.mp4"
    write_sample_video(path, width=320, height=240, fps=25, frames=500)
    return path.read_bytes()


def _jobs_in_hand(worker: ServiceProcess) -> list[str]:
    try:
        with grpc.insecure_channel(worker.address) as channel:
            status = worker_service_pb2_grpc.WorkerServiceStub(channel).GetWorkerStatus(
                worker_service_pb2.GetWorkerStatusRequest(), timeout=5
            )
    except grpc.RpcError:
        return []
    return [job.job_id for job in status.jobs]


def _all_jobs(api: Api) -> list[job_pb2.Job]:
    jobs, token = [], ""
    while True:
        page = api.stub.ListJobs(
            js.ListJobsRequest(page_size=1000, page_token=token), timeout=30, wait_for_ready=True
        )
        jobs += page.jobs
        token = page.next_page_token
        if not token:
            return jobs


def _count_finished(api: Api) -> int:
    try:
        return sum(job.state in TERMINAL for job in _all_jobs(api))
    except grpc.RpcError:
        return -1  # job-service is restarting


def test_chaos_every_job_succeeds_exactly_once(stack, chaos_mp4):
    stack.start_server(**SERVER_ENV)
    api = Api(stack.address)
    names = (f"w{n}" for n in itertools.count())
    workers = [stack.start_worker(next(names), **WORKER_ENV) for _ in range(WORKERS)]
    submitted = [
        api.submit_with(chaos_mp4, request_id=f"chaos-{i}", pipeline=PIPELINE).job_id
        for i in range(JOBS)
    ]
    assert len(set(submitted)) == JOBS

    worker_kills: dict[str, float] = {}  # worker id -> monotonic time of its kill
    kill_wall_times: dict[str, float] = {}
    server_kills = 0
    next_kill_at = KILL_EVERY_COMPLETED
    started = time.monotonic()
    deadline = started + 600
    while True:
        finished = eventually_sync(
            lambda: (n := _count_finished(api)) >= 0 and (n,),
            timeout=60,
            interval=0.25,
            what="job counts",
        )[0]
        if finished >= JOBS:
            break
        assert time.monotonic() < deadline, f"only {finished}/{JOBS} jobs ended in time"
        if server_kills < len(SERVER_KILLS_AT) and finished >= SERVER_KILLS_AT[server_kills] * JOBS:
            stack.server.kill()
            server_kills += 1
            stack.start_server(**SERVER_ENV)
            # Workers reconnect by themselves; the next worker kill must hit a
            # connected worker, so that it tests the stream-break path.
            for worker in workers:
                wait_connected(worker)
            continue
        if finished >= next_kill_at:
            busy = [w for w in workers if w.running() and _jobs_in_hand(w)]
            if busy:
                victim = busy[0]
                victim_id = victim.name.removeprefix("worker ")
                victim.kill()
                worker_kills[victim_id] = time.monotonic()
                kill_wall_times[victim_id] = time.time()
                workers.remove(victim)
                workers.append(stack.start_worker(next(names), **WORKER_ENV))
                next_kill_at = finished + KILL_EVERY_COMPLETED
                continue
        # Wait for progress before deciding again (a condition, not a nap).
        eventually_sync(
            lambda f=finished: _count_finished(api) != f,
            timeout=120,
            # Listing every job is not free: poll gently so the test does not
            # load job-service more than the workers do.
            interval=0.25,
            what="more jobs to end",
        )

    elapsed = time.monotonic() - started
    jobs = {job.job_id: job for job in _all_jobs(api)}
    assert set(jobs) == set(submitted), "jobs lost or invented"
    states = Counter(job_pb2.JobState.Name(job.state) for job in jobs.values())
    assert states == Counter({"JOB_STATE_SUCCEEDED": JOBS}), states

    store = open_blob_store(str(stack.data_dir / "storage"))
    duplicated, requeue_delays, reassign_delays, hit = 0, [], [], 0
    for job_id, job in jobs.items():
        events = api.events(job_id)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1)), job_id
        completed = [e for e in events if e.WhichOneof("payload") == "completed"]
        duplicated += len(completed) - 1
        assert len(completed) == 1, f"{job_id} recorded {len(completed)} results"
        outputs = [i.key.value for i in store.list(StorageKey.join("jobs", job_id, "attempts"))]
        assert outputs == [job.output_key], f"{job_id} has outputs {outputs}"
        assert job.output_key == f"jobs/{job_id}/attempts/{job.attempt}/results.json"
        outcomes = [a.outcome for a in job.attempts]
        assert outcomes[-1] == job_pb2.ATTEMPT_OUTCOME_SUCCEEDED
        assert outcomes.count(job_pb2.ATTEMPT_OUTCOME_SUCCEEDED) == 1
        for lost, following in zip(job.attempts, job.attempts[1:], strict=False):
            if lost.outcome != job_pb2.ATTEMPT_OUTCOME_LEASE_LOST:
                continue
            hit += 1
            assert job.attempt > lost.number
            killed_at = kill_wall_times.get(lost.worker_id)
            if killed_at is not None:
                requeue_delays.append(lost.end_time.ToDatetime().timestamp() - killed_at)
                reassign_delays.append(following.start_time.ToDatetime().timestamp() - killed_at)

    print(
        f"\nchaos: {JOBS} jobs in {elapsed:.1f}s; worker kills {len(worker_kills)}, "
        f"job-service kills {server_kills}; lost 0, duplicated {duplicated}; "
        f"attempts lost to kills {hit}; worst worker death -> requeue "
        f"{max(requeue_delays, default=0):.3f}s, worst death -> reassignment "
        f"{max(reassign_delays, default=0):.3f}s (includes waiting for a free slot)"
    )
    assert server_kills == len(SERVER_KILLS_AT)
    assert len(worker_kills) >= 5
    assert hit >= len(worker_kills) // 2
    assert max(requeue_delays) < 5.0
    api.close()
