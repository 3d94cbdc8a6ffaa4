"""SubmitVideo and GetStatus on a real server: success, idempotency, and every
refusal, each leaving nothing behind."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest
from google.protobuf import json_format

from videojobs.jobservice.limits import WRITE_BATCH_BYTES
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import rich_error
from support.uploads import chunks, header, submit


async def _stream(*messages):
    for message in messages:
        yield message


async def _refused(stub, *messages) -> object:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitVideo(_stream(*messages))
    return rich_error(caught.value)


async def _nothing_stored(service) -> None:
    stored = [info.key.value for info in service.storage.list()]
    assert stored == [], f"a refused upload left {stored}"
    listed = await service.stub.ListJobs(js.ListJobsRequest())
    assert list(listed.jobs) == []


async def test_submit_creates_a_queued_job_with_its_input_stored(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4, file_name="My Clip.MP4")
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert len(job.job_id) == 32
    assert job.attempt == 1
    assert job.pipeline == "probe"
    assert job.input_key == f"jobs/{job.job_id}/input/source.mp4"
    assert job.input_size_bytes == len(sample_mp4)
    assert job.input_sha256 == hashlib.sha256(sample_mp4).hexdigest()
    assert job.file_name == "My Clip.MP4"
    # Stored normalised: each pipeline's parameters under its name, defaults filled in.
    assert json_format.MessageToDict(job.parameters) == {
        "probe": {"count_frames": False, "verify_frames": 3.0}
    }
    assert list(job.pipelines) == ["probe"]
    stored = job_service.storage
    with stored.open_read(__import__("videojobs.storage").storage.StorageKey(job.input_key)) as f:
        assert f.read() == sample_mp4
    status = (await job_service.stub.GetStatus(js.GetStatusRequest(job_id=job.job_id))).job
    assert status == job


async def test_submit_without_size_or_hash_in_tiny_chunks(job_service, sample_mp4):
    messages = [header(), *chunks(sample_mp4, size=1000)]
    response = await job_service.stub.SubmitVideo(_stream(*messages))
    assert response.job.input_size_bytes == len(sample_mp4)


async def test_first_message_must_be_the_header(job_service, sample_mp4):
    error = await _refused(job_service.stub, *chunks(sample_mp4))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "HEADER_MISSING"
    assert "header" in error.violations
    await _nothing_stored(job_service)


async def test_empty_stream_is_refused(job_service):
    error = await _refused(job_service.stub)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "header" in error.violations


async def test_repeated_header_is_refused(job_service, sample_mp4):
    parts = chunks(sample_mp4)
    error = await _refused(job_service.stub, header(), parts[0], header(), *parts[1:])
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "HEADER_REPEATED"
    assert "header" in error.violations
    await _nothing_stored(job_service)


@pytest.mark.parametrize(
    ("fields", "violation"),
    [
        ({"pipeline": "nope"}, "header.pipeline"),
        ({"pipeline": ""}, "header.pipeline"),
        ({"file_name": ""}, "header.file_name"),
        ({"file_name": "../../etc/passwd"}, "header.file_name"),
        ({"file_name": "C:\\videos\\a.mp4"}, "header.file_name"),
        ({"parameters": {"verify_frames": "many"}}, "header.parameters.verify_frames"),
        ({"parameters": {"verify_frames": 2.5}}, "header.parameters.verify_frames"),
        ({"parameters": {"colour": True}}, "header.parameters.colour"),
        ({"request_id": "has space"}, "header.request_id"),
        ({"expected_sha256": "XYZ"}, "header.expected_sha256"),
        ({"expected_size_bytes": -1}, "header.expected_size_bytes"),
    ],
)
async def test_bad_header_fields_are_named(job_service, sample_mp4, fields, violation):
    error = await _refused(job_service.stub, header(**fields), *chunks(sample_mp4))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert violation in error.violations, error.violations
    await _nothing_stored(job_service)


async def test_size_mismatch(job_service, sample_mp4):
    error = await _refused(
        job_service.stub, header(expected_size_bytes=len(sample_mp4) + 1), *chunks(sample_mp4)
    )
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(len(sample_mp4)) in error.violations["header.expected_size_bytes"]
    await _nothing_stored(job_service)


async def test_sha256_mismatch(job_service, sample_mp4):
    wrong = hashlib.sha256(b"something else").hexdigest()
    error = await _refused(job_service.stub, header(expected_sha256=wrong), *chunks(sample_mp4))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert hashlib.sha256(sample_mp4).hexdigest() in error.violations["header.expected_sha256"]
    await _nothing_stored(job_service)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"this is a plain text file, not a video\n" * 100, "NOT_A_VIDEO"),
        (bytes(range(256)) * 64, "NOT_A_VIDEO"),
        (b"\x89PNG\r\n\x1a\n" + bytes(2000), "UNSUPPORTED_CONTAINER"),
        (b"#EXTM3U\n#EXTINF:1,\nhttp://127.0.0.1:9/x.ts\n" + b"G" * 4000, "UNSUPPORTED_CONTAINER"),
        (b"ffconcat version 1.0\nfile 'a.mp4'\n", "UNSUPPORTED_CONTAINER"),
        # A real container header followed by garbage: refused after the last byte.
        (b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 40, "NOT_A_VIDEO"),
    ],
    ids=["text", "noise", "png-header", "hls", "ffconcat", "mp4-header-then-garbage"],
)
async def test_bytes_that_are_not_a_video_are_refused(job_service, payload, reason):
    error = await _refused(job_service.stub, header(), *chunks(payload))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == reason
    assert "chunk" in error.violations
    await _nothing_stored(job_service)


async def test_zero_bytes_are_refused(job_service):
    error = await _refused(job_service.stub, header())
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "no bytes" in error.violations["chunk"]
    await _nothing_stored(job_service)


async def test_upload_over_the_limit_is_resource_exhausted(start_job_service, sample_mp4):
    service = await start_job_service(max_upload_bytes=len(sample_mp4) - 1)
    error = await _refused(service.stub, header(), *chunks(sample_mp4))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "UPLOAD_TOO_LARGE"
    assert error.metadata["max_upload_bytes"] == str(len(sample_mp4) - 1)
    await _nothing_stored(service)
    # Announced size over the limit is refused before any byte is read.
    error = await _refused(service.stub, header(expected_size_bytes=len(sample_mp4)))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_broken_off_upload_leaves_nothing(job_service, sample_mp4):
    gate = asyncio.Event()

    async def stream():
        yield header()
        yield js.SubmitVideoRequest(chunk=sample_mp4[:5000])
        # More than one write batch: the server starts writing (a smaller
        # upload stays in memory until it is complete).
        yield js.SubmitVideoRequest(chunk=bytes(WRITE_BATCH_BYTES))
        gate.set()
        await asyncio.Event().wait()  # never finishes: the client gives up

    call = job_service.stub.SubmitVideo(stream())
    await gate.wait()

    # The server has seen the header and a chunk; now the client goes away.
    async def partial_write_exists():
        return any(p.is_file() for p in (job_service.data_dir / "storage" / ".partial").iterdir())

    from support.waiting import eventually

    await eventually(partial_write_exists, what="the server to start writing")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    async def cleaned_up():
        partial = job_service.data_dir / "storage" / ".partial"
        return not any(p.is_file() for p in partial.rglob("*"))

    await eventually(cleaned_up, what="the partial write to be removed")
    await _nothing_stored(job_service)


async def test_repeated_request_id_returns_the_same_job(job_service, sample_mp4):
    first = await submit(job_service.stub, sample_mp4, request_id="upload-42")
    again = await submit(job_service.stub, sample_mp4, request_id="upload-42")
    assert again.job_id == first.job_id
    assert again.request_id == "upload-42"
    listed = await job_service.stub.ListJobs(js.ListJobsRequest())
    assert [j.job_id for j in listed.jobs] == [first.job_id]
    stored = [info.key.value for info in job_service.storage.list()]
    assert stored == [first.input_key]


async def test_request_id_reused_for_other_content_is_refused(job_service, sample_mp4):
    first = await submit(job_service.stub, sample_mp4, request_id="upload-43")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit(
            job_service.stub, sample_mp4, request_id="upload-43", parameters={"count_frames": True}
        )
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.ALREADY_EXISTS
    assert error.reason == "REQUEST_ID_REUSED"
    assert error.metadata["job_id"] == first.job_id
    stored = [info.key.value for info in job_service.storage.list()]
    assert stored == [first.input_key]


async def test_get_status_errors(job_service):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await job_service.stub.GetStatus(js.GetStatusRequest(job_id="0" * 32))
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert error.reason == "JOB_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await job_service.stub.GetStatus(js.GetStatusRequest(job_id="../etc"))
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "job_id" in error.violations
