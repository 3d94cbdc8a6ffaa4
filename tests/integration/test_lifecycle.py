"""Job lifecycle rules of issue 3 on a real server with scripted workers:
retries with backoff, execution and queue timeouts, priority and aging,
capacity across workers, hand-back, drain, the lost-lease limit, and state
that survives restarts (cancel, idempotent submit)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, status_pb2

from videojobs.v1 import dispatch_service_pb2 as dpb
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import rich_error
from support.scripted_worker import ScriptedWorker
from support.uploads import chunks, header, submit
from support.waiting import eventually

OUTCOME = job_pb2.AttemptOutcome


async def _job(service, job_id):
    return (await service.stub.GetStatus(js.GetStatusRequest(job_id=job_id))).job


async def _wait_state(service, job_id, state, what="state"):
    async def reached():
        job = await _job(service, job_id)
        return job if job.state == state else None

    return await eventually(reached, what=what)


def _seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def _fail(worker, assignment, retryable=True, message="transient"):
    worker.send(
        failure=dpb.JobFailureReport(
            job_id=assignment.job_id,
            lease_token=assignment.lease_token,
            error=status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message),
            retryable=retryable,
        )
    )


async def test_retries_back_off_then_fail_with_history(start_job_service, sample_mp4):
    service = await start_job_service(retry_backoff_base=0.3, retry_backoff_max=5.0)
    job = await submit(service.stub, sample_mp4, max_attempts=3)
    assert job.max_attempts == 3
    async with ScriptedWorker(service.address, store=service.storage) as worker:
        for attempt in (1, 2, 3):
            assignment = await worker.next("assignment")
            assert assignment.attempt == attempt
            _fail(worker, assignment, message=f"hiccup {attempt}")
            if attempt < 3:
                waiting = await _wait_state(service, job.job_id, job_pb2.JOB_STATE_QUEUED)
                # Backing off: eligible again only after the delay (0.15-0.3 s,
                # then 0.3-0.6 s), and not handed out before it.
                assert waiting.HasField("next_attempt_time")
                assert waiting.progress.stage == "waiting to retry"
                delay = (
                    waiting.next_attempt_time.ToDatetime()
                    - waiting.attempts[-1].end_time.ToDatetime()
                ).total_seconds()
                low = 0.3 * 2 ** (attempt - 1) / 2
                assert low - 0.01 <= delay <= 2 * low + 0.05, delay
        final = await _wait_state(service, job.job_id, job_pb2.JOB_STATE_FAILED)
    assert final.error.message == "hiccup 3"
    assert [a.outcome for a in final.attempts] == [
        OUTCOME.ATTEMPT_OUTCOME_RETRIED,
        OUTCOME.ATTEMPT_OUTCOME_RETRIED,
        OUTCOME.ATTEMPT_OUTCOME_FAILED,
    ]
    assert [a.error.message for a in final.attempts] == ["hiccup 1", "hiccup 2", "hiccup 3"]
    assert all(a.worker_id == "scripted-1" and a.HasField("end_time") for a in final.attempts)
    # Each retry started no earlier than its backoff allowed.
    for earlier, later in zip(final.attempts, final.attempts[1:], strict=False):
        gap = (later.start_time.ToDatetime() - earlier.end_time.ToDatetime()).total_seconds()
        assert gap >= 0.3 * 2 ** (earlier.number - 1) / 2 - 0.01, gap


async def test_non_retryable_failure_is_final_at_once(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4, max_attempts=5)
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        _fail(worker, await worker.next("assignment"), retryable=False, message="bad input")
        final = await _wait_state(job_service, job.job_id, job_pb2.JOB_STATE_FAILED)
    assert final.attempt == 1
    assert [a.outcome for a in final.attempts] == [OUTCOME.ATTEMPT_OUTCOME_FAILED]


async def test_execution_timeout_is_enforced_by_the_server(start_job_service, sample_mp4):
    service = await start_job_service(retry_backoff_base=0.05)
    job = await submit(service.stub, sample_mp4, max_attempts=2, execution_timeout=_seconds(0.5))
    async with ScriptedWorker(service.address, store=service.storage) as worker:
        first = await worker.next("assignment")
        deadline = first.execution_deadline.ToDatetime() - first.lease_expire_time.ToDatetime()
        assert first.HasField("execution_deadline")
        # The worker keeps its lease alive but never finishes.
        worker.heartbeat(first)
        stop = await worker.next("stop_job", timeout=5)
        assert (stop.job_id, stop.reason) == (job.job_id, dpb.STOP_REASON_TIMED_OUT)
        # Until the worker confirms the stop, the slot stays taken.
        with pytest.raises(TimeoutError):
            await worker.next("assignment", timeout=0.3)
        worker.send(stopped=dpb.JobStoppedReport(job_id=job.job_id, lease_token=first.lease_token))
        second = await worker.next("assignment", timeout=5)
        assert second.attempt == 2
        worker.heartbeat(second)
        assert (await worker.next("stop_job", timeout=5)).reason == dpb.STOP_REASON_TIMED_OUT
        final = await _wait_state(service, job.job_id, job_pb2.JOB_STATE_FAILED)
    assert deadline.total_seconds() < 0  # the execution deadline came before the lease expiry
    assert final.error.code == code_pb2.DEADLINE_EXCEEDED
    assert [a.outcome for a in final.attempts] == [
        OUTCOME.ATTEMPT_OUTCOME_TIMED_OUT,
        OUTCOME.ATTEMPT_OUTCOME_TIMED_OUT,
    ]
    assert final.execution_timeout.ToTimedelta().total_seconds() == 0.5


async def test_queue_timeout_fails_a_job_nobody_takes(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4, queue_timeout=_seconds(0.4))
    final = await _wait_state(job_service, job.job_id, job_pb2.JOB_STATE_FAILED, "queue timeout")
    assert final.error.code == code_pb2.DEADLINE_EXCEEDED
    assert "queue timeout" in final.error.message
    assert final.attempts == []
    waited = (final.end_time.ToDatetime() - final.create_time.ToDatetime()).total_seconds()
    assert waited >= 0.4
    events = [
        r.event
        async for r in job_service.stub.StreamResults(js.StreamResultsRequest(job_id=job.job_id))
    ]
    assert events[-1].WhichOneof("payload") == "failed"


async def test_highest_priority_first_then_oldest(job_service, sample_mp4):
    low = await submit(job_service.stub, sample_mp4, priority=-5)
    normal_old = await submit(job_service.stub, sample_mp4)
    high = await submit(job_service.stub, sample_mp4, priority=5)
    normal_new = await submit(job_service.stub, sample_mp4)
    order = []
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        for _ in range(4):
            assignment = await worker.next("assignment")
            order.append(assignment.job_id)
            worker.complete(assignment)
    assert order == [high.job_id, normal_old.job_id, normal_new.job_id, low.job_id]


async def test_old_low_priority_jobs_are_not_starved(start_job_service, sample_mp4):
    # One step of priority is worth 1 microsecond of waiting here, so the
    # older low-priority job has waited longer than its handicap.
    service = await start_job_service(priority_step=1e-6)
    old_low = await submit(service.stub, sample_mp4, priority=-1)
    new_high = await submit(service.stub, sample_mp4, priority=1)
    async with ScriptedWorker(service.address, store=service.storage) as worker:
        first = await worker.next("assignment")
        assert first.job_id == old_low.job_id
        worker.complete(first)
        assert (await worker.next("assignment")).job_id == new_high.job_id


async def test_bad_job_options_are_refused(job_service, sample_mp4):
    cases = [
        ({"priority": 11}, "header.priority"),
        ({"max_attempts": 21}, "header.max_attempts"),
        ({"execution_timeout": _seconds(0)}, "header.execution_timeout"),
        ({"queue_timeout": _seconds(90000)}, "header.queue_timeout"),
    ]
    for fields, field in cases:
        messages = [header(**fields), *chunks(sample_mp4)]

        async def stream(messages=messages):
            for message in messages:
                yield message

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await job_service.stub.SubmitVideo(stream())
        error = rich_error(caught.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert field in error.violations, (fields, error.violations)


async def test_work_spreads_by_free_capacity_and_never_exceeds_it(job_service, sample_mp4):
    jobs = [await submit(job_service.stub, sample_mp4) for _ in range(5)]
    async with (
        ScriptedWorker(
            job_service.address, store=job_service.storage, worker_id="big", capacity=3
        ) as big,
        ScriptedWorker(
            job_service.address, store=job_service.storage, worker_id="small", capacity=1
        ) as small,
    ):
        got_small = [await small.next("assignment")]
        got_big = [await big.next("assignment") for _ in range(3)]
        for worker in (big, small):
            with pytest.raises(TimeoutError):
                await worker.next("assignment", timeout=0.4)
        assert len({a.job_id for a in got_big + got_small}) == 4
        small.complete(got_small[0])
        fifth = await small.next("assignment")
        assert {a.job_id for a in got_big + got_small + [fifth]} == {j.job_id for j in jobs}


async def test_stopped_job_is_handed_back_at_once(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(
        job_service.address, store=job_service.storage, worker_id="leaving"
    ) as worker:
        assignment = await worker.next("assignment")
        # As a draining worker does: announce the drain, then give the job back.
        worker.heartbeat(assignment, draining=True)
        worker.send(
            stopped=dpb.JobStoppedReport(job_id=job.job_id, lease_token=assignment.lease_token)
        )
        requeued = await _wait_state(job_service, job.job_id, job_pb2.JOB_STATE_QUEUED)
    assert requeued.attempt == 2
    assert [a.outcome for a in requeued.attempts] == [OUTCOME.ATTEMPT_OUTCOME_HANDED_BACK]


async def test_draining_worker_gets_no_new_jobs(job_service, sample_mp4):
    async with ScriptedWorker(job_service.address, store=job_service.storage, capacity=2) as worker:
        first_job = await submit(job_service.stub, sample_mp4)
        first = await worker.next("assignment")
        assert first.job_id == first_job.job_id
        worker.heartbeat(first, draining=True)

        async def draining_seen():
            return all(s.draining for s in job_service.app.coordinator.sessions)

        await eventually(draining_seen, what="the server to see the drain")
        second_job = await submit(job_service.stub, sample_mp4)
        with pytest.raises(TimeoutError):
            await worker.next("assignment", timeout=0.5)
        worker.complete(first)
        await _wait_state(job_service, first_job.job_id, job_pb2.JOB_STATE_SUCCEEDED)
    assert (await _job(job_service, second_job.job_id)).state == job_pb2.JOB_STATE_QUEUED


async def test_a_job_that_keeps_losing_workers_fails(start_job_service, sample_mp4):
    service = await start_job_service(max_lease_losses=1)
    job = await submit(service.stub, sample_mp4)
    for attempt in (1, 2):
        worker = ScriptedWorker(
            service.address, store=service.storage, worker_id=f"flaky-{attempt}"
        )
        await worker.__aenter__()
        assert (await worker.next("assignment")).attempt == attempt
        await worker.disconnect()
    final = await _wait_state(service, job.job_id, job_pb2.JOB_STATE_FAILED)
    assert final.error.code == code_pb2.ABORTED
    assert [a.outcome for a in final.attempts] == [OUTCOME.ATTEMPT_OUTCOME_LEASE_LOST] * 2


async def test_cancel_survives_a_restart(start_job_service, tmp_path, sample_mp4):
    shared = tmp_path / "shared"
    first = await start_job_service(data_dir=shared, lease_duration=30.0)
    job = await submit(first.stub, sample_mp4)
    async with ScriptedWorker(first.address, store=first.storage) as worker:
        assignment = await worker.next("assignment")
    first.app.dispatch_servicer.shutting_down = True
    await first.app.stop()
    second = await start_job_service(data_dir=shared, lease_duration=30.0)
    cancelled = (await second.stub.CancelJob(js.CancelJobRequest(job_id=job.job_id))).job
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    assert cancelled.attempts[-1].outcome == OUTCOME.ATTEMPT_OUTCOME_CANCELLED
    await second.app.stop()
    third = await start_job_service(data_dir=shared, lease_duration=30.0)
    # The worker comes back still running it: it is told to stop, and its
    # completion is refused.
    held = [dpb.HeldLease(job_id=job.job_id, lease_token=assignment.lease_token)]
    async with ScriptedWorker(third.address, store=third.storage, held=held) as worker:
        stop = await worker.next("stop_job")
        assert stop.job_id == job.job_id
        worker.complete(assignment)
        assert (await worker.next("stop_job")).reason == dpb.STOP_REASON_JOB_ENDED
    final = await _job(third, job.job_id)
    assert final.state == job_pb2.JOB_STATE_CANCELLED
    assert final.output_key == ""


async def test_idempotent_submit_across_a_restart(start_job_service, tmp_path, sample_mp4):
    shared = tmp_path / "shared"
    first = await start_job_service(data_dir=shared)
    original = await submit(first.stub, sample_mp4, request_id="batch-7/clip-1", priority=2)
    await first.app.stop()
    second = await start_job_service(data_dir=shared)
    again = await submit(second.stub, sample_mp4, request_id="batch-7/clip-1", priority=2)
    assert again.job_id == original.job_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(second.stub, sample_mp4, request_id="batch-7/clip-1", priority=3)
    assert rich_error(caught.value).reason == "REQUEST_ID_REUSED"
    listed = await second.stub.ListJobs(js.ListJobsRequest())
    assert [j.job_id for j in listed.jobs] == [original.job_id]


async def test_a_worker_reconnecting_while_draining_gets_nothing(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    draining = ScriptedWorker(job_service.address, store=job_service.storage, worker_id="leaving")
    draining.hello.draining = True
    async with draining:
        with pytest.raises(TimeoutError):
            await draining.next("assignment", timeout=0.5)
    assert (await _job(job_service, job.job_id)).state == job_pb2.JOB_STATE_QUEUED
