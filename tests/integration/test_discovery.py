"""ListPipelines, ListWorkers and GetStats: what job-service says about the
pipelines it accepts, the workers connected to it, and its recent jobs."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from videojobs.v1 import dispatch_service_pb2 as dpb
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import rich_error
from support.scripted_worker import ScriptedWorker
from support.uploads import submit
from support.waiting import eventually


async def test_list_pipelines_describes_every_pipeline_and_its_parameters(job_service):
    answer = await job_service.stub.ListPipelines(js.ListPipelinesRequest())
    by_name = {p.name: p for p in answer.pipelines}
    assert sorted(by_name) == ["detect", "ocr", "probe", "scenes", "thumbnails"]
    ocr = by_name["ocr"]
    assert ocr.analyses_frames and not by_name["probe"].analyses_frames
    assert ocr.default_execution_timeout.ToTimedelta().total_seconds() == 1800
    schema = json_format.MessageToDict(ocr.parameters_schema)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["properties"]["min_confidence"]["type"] == "number"
    assert schema["properties"]["min_confidence"]["maximum"] == 1
    assert schema["properties"]["min_confidence"]["description"]
    probe = json_format.MessageToDict(by_name["probe"].parameters_schema)
    assert probe["properties"]["count_frames"] == {
        "type": "boolean",
        "description": probe["properties"]["count_frames"]["description"],
        "default": False,
    }
    sampling = json_format.MessageToDict(answer.sampling_parameters_schema)
    assert sampling["properties"]["frame_stride"]["type"] == "integer"
    assert sampling["properties"]["frame_stride"]["default"] == 1


async def test_list_workers_shows_slots_jobs_draining_and_heartbeats(job_service, sample_mp4):
    assert (await job_service.stub.ListWorkers(js.ListWorkersRequest())).workers == []
    job = await submit(job_service.stub, sample_mp4)
    worker = ScriptedWorker(
        job_service.address,
        store=job_service.storage,
        worker_id="w-listed",
        pipelines=("probe", "scenes"),
        capacity=3,
    )
    worker.hello.status_address = "127.0.0.1:6001"
    worker.hello.version = "9.9"
    async with worker:
        assignment = await worker.next("assignment")
        [listed] = (await job_service.stub.ListWorkers(js.ListWorkersRequest())).workers
        assert listed.worker_id == "w-listed"
        assert listed.status_address == "127.0.0.1:6001"
        assert listed.version == "9.9"
        assert list(listed.pipelines) == ["probe", "scenes"]
        assert (listed.slots, listed.slots_used) == (3, 1)
        assert list(listed.job_ids) == [job.job_id] == [assignment.job_id]
        assert not listed.draining
        first_seen = listed.last_heartbeat_time.ToDatetime()

        worker.send(
            heartbeat=dpb.Heartbeat(
                running=[dpb.HeldLease(job_id=job.job_id, lease_token=assignment.lease_token)],
                draining=True,
            )
        )

        async def draining_and_heard_again():
            [now] = (await job_service.stub.ListWorkers(js.ListWorkersRequest())).workers
            return now.draining and now.last_heartbeat_time.ToDatetime() > first_seen

        await eventually(draining_and_heard_again, what="the heartbeat in ListWorkers")
    # A closed stream leaves the list.
    await eventually(
        lambda: _no_workers(job_service), what="the worker to leave ListWorkers after it went"
    )


async def _no_workers(service) -> bool:
    return not (await service.stub.ListWorkers(js.ListWorkersRequest())).workers


async def test_get_stats_counts_states_and_times_per_pipeline_set(job_service, sample_mp4):
    done = [await submit(job_service.stub, sample_mp4) for _ in range(3)]
    failed = await submit(job_service.stub, sample_mp4)
    queued = await submit(job_service.stub, sample_mp4, pipeline="", pipelines=["ocr", "scenes"])
    async with ScriptedWorker(job_service.address, store=job_service.storage, capacity=4) as worker:
        for _ in range(4):
            assignment = await worker.next("assignment")
            if assignment.job_id == failed.job_id:
                worker.send(
                    failure=dpb.JobFailureReport(
                        job_id=assignment.job_id,
                        lease_token=assignment.lease_token,
                        retryable=False,
                    )
                )
            else:
                worker.complete(assignment)

        async def all_ended():
            ended = 0
            for job in [*done, failed]:
                answer = await job_service.stub.GetStatus(js.GetStatusRequest(job_id=job.job_id))
                ended += answer.job.state in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED)
            return ended == 4

        await eventually(all_ended, what="four jobs to end")

    stats = await job_service.stub.GetStats(js.GetStatsRequest())
    counts = {job_pb2.JobState.Name(c.state): c.count for c in stats.total.counts}
    assert counts == {"JOB_STATE_QUEUED": 1, "JOB_STATE_SUCCEEDED": 3, "JOB_STATE_FAILED": 1}
    assert stats.total.success_rate == pytest.approx(0.75)
    assert stats.total.duration_p50.ToTimedelta().total_seconds() > 0
    assert stats.total.queue_wait_p95.ToTimedelta() >= stats.total.queue_wait_p50.ToTimedelta()
    assert stats.total.queue_wait_p50.ToTimedelta().total_seconds() > 0
    by_pipeline = {figures.pipeline: figures for figures in stats.pipelines}
    assert sorted(by_pipeline) == ["ocr+scenes", "probe"]
    assert [c.count for c in by_pipeline["ocr+scenes"].counts] == [1]
    assert by_pipeline["ocr+scenes"].queue_wait_p50.ToTimedelta().total_seconds() == 0
    assert by_pipeline["probe"].success_rate == pytest.approx(0.75)
    assert queued.job_id  # counted above as the one QUEUED job

    # A window before any of them counts nothing.
    empty = await job_service.stub.GetStats(js.GetStatsRequest(window={"nanos": 1000}))
    assert list(empty.total.counts) == [] and empty.total.success_rate == 0


@pytest.mark.parametrize("seconds", [-1, 31 * 24 * 3600])
async def test_get_stats_refuses_a_window_out_of_range(job_service, seconds):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await job_service.stub.GetStats(js.GetStatsRequest(window={"seconds": seconds}))
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "window" in error.violations


async def test_get_stats_refuses_a_tenant_name_longer_than_any_tenant(job_service):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await job_service.stub.GetStats(js.GetStatsRequest(tenant="t" * 65))
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "tenant" in error.violations
