"""Jobs of several pipelines over the API: validation at submit and the rule
that only a worker running all of a job's pipelines gets it."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import rich_error
from support.scripted_worker import ScriptedWorker
from support.uploads import chunks, header


async def _submit(stub, data, **fields):
    messages = [header(data=data, **fields), *chunks(data)]

    async def stream():
        for message in messages:
            yield message

    return (await stub.SubmitVideo(stream())).job


async def test_several_pipelines_in_one_job(job_service, sample_mp4):
    job = await _submit(
        job_service.stub,
        sample_mp4,
        pipeline="",
        pipelines=["scenes", "ocr"],
        parameters={"target_fps": 2, "ocr": {"min_confidence": 0.8}},
    )
    assert job.pipeline == "ocr+scenes"
    assert list(job.pipelines) == ["ocr", "scenes"]
    parameters = json_format.MessageToDict(job.parameters)
    assert parameters["ocr"]["min_confidence"] == 0.8
    assert parameters["sampling"]["target_fps"] == 2
    assert job.execution_timeout.ToTimedelta().total_seconds() == 1800  # ocr's default


@pytest.mark.parametrize(
    ("fields", "violation"),
    [
        ({"pipeline": "probe", "pipelines": ["ocr"]}, "header.pipelines"),
        ({"pipeline": "", "pipelines": ["ocr", "teleport"]}, "header.pipelines"),
        (
            # max_side is a parameter of both: which one is meant?
            {"pipeline": "", "pipelines": ["detect", "ocr"], "parameters": {"max_side": 512}},
            "header.parameters.max_side",
        ),
        (
            {"pipeline": "", "pipelines": ["ocr", "scenes"], "parameters": {"nope": 0.5}},
            "header.parameters.nope",
        ),
        (
            {"pipeline": "", "pipelines": ["detect"], "parameters": {"classes": "cars"}},
            "header.parameters.classes",
        ),
        (
            {"pipeline": "thumbnails", "parameters": {"mode": "sometimes"}},
            "header.parameters.mode",
        ),
    ],
)
async def test_bad_pipeline_sets_are_refused(job_service, sample_mp4, fields, violation):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _submit(job_service.stub, sample_mp4, **fields)
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violation in error.violations, error.violations


async def test_only_a_worker_running_every_pipeline_gets_the_job(job_service, sample_mp4):
    job = await _submit(job_service.stub, sample_mp4, pipeline="", pipelines=["scenes", "ocr"])
    async with ScriptedWorker(
        job_service.address, store=job_service.storage, worker_id="half", pipelines=("scenes",)
    ) as half:
        with pytest.raises(TimeoutError):
            await half.next("assignment", timeout=0.5)
        async with ScriptedWorker(
            job_service.address, worker_id="full", pipelines=("ocr", "probe", "scenes")
        ) as full:
            assignment = await full.next("assignment")
            assert assignment.job_id == job.job_id
            assert assignment.pipeline == "ocr+scenes"
    listed = await job_service.stub.ListJobs(js.ListJobsRequest(pipeline="ocr+scenes"))
    assert [j.job_id for j in listed.jobs] == [job.job_id]
