"""The dispatch stream: assignment, capacity, fencing, key checks, requeue on
a broken stream, adoption after a restart, lease expiry."""

from __future__ import annotations

import grpc
import pytest

from videojobs.v1 import dispatch_service_pb2 as dpb
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import rich_error
from support.scripted_worker import ScriptedWorker
from support.sql import statements_containing
from support.uploads import submit
from support.waiting import eventually


async def _job(service, job_id: str) -> job_pb2.Job:
    return (await service.stub.GetStatus(js.GetStatusRequest(job_id=job_id))).job


async def test_oldest_first_and_never_over_capacity(job_service, sample_mp4):
    jobs = [await submit(job_service.stub, sample_mp4) for _ in range(3)]
    async with ScriptedWorker(job_service.address, store=job_service.storage, capacity=2) as worker:
        first = await worker.next("assignment")
        second = await worker.next("assignment")
        assert [first.job_id, second.job_id] == [jobs[0].job_id, jobs[1].job_id]
        with pytest.raises(TimeoutError):
            await worker.next("assignment", timeout=0.5)
        worker.complete(first)
        third = await worker.next("assignment")
        assert third.job_id == jobs[2].job_id


async def test_a_slot_freed_with_nothing_queued_costs_no_claim(job_service, sample_mp4):
    """Once a claim found nothing else waiting, a job ending frees a slot
    without a claim transaction to find nothing; the next job queued is
    claimed at once."""
    async with ScriptedWorker(job_service.address, store=job_service.storage, capacity=1) as worker:
        first_job = await submit(job_service.stub, sample_mp4)
        first = await worker.next("assignment")
        assert first.job_id == first_job.job_id
        # The claim: the dispatcher's query for the next job to hand out.
        with statements_containing("ORDER BY jobs.dispatch_rank") as claims:
            worker.complete(first)

            async def succeeded():
                job = await _job(job_service, first_job.job_id)
                return job.state == job_pb2.JOB_STATE_SUCCEEDED

            await eventually(succeeded, what="the first job to succeed")
            second_job = await submit(job_service.stub, sample_mp4)
            second = await worker.next("assignment")
        assert second.job_id == second_job.job_id
        assert len(claims) == 1


async def test_a_job_waits_for_a_worker_that_runs_its_pipeline(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(
        job_service.address, store=job_service.storage, worker_id="other", pipelines=("ocr",)
    ) as other:
        with pytest.raises(TimeoutError):
            await other.next("assignment", timeout=0.5)
        async with ScriptedWorker(
            job_service.address, store=job_service.storage, worker_id="prober"
        ) as prober:
            assert (await prober.next("assignment")).job_id == job.job_id


async def test_broken_stream_requeues_with_next_attempt(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    worker = ScriptedWorker(job_service.address, store=job_service.storage, worker_id="doomed")
    await worker.__aenter__()
    first = await worker.next("assignment")
    await worker.disconnect()

    async def requeued():
        current = await _job(job_service, job.job_id)
        return current.state == job_pb2.JOB_STATE_QUEUED and current.attempt == 2

    await eventually(requeued, what="requeue with attempt 2")
    async with ScriptedWorker(
        job_service.address, store=job_service.storage, worker_id="rescuer"
    ) as rescuer:
        second = await rescuer.next("assignment")
        assert second.attempt == 2
        assert second.lease_token != first.lease_token
        assert second.output_prefix == f"jobs/{job.job_id}/attempts/2"
        rescuer.complete(second)
        await eventually(
            lambda: _state_is(job_service, job.job_id, job_pb2.JOB_STATE_SUCCEEDED),
            what="success",
        )
    final = await _job(job_service, job.job_id)
    assert final.output_key == f"jobs/{job.job_id}/attempts/2/results.json"


async def _state_is(service, job_id, state) -> bool:
    return (await _job(service, job_id)).state == state


async def test_stale_lease_reports_are_refused(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        forged = dpb.Assignment()
        forged.CopyFrom(assignment)
        forged.lease_token = "0" * 32
        worker.progress(forged, 0.9)
        stop = await worker.next("stop_job")
        assert stop.reason == dpb.STOP_REASON_LEASE_LOST
        worker.complete(forged)
        assert (await worker.next("stop_job")).reason == dpb.STOP_REASON_LEASE_LOST
    current = await _job(job_service, job.job_id)
    assert current.progress.fraction == 0.0
    assert current.output_key == ""


@pytest.mark.parametrize(
    ("output_key", "field"),
    [
        ("/var/lib/videojobs/out.json", "completion.output_key"),
        ("jobs/x/../../etc/passwd", "completion.output_key"),
        ("file:///tmp/x.json", "completion.output_key"),
        ("C:\\out\\x.json", "completion.output_key"),
    ],
)
async def test_worker_keys_must_be_relative(job_service, sample_mp4, output_key, field):
    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        worker.complete(assignment, output_key=output_key)
        error = await worker.ended()
    assert error is not None
    details = rich_error(error)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.reason == "INVALID_STORAGE_KEY"
    assert field in details.violations

    # The bad report recorded nothing; the attempt was lost and the job requeued.
    async def requeued():
        current = await _job(job_service, job.job_id)
        return current.state == job_pb2.JOB_STATE_QUEUED and current.attempt == 2

    await eventually(requeued, what="requeue after the protocol error")


async def test_completion_outside_its_attempt_prefix_is_refused(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        worker.complete(assignment, output_key=f"jobs/{job.job_id}/attempts/7/results.json")
        error = rich_error(await worker.ended())
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "completion.output_key" in error.violations


async def test_invalid_hello_is_refused(job_service):
    worker = ScriptedWorker(
        job_service.address, store=job_service.storage, worker_id="bad id with spaces", capacity=0
    )
    with pytest.raises(AssertionError):
        await worker.__aenter__()
    details = rich_error(worker.error)
    await worker.disconnect()
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {"hello.worker_id", "hello.max_concurrent_jobs"} <= set(details.violations)


async def test_failure_reports_fail_the_job_with_their_error(job_service, sample_mp4):
    from google.rpc import code_pb2, error_details_pb2, status_pb2

    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="does not decode")
        status.details.add().Pack(error_details_pb2.ErrorInfo(reason="INPUT_NOT_DECODABLE"))
        worker.send(
            failure=dpb.JobFailureReport(
                job_id=job.job_id, lease_token=assignment.lease_token, error=status, retryable=False
            )
        )
        await eventually(
            lambda: _state_is(job_service, job.job_id, job_pb2.JOB_STATE_FAILED), what="failure"
        )
    final = await _job(job_service, job.job_id)
    assert final.error.code == code_pb2.INVALID_ARGUMENT
    assert final.error.message == "does not decode"
    info = error_details_pb2.ErrorInfo()
    assert final.error.details[0].Unpack(info)
    assert info.reason == "INPUT_NOT_DECODABLE"


async def test_retryable_failure_is_retried_until_attempts_run_out(start_job_service, sample_mp4):
    from google.rpc import code_pb2, status_pb2

    service = await start_job_service(max_attempts=2)
    job = await submit(service.stub, sample_mp4)
    async with ScriptedWorker(service.address, store=service.storage) as worker:
        for attempt in (1, 2):
            assignment = await worker.next("assignment")
            assert assignment.attempt == attempt
            worker.send(
                failure=dpb.JobFailureReport(
                    job_id=job.job_id,
                    lease_token=assignment.lease_token,
                    error=status_pb2.Status(code=code_pb2.UNAVAILABLE, message="disk hiccup"),
                    retryable=True,
                )
            )
        await eventually(
            lambda: _state_is(service, job.job_id, job_pb2.JOB_STATE_FAILED), what="final failure"
        )
    assert (await _job(service, job.job_id)).attempt == 2


async def test_restarted_server_lets_the_worker_keep_its_lease(
    start_job_service, tmp_path, sample_mp4
):
    first = await start_job_service(data_dir=tmp_path / "shared", lease_duration=30.0)
    job = await submit(first.stub, sample_mp4)
    async with ScriptedWorker(first.address, store=first.storage) as worker:
        assignment = await worker.next("assignment")
    # The server goes away while the job runs (as with a crash: leases stay).
    first.app.dispatch_servicer.shutting_down = True
    await first.app.stop()
    second = await start_job_service(data_dir=tmp_path / "shared", lease_duration=30.0)
    held = [dpb.HeldLease(job_id=job.job_id, lease_token=assignment.lease_token)]
    async with ScriptedWorker(second.address, store=second.storage, held=held) as worker:
        worker.complete(assignment)
        await eventually(
            lambda: _state_is(second, job.job_id, job_pb2.JOB_STATE_SUCCEEDED), what="success"
        )
    final = await _job(second, job.job_id)
    assert final.attempt == 1


async def test_silent_worker_loses_its_lease_at_expiry(start_job_service, sample_mp4):
    service = await start_job_service(heartbeat_interval=0.1, lease_duration=0.6)
    job = await submit(service.stub, sample_mp4)
    async with ScriptedWorker(service.address, store=service.storage, worker_id="silent") as silent:
        first = await silent.next("assignment")
        # No heartbeats: the lease runs out, the job is requeued, the worker is told.
        stop = await silent.next("stop_job", timeout=5)
        assert stop.job_id == job.job_id
        assert stop.reason == dpb.STOP_REASON_LEASE_LOST
        # An unresponsive worker gets no new job, not even the one it lost.
        with pytest.raises(TimeoutError):
            await silent.next("assignment", timeout=0.5)
        # It wakes up: its late completion of attempt 1 is refused...
        silent.complete(first)
        assert (await silent.next("stop_job")).reason == dpb.STOP_REASON_LEASE_LOST
        # ...and once it says it no longer runs attempt 1, its slot is free.
        silent.heartbeat()
        second = await silent.next("assignment")
        assert (second.job_id, second.attempt) == (job.job_id, 2)
        silent.complete(second)
        await eventually(
            lambda: _state_is(service, job.job_id, job_pb2.JOB_STATE_SUCCEEDED), what="success"
        )
    final = await _job(service, job.job_id)
    assert final.output_key == f"jobs/{job.job_id}/attempts/2/results.json"


async def test_heartbeats_keep_a_lease_alive(start_job_service, sample_mp4):
    service = await start_job_service(heartbeat_interval=0.1, lease_duration=0.6)
    job = await submit(service.stub, sample_mp4)
    async with ScriptedWorker(service.address, store=service.storage) as worker:
        assignment = await worker.next("assignment")
        # Heartbeat for well over two lease durations, each time waiting until
        # the server has seen progress, then complete: still the same attempt.
        for step in range(1, 16):
            worker.heartbeat(assignment)
            worker.progress(assignment, step / 100)
            await eventually(
                lambda s=step: _progress_at_least(service, job.job_id, s / 100), what="progress"
            )
        worker.complete(assignment)
        await eventually(
            lambda: _state_is(service, job.job_id, job_pb2.JOB_STATE_SUCCEEDED), what="success"
        )
    assert (await _job(service, job.job_id)).attempt == 1


async def _progress_at_least(service, job_id, fraction) -> bool:
    return (await _job(service, job_id)).progress.fraction >= fraction
