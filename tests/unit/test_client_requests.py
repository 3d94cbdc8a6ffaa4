"""Request building: the SubmitVideo upload stream, Struct conversion, job-state
names and ListJobs requests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from videojobs.client import (
    UploadFile,
    UploadRequestStream,
    job_state_name,
    parse_job_state,
    struct_to_dict,
    to_struct,
)
from videojobs.client.requests import build_list_request
from videojobs.v1 import job_pb2

CHUNK_SIZE = 1000


@pytest.fixture
def video_file(tmp_path: Path) -> Path:
    """A file whose size is not a multiple of the chunk size, so the last chunk is short."""
    path = tmp_path / "clip.mp4"
    path.write_bytes(os.urandom(3 * CHUNK_SIZE + 123))
    return path


def make_stream(path: Path, progress: list[tuple[int, int]] | None = None) -> UploadRequestStream:
    return UploadRequestStream(
        UploadFile.describe(path),
        pipeline="probe",
        parameters={"threshold": 0.5, "labels": ["a", "b"], "deep": {"on": True}},
        request_id="req-1",
        chunk_size=CHUNK_SIZE,
        on_progress=None
        if progress is None
        else lambda sent, total: progress.append((sent, total)),
    )


def check_requests(requests: list, path: Path) -> None:
    """Header first and only first; the chunks, in order, are exactly the file."""
    content = path.read_bytes()
    header_message, *chunk_messages = requests
    assert header_message.WhichOneof("payload") == "header"
    header = header_message.header
    assert header.file_name == "clip.mp4"
    assert header.pipeline == "probe"
    assert header.request_id == "req-1"
    assert header.expected_size_bytes == len(content)
    assert header.expected_sha256 == hashlib.sha256(content).hexdigest()
    assert struct_to_dict(header.parameters) == {
        "threshold": 0.5,
        "labels": ["a", "b"],
        "deep": {"on": True},
    }
    assert all(message.WhichOneof("payload") == "chunk" for message in chunk_messages)
    chunks = [message.chunk for message in chunk_messages]
    assert b"".join(chunks) == content
    assert [len(chunk) for chunk in chunks] == [CHUNK_SIZE] * 3 + [123]


def test_upload_file_describe_streams_size_and_sha256(video_file: Path) -> None:
    upload = UploadFile.describe(video_file, block_size=7)
    content = video_file.read_bytes()
    assert upload.size == len(content)
    assert upload.sha256 == hashlib.sha256(content).hexdigest()
    assert upload.path == video_file


def test_upload_file_describe_missing_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        UploadFile.describe(tmp_path / "missing.mp4")


def test_sync_upload_stream_sends_header_then_the_whole_file(video_file: Path) -> None:
    progress: list[tuple[int, int]] = []
    stream = make_stream(video_file, progress)
    check_requests(list(stream), video_file)
    total = video_file.stat().st_size
    assert progress == [(0, total), (1000, total), (2000, total), (3000, total), (total, total)]
    assert stream.bytes_sent == total
    assert stream.read_error is None


async def test_async_upload_stream_sends_the_same_requests(video_file: Path) -> None:
    progress: list[tuple[int, int]] = []
    stream = make_stream(video_file, progress)
    requests = [request async for request in stream]
    check_requests(requests, video_file)
    assert progress[-1] == (stream.upload.size, stream.upload.size)
    assert requests == list(make_stream(video_file))


def test_empty_file_gives_header_only(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    requests = list(make_stream(path))
    assert len(requests) == 1
    assert requests[0].header.expected_size_bytes == 0
    assert requests[0].header.expected_sha256 == hashlib.sha256(b"").hexdigest()


def test_file_gone_before_upload_is_kept_as_read_error(video_file: Path) -> None:
    stream = make_stream(video_file)
    video_file.unlink()
    requests = iter(stream)
    assert next(requests).WhichOneof("payload") == "header"
    with pytest.raises(FileNotFoundError):
        next(requests)
    assert isinstance(stream.read_error, FileNotFoundError)


@pytest.mark.parametrize("chunk_size", [0, -1, 4 * 1024 * 1024 + 1])
def test_chunk_size_out_of_range_is_refused(video_file: Path, chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        UploadRequestStream(
            UploadFile.describe(video_file), pipeline="probe", chunk_size=chunk_size
        )


def test_no_request_id_and_no_parameters_leave_fields_empty(video_file: Path) -> None:
    stream = UploadRequestStream(UploadFile.describe(video_file), pipeline="probe")
    header = next(iter(stream)).header
    assert header.request_id == ""
    assert not header.HasField("parameters") or not header.parameters.fields


def test_to_struct_round_trips_json_values() -> None:
    values = {"n": 3, "f": 0.25, "s": "x", "b": False, "none": None, "list": [1, "two"]}
    assert struct_to_dict(to_struct(values)) == values
    assert not to_struct(None).fields
    assert not to_struct({}).fields


def test_to_struct_refuses_what_struct_cannot_hold() -> None:
    with pytest.raises(TypeError):
        to_struct({1: "x"})
    with pytest.raises(ValueError):
        to_struct({"x": object()})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("queued", job_pb2.JOB_STATE_QUEUED),
        ("QUEUED", job_pb2.JOB_STATE_QUEUED),
        ("Running", job_pb2.JOB_STATE_RUNNING),
        ("JOB_STATE_SUCCEEDED", job_pb2.JOB_STATE_SUCCEEDED),
        ("job_state_failed", job_pb2.JOB_STATE_FAILED),
        (" cancelled ", job_pb2.JOB_STATE_CANCELLED),
        (job_pb2.JOB_STATE_RUNNING, job_pb2.JOB_STATE_RUNNING),
    ],
)
def test_parse_job_state_accepts_short_and_full_names(text: str | int, expected: int) -> None:
    assert parse_job_state(text) == expected


@pytest.mark.parametrize(
    "text", ["", "bogus", "unspecified", "JOB_STATE_UNSPECIFIED", "JOB_STATE_", 0, 99]
)
def test_parse_job_state_refuses_unknown_and_unspecified(text: str | int) -> None:
    with pytest.raises(ValueError, match="expected one of queued, running"):
        parse_job_state(text)


def test_job_state_name_is_short_and_survives_new_states() -> None:
    assert job_state_name(job_pb2.JOB_STATE_SUCCEEDED) == "SUCCEEDED"
    assert job_state_name(job_pb2.JOB_STATE_UNSPECIFIED) == "UNSPECIFIED"
    assert job_state_name(42) == "42"


def test_build_list_request_converts_state_names() -> None:
    request = build_list_request(
        states=["queued", job_pb2.JOB_STATE_FAILED], pipeline="probe", page_size=10, page_token="t"
    )
    assert list(request.states) == [job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_FAILED]
    assert (request.pipeline, request.page_size, request.page_token) == ("probe", 10, "t")
