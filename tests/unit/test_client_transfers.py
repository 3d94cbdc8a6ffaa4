"""The pure logic behind reads, downloads and resumable uploads: where a key
goes on disk (and which keys are refused), how a broken Read resumes, how a
staged upload's Write stream is built from the committed size, and the retry
policy's delays."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path, PurePosixPath

import grpc
import pytest
from google.rpc import status_pb2

from videojobs.client import RetryPolicy, UnsafeKeyError, UploadFile, VideoJobsError
from videojobs.client.blobs import (
    AtomicFile,
    ReadCursor,
    attempt_prefix,
    download_target,
    parse_result_document,
    plan_download,
    relative_download_path,
)
from videojobs.client.retry import is_transient, stalled_error, write_may_resume
from videojobs.client.uploads import ResumableUpload, new_request_id, new_upload_key
from videojobs.v1 import blob_service_pb2, job_pb2

JOB_ID = "0123456789abcdef" * 2
PREFIX = f"jobs/{JOB_ID}/attempts/2"


# -- where keys go ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "relative"),
    [
        (f"{PREFIX}/results.json", "results.json"),
        (f"{PREFIX}/thumbnails/0000.jpg", "thumbnails/0000.jpg"),
        (f"{PREFIX}/a/b/c d.txt", "a/b/c d.txt"),
        (f"{PREFIX}/Grüße.json", "Grüße.json"),
    ],
)
def test_a_key_maps_to_its_path_below_the_attempt_prefix(key: str, relative: str) -> None:
    assert relative_download_path(key, PREFIX) == PurePosixPath(relative)


@pytest.mark.parametrize(
    "key",
    [
        f"jobs/{JOB_ID}/attempts/1/results.json",  # another attempt
        f"{PREFIX}x/results.json",  # a sibling sharing the prefix's text
        f"jobs/{JOB_ID}/input/source.mp4",
        f"{PREFIX}/../../../../etc/passwd",
        f"{PREFIX}/a/./b.json",
        f"{PREFIX}/a//b.json",
        f"{PREFIX}/",
        f"{PREFIX}/a\\..\\..\\b.json",
        f"{PREFIX}/a\x00.json",
        f"{PREFIX}/\x1b[31mred.json",
        f"{PREFIX}/evil\u202egpj.exe",
        PREFIX,
    ],
)
def test_keys_that_could_leave_the_directory_are_refused(key: str) -> None:
    with pytest.raises(UnsafeKeyError) as raised:
        relative_download_path(key, PREFIX)
    assert raised.value.code == grpc.StatusCode.INTERNAL
    assert raised.value.reason == "UNSAFE_KEY"


def test_the_attempt_prefix_is_the_result_keys_folder() -> None:
    assert attempt_prefix(f"{PREFIX}/results.json") == PREFIX
    with pytest.raises(UnsafeKeyError):
        attempt_prefix("results.json")


def test_download_target_creates_folders_inside_the_directory(tmp_path: Path) -> None:
    target = download_target(tmp_path, PurePosixPath("thumbnails/deep/0000.jpg"))
    assert target == tmp_path / "thumbnails" / "deep" / "0000.jpg"
    assert target.parent.is_dir()


def test_download_target_refuses_a_folder_that_is_a_symlink_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    directory = tmp_path / "download"
    directory.mkdir()
    (directory / "thumbnails").symlink_to(outside)
    with pytest.raises(UnsafeKeyError):
        download_target(directory, PurePosixPath("thumbnails/0000.jpg"))
    assert list(outside.iterdir()) == []


def _job(state: int = job_pb2.JOB_STATE_SUCCEEDED, **fields) -> job_pb2.Job:
    return job_pb2.Job(job_id=JOB_ID, state=state, **fields)


def test_a_download_is_the_document_then_each_artifact_once() -> None:
    job = _job(
        output_key=f"{PREFIX}/results.json",
        artifacts=[
            job_pb2.Artifact(key=f"{PREFIX}/thumbnails/0001.jpg", size_bytes=10),
            job_pb2.Artifact(key=f"{PREFIX}/thumbnails/0000.jpg", size_bytes=0),
            job_pb2.Artifact(key=f"{PREFIX}/thumbnails/0001.jpg", size_bytes=10),
        ],
    )
    items = plan_download(job)
    assert [(str(i.relative_path), i.expected_size) for i in items] == [
        ("results.json", None),
        ("thumbnails/0001.jpg", 10),
        ("thumbnails/0000.jpg", 0),
    ]


def test_a_download_with_one_bad_key_is_refused_whole() -> None:
    job = _job(
        output_key=f"{PREFIX}/results.json",
        artifacts=[job_pb2.Artifact(key=f"jobs/{JOB_ID}/attempts/1/old.jpg")],
    )
    with pytest.raises(UnsafeKeyError):
        plan_download(job)


@pytest.mark.parametrize(
    ("state", "name"),
    [
        (job_pb2.JOB_STATE_QUEUED, "QUEUED"),
        (job_pb2.JOB_STATE_RUNNING, "RUNNING"),
        (job_pb2.JOB_STATE_CANCELLED, "CANCELLED"),
    ],
)
def test_a_job_that_did_not_succeed_has_no_result(state: int, name: str) -> None:
    with pytest.raises(VideoJobsError) as raised:
        plan_download(_job(state))
    error = raised.value
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "JOB_NOT_SUCCEEDED"
    assert error.metadata == {"job_id": JOB_ID, "state": name}
    assert name in error.message


def test_a_failed_job_says_why_it_has_no_result() -> None:
    failed = _job(
        job_pb2.JOB_STATE_FAILED,
        error=status_pb2.Status(code=3, message="the input does not decode"),
    )
    with pytest.raises(VideoJobsError) as raised:
        plan_download(failed)
    assert "the input does not decode" in raised.value.message
    assert raised.value.metadata["state"] == "FAILED"


def test_the_result_document_must_be_a_json_object() -> None:
    assert parse_result_document(b'{"b": 1, "a": [2]}', "k") == {"b": 1, "a": [2]}
    assert list(parse_result_document(b'{"b": 1, "a": 2}', "k")) == ["b", "a"]
    for data in (b"[1, 2]", b"not json", b"\xff\xfe"):
        with pytest.raises(VideoJobsError) as raised:
            parse_result_document(data, "k")
        assert raised.value.code == grpc.StatusCode.DATA_LOSS
        assert raised.value.reason == "RESULT_NOT_JSON"


def test_an_atomic_file_appears_only_when_committed(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    target.write_bytes(b"old")
    file = AtomicFile(target)
    file.write(b"new ")
    file.write(b"bytes")
    assert target.read_bytes() == b"old"
    assert file.commit() == target
    assert target.read_bytes() == b"new bytes"
    broken = AtomicFile(target)
    broken.write(b"half")
    broken.discard()
    assert target.read_bytes() == b"new bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


# -- resuming reads ----------------------------------------------------------------


def _response(data: bytes, size: int = 0) -> blob_service_pb2.ReadResponse:
    return blob_service_pb2.ReadResponse(data=data, size_bytes=size)


def test_a_broken_read_resumes_from_the_byte_it_reached() -> None:
    cursor = ReadCursor("k")
    assert cursor.request() == blob_service_pb2.ReadRequest(key="k")
    assert cursor.accept(_response(b"abc", size=10)) == b"abc"
    assert cursor.accept(_response(b"de")) == b"de"
    # The stream broke: the next one starts at byte 5, for the rest.
    assert cursor.request() == blob_service_pb2.ReadRequest(key="k", read_offset=5)
    cursor.accept(_response(b"fghij", size=10))
    assert cursor.finished
    cursor.check_complete()


def test_a_ranged_read_resumes_with_what_is_left_of_its_limit() -> None:
    cursor = ReadCursor("k", offset=100, limit=50)
    assert cursor.request() == blob_service_pb2.ReadRequest(key="k", read_offset=100, read_limit=50)
    cursor.accept(_response(b"x" * 20, size=1000))
    assert cursor.request() == blob_service_pb2.ReadRequest(key="k", read_offset=120, read_limit=30)
    cursor.accept(_response(b"x" * 30, size=1000))
    assert cursor.finished and cursor.end == 150


def test_an_object_that_changes_size_or_ends_early_is_data_loss() -> None:
    cursor = ReadCursor("k")
    cursor.accept(_response(b"abc", size=10))
    cursor.request()
    with pytest.raises(VideoJobsError) as raised:
        cursor.accept(_response(b"d", size=11))
    assert (raised.value.code, raised.value.reason) == (grpc.StatusCode.DATA_LOSS, "OBJECT_CHANGED")
    short = ReadCursor("k")
    short.accept(_response(b"abc", size=10))
    with pytest.raises(VideoJobsError) as raised:
        short.check_complete()
    assert raised.value.reason == "SIZE_MISMATCH"
    assert raised.value.metadata["actual_bytes"] == "3"


def test_a_read_refuses_more_bytes_than_the_object_holds() -> None:
    cursor = ReadCursor("k")
    with pytest.raises(VideoJobsError):
        cursor.accept(_response(b"abcdef", size=4))


# -- resumable uploads ---------------------------------------------------------------


@pytest.fixture
def upload(tmp_path: Path) -> UploadFile:
    path = tmp_path / "clip.mp4"
    path.write_bytes(os.urandom(10_000))
    return UploadFile.describe(path)


def test_staged_upload_keys_and_request_ids_are_fresh_and_valid() -> None:
    keys = {new_upload_key() for _ in range(100)}
    assert len(keys) == 100
    # The server's rule for staged uploads: uploads/{16-64 of [A-Za-z0-9_-]}.
    assert all(re.fullmatch(r"uploads/[0-9a-f]{32}", key) for key in keys)
    assert re.fullmatch(r"[0-9a-f]{32}", new_request_id())


def test_a_write_stream_is_the_file_from_the_committed_size(upload: UploadFile) -> None:
    progress: list[tuple[int, int]] = []
    session = ResumableUpload(
        upload, "uploads/" + "a" * 32, chunk_size=3000, on_progress=lambda *p: progress.append(p)
    )
    session.start()
    first = list(session.requests())
    assert [m.write_offset for m in first] == [0, 3000, 6000, 9000]
    assert [m.finish_write for m in first] == [False, False, False, True]
    assert all(m.key == session.key for m in first)
    assert b"".join(m.data for m in first) == upload.path.read_bytes()
    # The server kept 4500 bytes of it: the next stream sends only the rest.
    assert session.record_status(4500, False)
    second = list(session.requests())
    assert [m.write_offset for m in second] == [4500, 7500]
    assert b"".join(m.data for m in second) == upload.path.read_bytes()[4500:]
    # Progress went to the end, stepped back to what was committed, went on.
    sent = [done for done, _ in progress]
    assert sent[:5] == [0, 3000, 6000, 9000, 10_000]
    assert sent[5:] == [4500, 7500, 10_000]
    assert {total for _, total in progress} == {10_000}
    assert session.streams == 2


def test_a_write_whose_bytes_are_all_committed_sends_only_the_finish(upload: UploadFile) -> None:
    session = ResumableUpload(upload, "uploads/" + "b" * 32, chunk_size=4096)
    session.record_status(upload.size, False)
    assert [(m.write_offset, m.data, m.finish_write) for m in session.requests()] == [
        (upload.size, b"", True)
    ]


def test_the_server_cannot_hold_more_than_the_file(upload: UploadFile) -> None:
    session = ResumableUpload(upload, "uploads/" + "c" * 32, chunk_size=4096)
    assert not session.record_status(0, False)
    for committed, complete in ((upload.size + 1, False), (upload.size - 1, True)):
        with pytest.raises(VideoJobsError) as raised:
            session.record_status(committed, complete)
        assert raised.value.code == grpc.StatusCode.DATA_LOSS
    assert session.record_status(upload.size, True) and session.complete


def test_a_file_that_shrinks_while_uploading_is_a_read_error(upload: UploadFile) -> None:
    session = ResumableUpload(upload, "uploads/" + "d" * 32, chunk_size=4096)
    upload.path.write_bytes(b"short")
    with pytest.raises(OSError):
        list(session.requests())
    assert session.read_error is not None


class CountedFile:
    """Counts the bytes read from one file through ResumableUpload."""

    def __init__(self, monkeypatch, session: ResumableUpload) -> None:
        self.bytes_read = 0
        opened = session._open

        def counting_open():
            file = opened()
            read = file.read

            def counted_read(size=-1):
                data = read(size)
                self.bytes_read += len(data)
                return data

            file.read = counted_read
            return file

        monkeypatch.setattr(session, "_open", counting_open)


def test_the_upload_is_hashed_as_it_is_read_to_be_sent(tmp_path: Path, monkeypatch) -> None:
    """Each byte is hashed once, in order, from the reads that send it,
    across a broken stream and its resumption; where the streams skipped
    bytes, the hash goes on by reading the file from the first of them."""
    path = tmp_path / "clip.mp4"
    data = os.urandom(10_000)
    path.write_bytes(data)
    measured = UploadFile.measure(path)
    assert (measured.size, measured.sha256) == (10_000, "")
    session = ResumableUpload(measured, "uploads/" + "e" * 32, chunk_size=3000)
    reads = CountedFile(monkeypatch, session)
    list(session.requests())
    session.record_status(4500, False)  # the server kept less than was sent
    list(session.requests())
    assert session.verified_sha256() == hashlib.sha256(data).hexdigest()
    assert reads.bytes_read == 10_000 + (10_000 - 4500)

    # The server says it holds bytes this session never read: the hash
    # reads the file again from there.
    skipping = ResumableUpload(measured, "uploads/" + "f" * 32, chunk_size=3000)
    reads = CountedFile(monkeypatch, skipping)
    skipping.record_status(6000, False)
    list(skipping.requests())
    assert skipping.verified_sha256() == hashlib.sha256(data).hexdigest()
    assert reads.bytes_read == 4000 + 10_000


def test_a_file_changed_while_it_was_uploaded_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(os.urandom(10_000))
    session = ResumableUpload(UploadFile.measure(path), "uploads/" + "g" * 32, chunk_size=3000)
    list(session.requests())
    # Same size, other bytes, a later modification time.
    path.write_bytes(os.urandom(10_000))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(OSError, match="changed while it was uploaded"):
        session.verified_sha256()


# -- retry policy -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_to_the_cap_with_equal_jitter() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=4.0, timeout=1000.0)
    low = policy.backoff(clock=FakeClock(), random_fraction=lambda: 0.0)
    high = policy.backoff(clock=FakeClock(), random_fraction=lambda: 1.0)
    assert [low.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert [high.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_retries_stop_after_the_window_without_progress() -> None:
    clock = FakeClock()
    backoff = RetryPolicy(initial_delay=1.0, max_delay=1.0, timeout=10.0).backoff(
        clock=clock, random_fraction=lambda: 1.0
    )
    delays = []
    while (delay := backoff.next_delay()) is not None:
        delays.append(delay)
        clock.now += delay
    # Ten one-second waits: the last ends exactly at the deadline.
    assert delays == [1.0] * 10
    # Progress starts a new window (and the delays from the start).
    backoff.progressed()
    assert backoff.next_delay() == 1.0


def test_the_last_delay_ends_at_the_deadline_and_retry_info_is_a_minimum() -> None:
    clock = FakeClock()
    backoff = RetryPolicy(initial_delay=0.1, max_delay=1.0, timeout=5.0).backoff(
        clock=clock, random_fraction=lambda: 0.5
    )
    assert backoff.next_delay(at_least=2.0) == 2.0
    clock.now = 4.5
    assert backoff.next_delay(at_least=3.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "fields",
    [
        {"initial_delay": -1.0},
        {"max_delay": float("inf")},
        {"multiplier": 0.5},
        {"initial_delay": 2.0, "max_delay": 1.0},
        {"stall_timeout": 0.0},
        {"timeout": float("nan")},
    ],
)
def test_a_nonsensical_policy_is_refused(fields: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**fields)


def _error(code: grpc.StatusCode, reason: str = "", fields: tuple[str, ...] = ()) -> VideoJobsError:
    return VideoJobsError(
        code, "x", reason=reason, field_violations=[(field, "d") for field in fields]
    )


@pytest.mark.parametrize(
    ("error", "resumes"),
    [
        (_error(grpc.StatusCode.UNAVAILABLE), True),
        (_error(grpc.StatusCode.DEADLINE_EXCEEDED, "UPLOAD_IDLE_TIMEOUT"), True),
        (stalled_error(60, "the upload stream"), True),
        (_error(grpc.StatusCode.ABORTED, "WRITE_IN_PROGRESS"), True),
        (_error(grpc.StatusCode.INVALID_ARGUMENT, fields=("write_offset",)), True),
        (_error(grpc.StatusCode.ALREADY_EXISTS, "UPLOAD_COMPLETE"), True),
        (_error(grpc.StatusCode.INVALID_ARGUMENT, "NOT_A_VIDEO", ("data",)), False),
        (_error(grpc.StatusCode.INVALID_ARGUMENT, fields=("write_offset", "key")), False),
        (_error(grpc.StatusCode.PERMISSION_DENIED, "KEY_NOT_WRITABLE"), False),
        (_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "UPLOAD_TOO_LARGE"), False),
        (_error(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"), False),
        (_error(grpc.StatusCode.CANCELLED), False),
    ],
)
def test_which_write_errors_resume(error: VideoJobsError, resumes: bool) -> None:
    assert write_may_resume(error) is resumes


def test_only_unavailable_deadlines_and_broken_transports_are_transient() -> None:
    assert is_transient(_error(grpc.StatusCode.UNAVAILABLE))
    assert is_transient(stalled_error(1, "x"))
    # gRPC's own INTERNAL (no ErrorInfo) when a stream breaks mid-write.
    assert is_transient(VideoJobsError(grpc.StatusCode.INTERNAL, "Internal error from Core"))
    assert write_may_resume(VideoJobsError(grpc.StatusCode.INTERNAL, "Internal error from Core"))
    # job-service's INTERNAL always carries a reason: a bug, not worth repeating.
    assert not is_transient(_error(grpc.StatusCode.INTERNAL, "INTERNAL"))
    assert not is_transient(_error(grpc.StatusCode.ABORTED))
