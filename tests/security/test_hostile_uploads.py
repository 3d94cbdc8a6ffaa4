"""Uploads as an attacker sends them, against a real videojobs-server (and a
real worker where the attack targets the decoder)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.attacks import (
    CountingHttpServer,
    ffconcat_list,
    files_under,
    hls_playlist_with_ts_body,
    transport_stream,
)
from support.grpc_status import rich_error
from support.sync_api import Api
from support.videos import write_sample_video

# Generous for a loaded 2-core machine; the mechanisms under test act in
# well under a second.
CALL_TIMEOUT = 30.0


def _upload(api: Api, data: bytes, *, file_name: str = "clip.mp4", **header_fields):
    header = js.UploadHeader(
        file_name=file_name,
        expected_size_bytes=len(data),
        expected_sha256=hashlib.sha256(data).hexdigest(),
        **header_fields,
    )
    if "pipeline" not in header_fields and "pipelines" not in header_fields:
        header.pipeline = "probe"
    messages = [js.SubmitVideoRequest(header=header)] + [
        js.SubmitVideoRequest(chunk=data[i : i + 65536]) for i in range(0, len(data), 65536)
    ]
    return api.stub.SubmitVideo(iter(messages), timeout=CALL_TIMEOUT, wait_for_ready=True).job


def _refusal(api: Api, data: bytes, **header_fields):
    with pytest.raises(grpc.RpcError) as raised:
        _upload(api, data, **header_fields)
    return rich_error(raised.value)


def _stored_files(stack) -> list[str]:
    return files_under(stack.data_dir / "storage")


def test_playlists_and_concat_lists_are_refused_at_upload(stack, tmp_path: Path) -> None:
    stack.start_server()
    api = Api(stack.address)
    victim = _upload(api, transport_stream(tmp_path / "victim.ts"))
    ts_body = transport_stream(tmp_path / "body.ts")
    attacks = {
        "hls": hls_playlist_with_ts_body(
            [f"../../{victim.job_id}/input/source.ts", "http://127.0.0.1:9/x.mp4"], ts_body
        ),
        "hls behind a byte-order mark": b"\xef\xbb\xbf"
        + hls_playlist_with_ts_body(["a.ts"], ts_body),
        "ffconcat": ffconcat_list([f"../../{victim.job_id}/input/source.ts"]) + ts_body,
        "dash": b'<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011">'
        + b" " * 5000
        + b"</MPD>",
    }
    for name, payload in attacks.items():
        error = _refusal(api, payload, file_name="source.m3u8")
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, name
        assert error.reason in ("UNSUPPORTED_CONTAINER", "NOT_A_VIDEO"), (name, error)
    # Only the victim's own input is stored; nothing of the attacks, not even
    # a temporary file.
    assert _stored_files(stack) == [victim.input_key]
    api.close()


def test_a_worker_never_follows_a_playlist_even_in_a_job_from_before_formats_were_recorded(
    stack, tmp_path: Path
) -> None:
    """A job accepted by an older version may hold a playlist under a
    `.m3u8` key. The worker identifies the format from the bytes (the job
    records none) and refuses it: no HTTP request, no other job's frames."""
    import asyncio

    from videojobs.jobservice.store import Database
    from videojobs.jobservice.submit import SubmitLimits, SubmitService, UploadHeader
    from videojobs.pipelines import builtin_catalogue
    from videojobs.storage import StorageKey, open_blob_store
    from videojobs.storage.blobstore import put_bytes

    stack.start_server()
    api = Api(stack.address)
    victim = _upload(api, transport_stream(tmp_path / "victim.ts"), pipeline="probe")
    stack.server.terminate()
    with CountingHttpServer() as http_server:
        ts_body = transport_stream(tmp_path / "body.ts")
        playlist = hls_playlist_with_ts_body(
            [f"../../{victim.job_id}/input/source.ts", f"{http_server.url}/x.ts"], ts_body
        )

        async def plant_legacy_job() -> str:
            database = Database(f"sqlite+aiosqlite:///{stack.data_dir / 'videojobs.db'}")
            store = open_blob_store(str(stack.data_dir / "storage"))
            service = SubmitService(database, store, builtin_catalogue(), SubmitLimits())
            plan = service.validate_header(UploadHeader(file_name="x.m3u8", pipeline="thumbnails"))
            job_id = "f" * 32
            key = StorageKey(f"jobs/{job_id}/input/source.m3u8")
            put_bytes(store, key, playlist)
            from videojobs.pipelines.containers import ContainerFormat

            legacy = ContainerFormat("", "", ".m3u8", "as stored by an older version")
            job, _ = await service._create_job(
                UploadHeader(file_name="x.m3u8", pipeline="thumbnails", max_attempts=1),
                plan,
                job_id,
                key,
                legacy,
                len(playlist),
                hashlib.sha256(playlist).hexdigest(),
            )
            await database.dispose()
            return job.job_id

        legacy_job_id = asyncio.run(plant_legacy_job())
        stack.start_server()
        stack.start_worker("w1")
        job = api.wait_terminal(legacy_job_id)
        assert job.state == job_pb2.JOB_STATE_FAILED
        assert "playlist" in job.error.message
        assert http_server.requests == []
    api.close()


def test_garbage_is_refused_before_it_is_stored(stack) -> None:
    """4 GiB of random bytes used to be stored in full before NOT_A_VIDEO; now
    the first bytes decide. The client's generator counts what it was asked
    for: far less than the 256 MiB it would send."""
    stack.start_server()
    api = Api(stack.address)
    produced = 0
    chunk = os.urandom(1024 * 1024)

    def requests():
        nonlocal produced
        yield js.SubmitVideoRequest(header=js.UploadHeader(file_name="x.mp4", pipeline="probe"))
        for _ in range(256):
            produced += len(chunk)
            yield js.SubmitVideoRequest(chunk=chunk)

    with pytest.raises(grpc.RpcError) as raised:
        api.stub.SubmitVideo(requests(), timeout=CALL_TIMEOUT, wait_for_ready=True)
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.reason == "NOT_A_VIDEO"
    print(f"random bytes: refused after the client produced {produced / 2**20:.0f} MiB")
    assert produced < 64 * 1024 * 1024
    assert _stored_files(stack) == []
    api.close()


def test_an_idle_upload_is_closed_and_leaves_nothing(stack, tmp_path: Path) -> None:
    stack.start_server(VIDEOJOBS_UPLOAD_IDLE_TIMEOUT="1")
    api = Api(stack.address)
    video = tmp_path / "v.mp4"
    write_sample_video(video, width=160, height=120, frames=10)
    data = video.read_bytes()
    release = threading.Event()
    errors: list[grpc.RpcError] = []

    def stalled_upload() -> None:
        def requests():
            yield js.SubmitVideoRequest(header=js.UploadHeader(file_name="v.mp4", pipeline="probe"))
            yield js.SubmitVideoRequest(chunk=data[: len(data) // 2])
            release.wait(60)  # then nothing: the client holds the stream open

        try:
            api.stub.SubmitVideo(requests(), timeout=CALL_TIMEOUT, wait_for_ready=True)
        except grpc.RpcError as exc:
            errors.append(exc)

    started = time.monotonic()
    threads = [threading.Thread(target=stalled_upload) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CALL_TIMEOUT)
    elapsed = time.monotonic() - started
    release.set()
    assert len(errors) == 20
    for error in errors:
        details = rich_error(error)
        assert details.code == grpc.StatusCode.DEADLINE_EXCEEDED, details
        assert details.reason == "UPLOAD_IDLE_TIMEOUT"
    print(f"20 stalled uploads closed after {elapsed:.2f}s (idle timeout 1 s)")
    assert _stored_files(stack) == []
    api.close()


def test_concurrent_uploads_are_capped_per_peer(stack, tmp_path: Path) -> None:
    stack.start_server(VIDEOJOBS_MAX_UPLOADS_PER_PEER="2", VIDEOJOBS_UPLOAD_IDLE_TIMEOUT="20")
    api = Api(stack.address)
    release = threading.Event()
    holding = threading.Barrier(3)

    def held_upload() -> None:
        def requests():
            yield js.SubmitVideoRequest(header=js.UploadHeader(file_name="v.mp4", pipeline="probe"))
            holding.wait(30)
            release.wait(30)

        try:
            api.stub.SubmitVideo(requests(), timeout=CALL_TIMEOUT, wait_for_ready=True)
        except grpc.RpcError:
            pass

    threads = [threading.Thread(target=held_upload) for _ in range(2)]
    for thread in threads:
        thread.start()
    holding.wait(30)
    try:
        # The two uploads hold their slots; a third from this peer is refused
        # (retried until the server has admitted the first two).
        def third_is_refused():
            try:
                _upload(api, b"\x00" * 10)
            except grpc.RpcError as exc:
                details = rich_error(exc)
                return details if details.reason == "TOO_MANY_UPLOADS" else None
            return None

        from support.waiting import eventually_sync

        details = eventually_sync(third_is_refused, timeout=20, what="the upload cap")
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.metadata["scope"] == "peer"
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
    api.close()


@pytest.mark.parametrize(
    ("header_fields", "field"),
    [
        (
            {"pipeline": "detect", "parameters": {"classes": "qr_code," * 150_000}},
            "header.parameters",
        ),
        ({"pipeline": "probe", "parameters": {"k" * 1_000_000: 1}}, "header.parameters"),
        ({"pipelines": [f"nope{i}" for i in range(1000)]}, "header.pipelines"),
        ({"pipeline": "x" * 1_000_000}, "header.pipeline"),
        ({"pipeline": "probe", "file_name": "clip\u202egpj.mp4"}, "header.file_name"),
        ({"pipeline": "probe", "file_name": "a\x9b31mb.mp4"}, "header.file_name"),
        ({"pipeline": "probe", "file_name": "a\u200bb.mp4"}, "header.file_name"),
        ({"pipeline": "probe", "request_id": "r" * 100_000}, "header.request_id"),
    ],
    ids=[
        "1.2MB-classes",
        "1MB-key",
        "1000-pipelines",
        "1MB-pipeline",
        "bidi",
        "C1",
        "zwsp",
        "request-id",
    ],
)
def test_unbounded_strings_are_refused_with_short_details(stack, header_fields, field) -> None:
    stack.start_server()
    api = Api(stack.address)
    parameters = header_fields.pop("parameters", None)
    header = js.UploadHeader(file_name=header_fields.pop("file_name", "clip.mp4"), **header_fields)
    if parameters:
        struct = struct_pb2.Struct()
        struct.update(parameters)
        header.parameters.CopyFrom(struct)
    with pytest.raises(grpc.RpcError) as raised:
        api.stub.SubmitVideo(
            iter([js.SubmitVideoRequest(header=header)]), timeout=CALL_TIMEOUT, wait_for_ready=True
        )
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert any(name.startswith(field) for name in error.violations), error.violations
    trailer_bytes = sum(len(v) for _, v in raised.value.trailing_metadata() or ())
    assert trailer_bytes < 8 * 1024, f"error details of {trailer_bytes} bytes"
    # Nothing was stored and everyone can still list jobs.
    assert api.stub.ListJobs(js.ListJobsRequest(), timeout=CALL_TIMEOUT).jobs == []
    api.close()


def test_forged_page_tokens_and_control_characters_in_reasons_are_invalid_argument(
    stack, sample_mp4: bytes
) -> None:
    import base64

    stack.start_server()
    api = Api(stack.address)
    job = _upload(api, sample_mp4)
    _upload(api, sample_mp4)
    real = api.stub.ListJobs(js.ListJobsRequest(page_size=1), timeout=CALL_TIMEOUT)
    assert real.next_page_token
    forged = [
        base64.urlsafe_b64encode(b'{"p":1e400,"f":"x"}').decode(),
        base64.urlsafe_b64encode(b'{"p":' + b"9" * 31 + b',"f":"x"}').decode(),
        base64.urlsafe_b64encode(b"[" * 100_000).decode(),
        real.next_page_token[:-3] + "AAA",
        "x" * 100_000,
    ]
    for token in forged:
        with pytest.raises(grpc.RpcError) as raised:
            api.stub.ListJobs(js.ListJobsRequest(page_token=token), timeout=CALL_TIMEOUT)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, token[:40]
    with pytest.raises(grpc.RpcError) as raised:
        api.stub.CancelJob(
            js.CancelJobRequest(job_id=job.job_id, reason="\x1b[2J\x1b]0;pwned\x07"),
            timeout=CALL_TIMEOUT,
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "incident" not in (raised.value.details() or "")
    api.close()
