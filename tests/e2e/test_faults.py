"""The service pair as real processes under faults: kill -9 of a worker
mid-job, restarts of job-service, undecodable input, and clean shutdown."""

from __future__ import annotations

import json
import signal

import pytest

from videojobs.storage import StorageKey, open_blob_store
from videojobs.v1 import job_pb2

from support.processes import child_pids
from support.sync_api import Api
from support.waiting import eventually_sync

pytestmark = pytest.mark.e2e


def _result_document(stack, job: job_pb2.Job) -> dict:
    store = open_blob_store(str(stack.data_dir / "storage"))
    with store.open_read(StorageKey(job.output_key)) as handle:
        return json.load(handle)


def test_worker_killed_mid_job_another_worker_finishes_it(stack, sample_mp4):
    stack.start_server()
    api = Api(stack.address)
    doomed = stack.start_worker("doomed")
    # Freeze the worker so it certainly still holds the job when it is killed.
    doomed.signal(signal.SIGSTOP)
    job = api.submit(sample_mp4)
    running = api.wait_until(
        job.job_id, lambda j: j.state == job_pb2.JOB_STATE_RUNNING, what="assignment to doomed"
    )
    assert running.attempt == 1
    doomed.kill()  # kill -9 while it holds the lease
    requeued = api.wait_until(
        job.job_id,
        lambda j: j.state == job_pb2.JOB_STATE_QUEUED and j.attempt == 2,
        what="requeue after the kill",
    )
    assert requeued.attempt == 2
    stack.start_worker("rescuer")
    done = api.wait_terminal(job.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.attempt == 2
    assert done.output_key == f"jobs/{job.job_id}/attempts/2/results.json"
    events = api.events(job.job_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    reasons = [e.state_changed.reason for e in events if e.WhichOneof("payload") == "state_changed"]
    assert any("doomed disconnected" in r for r in reasons), reasons
    assert any("rescuer" in r for r in reasons), reasons
    assert sum(e.WhichOneof("payload") == "completed" for e in events) == 1
    api.close()


def test_pipeline_child_does_not_outlive_a_killed_worker(stack, sample_mp4):
    stack.start_server()
    api = Api(stack.address)
    worker = stack.start_worker("parent")
    # Freeze the warm pipeline process, then give it a job: it hangs in it.
    children = eventually_sync(lambda: child_pids(worker.pid), timeout=30, what="pipeline child")
    job = api.submit(sample_mp4, verify_frames=50, count_frames=True)
    api.wait_until(job.job_id, lambda j: j.state == job_pb2.JOB_STATE_RUNNING, what="assignment")
    for pid in children:
        try:
            import os

            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    worker.kill()
    for pid in children:
        try:
            import os

            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    # The orphans die with their worker (PR_SET_PDEATHSIG), frozen or not.
    def gone():
        import os

        alive = []
        for pid in children:
            try:
                os.kill(pid, 0)
                state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    alive.append(pid)
            except (ProcessLookupError, FileNotFoundError):
                pass
        return not alive

    eventually_sync(gone, timeout=15, what="the orphaned pipeline child to exit")
    stack.start_worker("second")
    done = api.wait_terminal(job.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    api.close()


def test_server_restart_between_submit_and_completion_loses_nothing(stack, sample_mp4):
    stack.start_server()
    api = Api(stack.address)
    jobs = [api.submit(sample_mp4) for _ in range(3)]
    stack.server.kill()  # kill -9: no goodbye
    stack.start_server()
    assert all(api.job(j.job_id).state == job_pb2.JOB_STATE_QUEUED for j in jobs)
    stack.start_worker("after-restart")
    for job in jobs:
        done = api.wait_terminal(job.job_id)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED
        assert done.attempt == 1
        events = api.events(done.job_id)
        assert events[0].state_changed.to_state == job_pb2.JOB_STATE_QUEUED
        assert events[-1].WhichOneof("payload") == "completed"
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    api.close()


def test_server_killed_while_a_job_runs_the_worker_keeps_its_lease(stack, sample_mp4):
    stack.start_server(VIDEOJOBS_LEASE_DURATION="30")
    api = Api(stack.address)
    worker = stack.start_worker("steady", VIDEOJOBS_LEASE_DURATION="30")
    worker.signal(signal.SIGSTOP)
    job = api.submit(sample_mp4)
    api.wait_until(job.job_id, lambda j: j.state == job_pb2.JOB_STATE_RUNNING, what="assignment")
    stack.server.kill()
    stack.start_server(VIDEOJOBS_LEASE_DURATION="30")
    worker.signal(signal.SIGCONT)
    done = api.wait_terminal(job.job_id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    # The same attempt finished: the restarted server handed the lease back to it.
    assert done.attempt == 1
    api.close()


def test_undecodable_video_fails_cleanly_and_the_worker_goes_on(stack, sample_mp4):
    stack.start_server()
    api = Api(stack.address)
    worker = stack.start_worker("sturdy")
    # Keep the container intact but zero the coded frames: it opens, it does not decode.
    box = sample_mp4.index(b"mdat") - 4
    size = int.from_bytes(sample_mp4[box : box + 4], "big")
    start, end = box + 8, box + size
    broken = sample_mp4[:start] + bytes(end - start) + sample_mp4[end:]
    bad = api.submit(broken)
    failed = api.wait_terminal(bad.job_id)
    assert failed.state == job_pb2.JOB_STATE_FAILED
    assert failed.error.code == 3  # INVALID_ARGUMENT: retrying cannot help
    assert "decod" in failed.error.message
    assert failed.attempt == 1
    good = api.submit(sample_mp4)
    assert api.wait_terminal(good.job_id).state == job_pb2.JOB_STATE_SUCCEEDED
    assert worker.running()
    api.close()


def test_sigterm_stops_worker_and_server_cleanly(stack, sample_mp4):
    stack.start_server()
    api = Api(stack.address)
    worker = stack.start_worker("polite")
    job = api.submit(sample_mp4)
    assert api.wait_terminal(job.job_id).state == job_pb2.JOB_STATE_SUCCEEDED
    assert worker.terminate() == 0
    assert stack.server.terminate() == 0
    # Nothing was lost: a new server on the same data has the finished job.
    stack.start_server()
    assert api.job(job.job_id).state == job_pb2.JOB_STATE_SUCCEEDED
    probe = _result_document(stack, api.job(job.job_id))["sections"]["probe"]
    assert probe["streams"][0]["frame_count"] == 50
    api.close()
