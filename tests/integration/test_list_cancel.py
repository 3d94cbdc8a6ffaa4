"""ListJobs (AIP-158 pages and filters) and CancelJob."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from videojobs.v1 import dispatch_service_pb2 as dpb
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import rich_error
from support.scripted_worker import ScriptedWorker
from support.uploads import submit


async def test_pages_newest_first_without_gaps_or_repeats(job_service, sample_mp4):
    created = [(await submit(job_service.stub, sample_mp4)).job_id for _ in range(7)]
    seen, token, pages = [], "", 0
    while True:
        page = await job_service.stub.ListJobs(js.ListJobsRequest(page_size=3, page_token=token))
        assert len(page.jobs) <= 3
        seen += [job.job_id for job in page.jobs]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == list(reversed(created))


async def test_filter_by_state_and_pipeline(job_service, sample_mp4):
    jobs = [await submit(job_service.stub, sample_mp4) for _ in range(3)]
    await job_service.stub.CancelJob(js.CancelJobRequest(job_id=jobs[1].job_id))
    queued = await job_service.stub.ListJobs(js.ListJobsRequest(states=[job_pb2.JOB_STATE_QUEUED]))
    assert [j.job_id for j in queued.jobs] == [jobs[2].job_id, jobs[0].job_id]
    either = await job_service.stub.ListJobs(
        js.ListJobsRequest(states=[job_pb2.JOB_STATE_CANCELLED, job_pb2.JOB_STATE_SUCCEEDED])
    )
    assert [j.job_id for j in either.jobs] == [jobs[1].job_id]
    assert len((await job_service.stub.ListJobs(js.ListJobsRequest(pipeline="probe"))).jobs) == 3
    assert len((await job_service.stub.ListJobs(js.ListJobsRequest(pipeline="ocr"))).jobs) == 0


async def test_list_errors(job_service, sample_mp4):
    for _ in range(2):
        await submit(job_service.stub, sample_mp4)
    first = await job_service.stub.ListJobs(js.ListJobsRequest(page_size=1))
    cases = [
        (js.ListJobsRequest(page_size=-1), "page_size"),
        (js.ListJobsRequest(page_token="not-a-token"), "page_token"),
        # A token used with another filter than the page it came from.
        (js.ListJobsRequest(page_token=first.next_page_token, pipeline="probe"), "page_token"),
        (js.ListJobsRequest(states=[job_pb2.JOB_STATE_UNSPECIFIED]), "states[0]"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await job_service.stub.ListJobs(request)
        error = rich_error(caught.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert field in error.violations, (request, error)


async def test_cancel_a_queued_job_at_once(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    cancelled = (
        await job_service.stub.CancelJob(
            js.CancelJobRequest(job_id=job.job_id, reason="not needed")
        )
    ).job
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    assert cancelled.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert cancelled.error.message == "not needed"
    assert cancelled.HasField("end_time")
    # A worker connecting afterwards gets nothing: the job is gone from the queue.
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        with pytest.raises(TimeoutError):
            await worker.next("assignment", timeout=0.5)
    events = [
        r.event
        async for r in job_service.stub.StreamResults(js.StreamResultsRequest(job_id=job.job_id))
    ]
    assert events[-1].cancelled.reason == "not needed"
    assert events[-1].job_state == job_pb2.JOB_STATE_CANCELLED


async def test_cancel_a_running_job_tells_its_worker(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        response = await job_service.stub.CancelJob(js.CancelJobRequest(job_id=job.job_id))
        assert response.job.state == job_pb2.JOB_STATE_CANCELLED
        stop = await worker.next("stop_job")
        assert stop.job_id == job.job_id
        assert stop.lease_token == assignment.lease_token
        assert stop.reason == dpb.STOP_REASON_CANCELLED
        # A late completion from that worker is refused: the job stays cancelled.
        worker.complete(assignment)
        refusal = await worker.next("stop_job")
        assert refusal.reason == dpb.STOP_REASON_JOB_ENDED
        worker.send(
            stopped=dpb.JobStoppedReport(job_id=job.job_id, lease_token=assignment.lease_token)
        )
    final = (await job_service.stub.GetStatus(js.GetStatusRequest(job_id=job.job_id))).job
    assert final.state == job_pb2.JOB_STATE_CANCELLED
    assert final.output_key == ""


async def test_cancel_errors(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    await job_service.stub.CancelJob(js.CancelJobRequest(job_id=job.job_id))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await job_service.stub.CancelJob(js.CancelJobRequest(job_id=job.job_id))
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "JOB_ALREADY_ENDED"
    assert error.metadata["state"] == "CANCELLED"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await job_service.stub.CancelJob(js.CancelJobRequest(job_id="a" * 32))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_cancels_end_the_job_once(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    results = await asyncio.gather(
        *(job_service.stub.CancelJob(js.CancelJobRequest(job_id=job.job_id)) for _ in range(5)),
        return_exceptions=True,
    )
    succeeded = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(succeeded) == 1
    assert all(r.code() == grpc.StatusCode.FAILED_PRECONDITION for r in refused)
    assert len(succeeded) + len(refused) == 5
