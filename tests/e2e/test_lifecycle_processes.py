"""Issue 3's faults on real processes: a hung worker (SIGSTOP), a crashing
pipeline process, a hanging one (execution timeout), cancel of a running job,
drain with hand-back, and SIGTERM of job-service while a job runs."""

from __future__ import annotations

import os
import signal
import time

import pytest

from videojobs.v1 import job_pb2

from support.processes import child_pids
from support.sync_api import Api
from support.waiting import eventually_sync

pytestmark = pytest.mark.e2e

OUTCOME = job_pb2.AttemptOutcome
FAST = {"VIDEOJOBS_LEASE_DURATION": "2", "VIDEOJOBS_RETRY_BACKOFF_BASE": "0.2"}


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _frozen_child(worker) -> int:
    """Freezes (SIGSTOP) the warm pipeline process of a worker of concurrency
    1 and returns its pid: the next job it is given hangs in it, mid-run and
    deaf to everything but SIGKILL."""
    pid = eventually_sync(
        lambda: (child_pids(worker.pid) or [None])[0], timeout=30, what="a pipeline child"
    )
    os.kill(pid, signal.SIGSTOP)
    return pid


def _running_on(api, worker, job_id: str) -> None:
    """Waits until the worker holds the job (its task is in the child's hands)."""
    api.wait_until(job_id, lambda j: j.state == job_pb2.JOB_STATE_RUNNING, what="assignment")
    eventually_sync(
        lambda: [j for j in worker_status(worker).jobs if j.job_id == job_id],
        timeout=10,
        what="the worker to run the job",
    )


def test_hung_worker_loses_its_lease_and_its_late_reports_are_refused(stack, sample_mp4):
    stack.start_server(**FAST)
    api = Api(stack.address)
    hung = stack.start_worker("hung")
    hung.signal(signal.SIGSTOP)  # stream open, nothing answering
    job = api.submit(sample_mp4)
    api.wait_until(job.job_id, lambda j: j.state == job_pb2.JOB_STATE_RUNNING, what="assignment")
    stopped_at = time.monotonic()
    requeued = api.wait_until(
        job.job_id, lambda j: j.state == job_pb2.JOB_STATE_QUEUED, what="lease expiry"
    )
    waited = time.monotonic() - stopped_at
    print(f"silent worker's job requeued {waited:.2f}s after assignment (lease 2 s)")
    assert requeued.attempts[0].outcome == OUTCOME.ATTEMPT_OUTCOME_LEASE_LOST
    stack.start_worker("healthy")
    done = api.wait_terminal(job.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert done.output_key == f"jobs/{job.job_id}/attempts/2/results.json"
    hung.signal(signal.SIGCONT)
    # The zombie wakes up, finishes attempt 1 and reports it: refused.
    eventually_sync(
        lambda: f"job {job.job_id}: told to stop" in hung.log_path.read_text(),
        timeout=30,
        what="the zombie to be told to stop",
    )
    eventually_sync(
        lambda: f"job {job.job_id} attempt 1: " in hung.log_path.read_text(),
        timeout=30,
        what="the zombie's attempt to end",
    )
    final = api.job(job.job_id)
    assert final.output_key == done.output_key
    assert [a.outcome for a in final.attempts] == [
        OUTCOME.ATTEMPT_OUTCOME_LEASE_LOST,
        OUTCOME.ATTEMPT_OUTCOME_SUCCEEDED,
    ]
    assert [a.worker_id for a in final.attempts] == ["hung", "healthy"]
    completed = [e for e in api.events(job.job_id) if e.WhichOneof("payload") == "completed"]
    assert len(completed) == 1
    api.close()


def test_crashed_pipeline_process_is_retried(stack, sample_mp4):
    stack.start_server(**FAST)
    api = Api(stack.address)
    worker = stack.start_worker("crashy")
    child = _frozen_child(worker)
    job = api.submit(sample_mp4)
    _running_on(api, worker, job.job_id)
    os.kill(child, signal.SIGKILL)
    done = api.wait_terminal(job.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [a.outcome for a in done.attempts] == [
        OUTCOME.ATTEMPT_OUTCOME_RETRIED,
        OUTCOME.ATTEMPT_OUTCOME_SUCCEEDED,
    ]
    assert "SIGKILL" in done.attempts[0].error.message
    gap = (
        done.attempts[1].start_time.ToDatetime() - done.attempts[0].end_time.ToDatetime()
    ).total_seconds()
    assert gap >= 0.1  # backed off (base 0.2 s, equal jitter)
    assert worker.running()
    api.close()


def test_hanging_pipeline_hits_the_execution_timeout(stack, sample_mp4):
    stack.start_server(**FAST)
    api = Api(stack.address)
    worker = stack.start_worker("patient")
    child = _frozen_child(worker)  # the pipeline will hang
    job = api.submit_with(sample_mp4, execution_timeout=1.5, max_attempts=2)
    done = api.wait_terminal(job.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [a.outcome for a in done.attempts] == [
        OUTCOME.ATTEMPT_OUTCOME_TIMED_OUT,
        OUTCOME.ATTEMPT_OUTCOME_SUCCEEDED,
    ]
    assert done.attempts[0].error.code == 4  # DEADLINE_EXCEEDED
    eventually_sync(lambda: not _alive(child), timeout=10, what="the hung child to be killed")
    api.close()


def test_cancel_stops_a_running_pipeline(stack, sample_mp4):
    stack.start_server(**FAST)
    api = Api(stack.address)
    worker = stack.start_worker("obedient")
    child = _frozen_child(worker)  # mid-run, and deaf to a polite stop
    job = api.submit(sample_mp4)
    _running_on(api, worker, job.job_id)
    cancelled_at = time.monotonic()
    cancelled = api.cancel(job.job_id)
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    eventually_sync(lambda: not _alive(child), timeout=10, what="the pipeline to stop")
    stop_seconds = time.monotonic() - cancelled_at
    print(f"cancelled pipeline process gone {stop_seconds:.2f}s after CancelJob")
    eventually_sync(
        lambda: not worker_status(worker).jobs, timeout=10, what="the worker to drop the job"
    )
    final = api.job(job.job_id)
    assert final.state == job_pb2.JOB_STATE_CANCELLED
    assert final.attempts[-1].outcome == OUTCOME.ATTEMPT_OUTCOME_CANCELLED
    # The worker is free again.
    assert api.wait_terminal(api.submit(sample_mp4).job_id).state == job_pb2.JOB_STATE_SUCCEEDED
    api.close()


def test_drain_hands_back_what_does_not_finish_in_time(stack, sample_mp4):
    stack.start_server(**FAST)
    api = Api(stack.address)
    worker = stack.start_worker("draining", VIDEOJOBS_WORKER_DRAIN_GRACE="1")
    _frozen_child(worker)
    job = api.submit(sample_mp4)
    _running_on(api, worker, job.job_id)
    assert worker.terminate(timeout=30) == 0
    requeued = api.wait_until(
        job.job_id, lambda j: j.state == job_pb2.JOB_STATE_QUEUED, what="hand-back"
    )
    assert requeued.attempts[0].outcome == OUTCOME.ATTEMPT_OUTCOME_HANDED_BACK
    stack.start_worker("successor")
    done = api.wait_terminal(job.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert done.attempt == 2
    api.close()


def test_job_service_sigterm_mid_job_loses_nothing(stack, sample_mp4):
    stack.start_server(VIDEOJOBS_LEASE_DURATION="30")
    api = Api(stack.address)
    worker = stack.start_worker("steady")
    worker.signal(signal.SIGSTOP)
    job = api.submit(sample_mp4)
    api.wait_until(job.job_id, lambda j: j.state == job_pb2.JOB_STATE_RUNNING, what="assignment")
    assert stack.server.terminate() == 0
    stack.start_server(VIDEOJOBS_LEASE_DURATION="30")
    worker.signal(signal.SIGCONT)
    done = api.wait_terminal(job.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert done.attempt == 1  # the worker kept its lease across the restart
    api.close()


def worker_status(worker):
    """GetWorkerStatus of a worker process."""
    import grpc

    from videojobs.v1 import worker_service_pb2, worker_service_pb2_grpc

    with grpc.insecure_channel(worker.address) as channel:
        return worker_service_pb2_grpc.WorkerServiceStub(channel).GetWorkerStatus(
            worker_service_pb2.GetWorkerStatusRequest(), timeout=10
        )


def test_reassignment_after_a_stream_break_is_prompt(stack, sample_mp4):
    """With a free worker waiting, a killed worker's job runs again on it as
    soon as the stream breaks; the delay is printed (a measurement, not a test)."""
    stack.start_server(VIDEOJOBS_LEASE_DURATION="30")
    api = Api(stack.address)
    doomed = stack.start_worker("doomed")
    doomed.signal(signal.SIGSTOP)
    job = api.submit(sample_mp4)
    api.wait_until(job.job_id, lambda j: j.state == job_pb2.JOB_STATE_RUNNING, what="assignment")
    # The standby connects only now, so the job certainly went to `doomed`.
    stack.start_worker("standby")
    killed_at = time.time()
    doomed.kill()
    done = api.wait_terminal(job.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    lost, rerun = done.attempts
    assert (lost.worker_id, rerun.worker_id) == ("doomed", "standby")
    assert lost.outcome == OUTCOME.ATTEMPT_OUTCOME_LEASE_LOST
    # Requeued because its stream broke, not because its (30 s) lease expired.
    assert lost.error.message == "worker doomed disconnected"
    requeued = lost.end_time.ToDatetime().timestamp() - killed_at
    reassigned = rerun.start_time.ToDatetime().timestamp() - killed_at
    print(f"\nworker kill -9 -> requeued {requeued:.3f}s, -> reassigned {reassigned:.3f}s")
    api.close()
