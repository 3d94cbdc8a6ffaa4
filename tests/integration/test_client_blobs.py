"""The client library's result and blob calls against a real job-service:
read_result, open_blob and download fetch exactly what a worker stored, keys
the caller may not read stay NOT_FOUND, and an upload whose connection is cut
(or stalls) mid-way resumes from the bytes the server committed.

Connections are broken by a TCP proxy the test runs between the client and
the server (support.tcp_proxy). Every test runs with the sync `JobClient` (in
a thread, so the test's event loop keeps serving) and the `AsyncJobClient`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from videojobs.client import AsyncJobClient, JobClient, RetryPolicy, VideoJobsError
from videojobs.stack.sample_video import write_frames
from videojobs.storage import StorageKey
from videojobs.storage.blobstore import put_bytes
from videojobs.v1 import job_pb2

from support.scripted_worker import ScriptedWorker
from support.tcp_proxy import TcpProxy
from support.waiting import eventually

# Quick retries for tests; the give-up window stays generous so a slow CI
# machine never turns a resumable break into a failure.
FAST_RETRY = RetryPolicy(initial_delay=0.05, max_delay=0.5, timeout=60.0, stall_timeout=2.0)

# A result document with what JSON round trips must keep: key order, unicode,
# nesting, numbers of both kinds, null.
DOCUMENT = {
    "pipelines": ["thumbnails"],
    "zeta": 1,
    "alpha": {"nested": [1, 2.5, None, True], "text": "Grüße, 東京 ✓"},
    "sections": {"thumbnails": {"count": 3}},
}


@pytest.fixture(params=["sync", "async"])
def client_kind(request) -> str:
    """Which client the test drives."""
    return request.param


class Client:
    """The same calls on `JobClient` (run in a worker thread) or `AsyncJobClient`."""

    def __init__(self, kind: str, address: str, retry: RetryPolicy = FAST_RETRY) -> None:
        self.kind = kind
        self._sync = JobClient(address, retry=retry) if kind == "sync" else None
        self._async = AsyncJobClient(address, retry=retry) if kind == "async" else None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._sync is not None:
            self._sync.close()
        if self._async is not None:
            await self._async.close()

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self._sync is not None:
            return await asyncio.to_thread(getattr(self._sync, name), *args, **kwargs)
        return await getattr(self._async, name)(*args, **kwargs)

    async def submit(self, path: Path, **kwargs: Any) -> job_pb2.Job:
        return await self._call("submit", path, **kwargs)

    async def read_result(self, job_id: str) -> dict:
        return await self._call("read_result", job_id)

    async def download(self, job_id: str, directory: Path, **kwargs: Any) -> list[Path]:
        return await self._call("download", job_id, directory, **kwargs)

    async def read_blob(self, key: str, **kwargs: Any) -> tuple[list[bytes], int, int]:
        """Every chunk of the object, its size, and how often the read resumed."""
        if self._sync is not None:

            def read() -> tuple[list[bytes], int, int]:
                with self._sync.open_blob(key, **kwargs) as reader:
                    return list(reader.iter_chunks()), reader.size, reader.resumed

            return await asyncio.to_thread(read)
        async with self._async.open_blob(key, **kwargs) as reader:
            chunks = [chunk async for chunk in reader]
            return chunks, reader.size, reader.resumed


@pytest.fixture
def small_video(tmp_path, sample_mp4) -> Path:
    """The 2 s sample, well under one chunk: submitted in one SubmitVideo stream."""
    path = tmp_path / "small.mp4"
    path.write_bytes(sample_mp4)
    return path


@pytest.fixture(scope="module")
def big_video(tmp_path_factory) -> Path:
    """A real H.264 MP4 of about 10 MiB: 640x360 frames of noise, which does
    not compress, so it takes many chunks and several seconds of upload."""
    path = tmp_path_factory.mktemp("big") / "noise.mp4"
    rng = np.random.default_rng(20240601)
    frames = (rng.integers(0, 256, (360, 640, 3), dtype=np.uint8) for _ in range(50))
    write_frames(path, frames, fps=12, crf=12)
    assert path.stat().st_size > 8 * 1024 * 1024
    return path


async def _run_job_to_success(
    job_service, video: Path, outputs: dict[str, bytes], document: dict = DOCUMENT
) -> job_pb2.Job:
    """Submits `video`, has a scripted worker store `document` as the result and
    `outputs` (path below the attempt prefix -> bytes) as artifacts, and waits
    until the job SUCCEEDED."""
    async with AsyncJobClient(job_service.address) as client:
        job = await client.submit(video)
        async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
            assignment = await worker.next("assignment")
            _store_outputs(job_service, assignment.output_prefix, outputs, document)
            artifacts = [
                job_pb2.Artifact(
                    key=f"{assignment.output_prefix}/{relative}",
                    media_type="image/jpeg" if relative.endswith(".jpg") else "application/json",
                    size_bytes=len(data),
                    index=index,
                )
                for index, (relative, data) in enumerate(outputs.items())
            ]
            worker.complete(assignment, artifacts=artifacts, write_outputs=False)

            async def succeeded() -> job_pb2.Job | None:
                current = await client.get_status(job.job_id)
                return current if current.state == job_pb2.JOB_STATE_SUCCEEDED else None

            return await eventually(succeeded, what="the job to succeed")


def _store_outputs(job_service, prefix: str, outputs: dict[str, bytes], document: dict) -> None:
    store = job_service.storage
    put_bytes(store, StorageKey(f"{prefix}/results.json"), json.dumps(document).encode())
    for relative, data in outputs.items():
        put_bytes(store, StorageKey(f"{prefix}/{relative}"), data)


def _jpeg_like(index: int, size: int = 5000) -> bytes:
    return b"\xff\xd8\xff\xe0" + bytes([index]) * (size - 6) + b"\xff\xd9"


async def test_read_result_and_download_fetch_exactly_what_was_stored(
    job_service, small_video, tmp_path, client_kind
):
    outputs = {
        "thumbnails/0000.jpg": _jpeg_like(0),
        "thumbnails/0001.jpg": _jpeg_like(1, 7000),
        "thumbnails/0002.jpg": _jpeg_like(2, 1),
        "tracks/deep/objects.json": b'{"tracks": []}',
    }
    job = await _run_job_to_success(job_service, small_video, outputs)
    directory = tmp_path / "fetched"
    progress: list[tuple[int, int]] = []
    async with Client(client_kind, job_service.address) as client:
        document = await client.read_result(job.job_id)
        written = await client.download(
            job.job_id, directory, on_progress=lambda done, total: progress.append((done, total))
        )

    # The document as stored, keys in their stored order.
    assert document == DOCUMENT
    assert list(document) == list(DOCUMENT)
    # Every file, at its path below the attempt prefix, with its bytes.
    assert written == [directory / "results.json", *(directory / name for name in outputs)]
    assert json.loads((directory / "results.json").read_bytes()) == DOCUMENT
    for relative, data in outputs.items():
        assert (directory / relative).read_bytes() == data, relative
    # Nothing else was left there (temporary files were renamed into place).
    on_disk = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    assert on_disk == sorted(["results.json", *outputs])
    # Progress covers the whole download and ends at its total.
    total = len(json.dumps(DOCUMENT).encode()) + sum(len(data) for data in outputs.values())
    assert progress[0] == (0, total) and progress[-1] == (total, total)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


async def test_a_job_without_a_result_is_refused_and_nothing_is_written(
    job_service, small_video, tmp_path, client_kind
):
    async with AsyncJobClient(job_service.address) as setup:
        job = await setup.submit(small_video)
    directory = tmp_path / "never"
    async with Client(client_kind, job_service.address) as client:
        for call in (
            lambda: client.read_result(job.job_id),
            lambda: client.download(job.job_id, directory),
        ):
            with pytest.raises(VideoJobsError) as raised:
                await call()
            error = raised.value
            assert error.code == grpc.StatusCode.FAILED_PRECONDITION
            assert error.reason == "JOB_NOT_SUCCEEDED"
            assert error.metadata["state"] == "QUEUED"
        # Unknown jobs are the server's NOT_FOUND.
        with pytest.raises(VideoJobsError) as raised:
            await client.read_result("f" * 32)
        assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert not directory.exists()


async def test_open_blob_streams_a_large_object_in_pieces(job_service, small_video, client_kind):
    large = os.urandom(3 * 1024 * 1024 + 12345)
    job = await _run_job_to_success(job_service, small_video, {"frames/all.bin": large})
    key = f"{job.output_key.rsplit('/', 1)[0]}/frames/all.bin"
    async with Client(client_kind, job_service.address) as client:
        chunks, size, resumed = await client.read_blob(key)
        ranged, _, _ = await client.read_blob(key, offset=1_000_000, limit=2_500_000)
    assert size == len(large) and resumed == 0
    # Several messages of at most 1 MiB each, never the object in one piece.
    assert len(chunks) >= 4 and max(len(chunk) for chunk in chunks) <= 1024 * 1024
    assert b"".join(chunks) == large
    assert b"".join(ranged) == large[1_000_000:3_500_000]


async def test_a_read_cut_mid_way_resumes_from_the_byte_it_reached(
    job_service, small_video, client_kind
):
    large = os.urandom(4 * 1024 * 1024 + 777)
    job = await _run_job_to_success(job_service, small_video, {"frames/all.bin": large})
    key = f"{job.output_key.rsplit('/', 1)[0]}/frames/all.bin"
    async with TcpProxy(job_service.address) as proxy:
        cut = proxy.cut_downstream_at(2 * 1024 * 1024)
        async with Client(client_kind, proxy.address) as client:
            chunks, size, resumed = await client.read_blob(key)
    assert cut.fired.is_set()
    # At least once (a reconnect that finds the channel still failing counts too).
    assert resumed >= 1
    assert b"".join(chunks) == large and size == len(large)
    # Only what had not arrived was read again.
    assert proxy.downstream_bytes < 1.5 * len(large)


async def test_keys_the_caller_may_not_read_are_not_found(job_service, small_video, client_kind):
    async with AsyncJobClient(job_service.address) as setup:
        job = await setup.submit(small_video)
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        # Written, but the job has not SUCCEEDED: not a result anyone may read yet.
        unfinished = f"{assignment.output_prefix}/results.json"
        put_bytes(job_service.storage, StorageKey(unfinished), b"{}")
        async with Client(client_kind, job_service.address) as client:
            for key in (
                unfinished,
                f"jobs/{'0' * 32}/input/source.mp4",
                "uploads/" + "z" * 32,
                "somewhere/else.json",
            ):
                with pytest.raises(VideoJobsError) as raised:
                    await client.read_blob(key)
                assert raised.value.code == grpc.StatusCode.NOT_FOUND, key
            # The job's own input is readable by anyone, and is the upload.
            chunks, _, _ = await client.read_blob(job.input_key)
        assert b"".join(chunks) == small_video.read_bytes()


async def test_an_upload_cut_mid_way_resumes_from_the_committed_size(
    job_service, big_video, client_kind
):
    content = big_video.read_bytes()
    size = len(content)
    progress: list[int] = []
    async with TcpProxy(job_service.address) as proxy:
        # Late enough that the server has committed a good part: the bytes in
        # flight at the cut (socket buffers, HTTP/2 window: megabytes on
        # loopback) are lost and sent again.
        cut = proxy.cut_upstream_at(size * 75 // 100)
        async with Client(client_kind, proxy.address) as client:
            job = await client.submit(
                big_video, on_upload_progress=lambda sent, _total: progress.append(sent)
            )
    assert cut.fired.is_set()
    committed_at_cut = _resumed_from(progress)
    sent_after_cut = proxy.upstream_bytes - cut.upstream_at_fire
    print(
        f"\n[{client_kind}] file {size} B; cut after {cut.upstream_at_fire} B upstream; "
        f"server had committed {committed_at_cut} B; {sent_after_cut} B sent after the cut; "
        f"{proxy.upstream_bytes} B in all ({proxy.upstream_bytes / size:.2f}x the file)"
    )
    await _assert_one_job_of(job_service, job, content)
    # The resumed stream started at what the server had committed, which was
    # something: the committed part was not sent again.
    assert 0 < committed_at_cut < size
    assert sent_after_cut < size - committed_at_cut + 256 * 1024
    assert proxy.upstream_bytes < 2 * size


async def test_an_upload_that_stalls_resumes_over_a_new_connection(
    start_job_service, big_video, client_kind
):
    # The server lets go of a silent upload stream after 1.5 s (default 30 s),
    # so the resumed stream is not refused for long as a second writer.
    job_service = await start_job_service(upload_idle_timeout=1.5)
    content = big_video.read_bytes()
    size = len(content)
    progress: list[int] = []
    async with TcpProxy(job_service.address) as proxy:
        stall = proxy.cut_upstream_at(size * 45 // 100, mode="stall")
        async with Client(client_kind, proxy.address) as client:
            job = await client.submit(
                big_video, on_upload_progress=lambda sent, _total: progress.append(sent)
            )
        assert stall.fired.is_set()
        # The stalled connection stays open; the upload finished over another one.
        assert proxy.accepted >= 2
    committed_at_stall = _resumed_from(progress)
    print(
        f"\n[{client_kind}] stall after {stall.upstream_at_fire} B upstream; resumed from "
        f"{committed_at_stall} B; {proxy.upstream_bytes} B in all"
    )
    await _assert_one_job_of(job_service, job, content)
    assert 0 < committed_at_stall < size
    assert proxy.upstream_bytes < 2 * size


async def test_a_one_chunk_upload_cut_mid_way_is_sent_again_and_makes_one_job(
    job_service, small_video, client_kind
):
    content = small_video.read_bytes()
    async with TcpProxy(job_service.address) as proxy:
        cut = proxy.cut_upstream_at(len(content) // 2)
        async with Client(client_kind, proxy.address) as client:
            job = await client.submit(small_video)
    assert cut.fired.is_set()
    await _assert_one_job_of(job_service, job, content)


def _resumed_from(progress: list[int]) -> int:
    """Where the upload resumed: a resumption reports exactly the committed
    size, which is never more than what was reported before it, so it is the
    first figure that does not grow (the final report repeats the end)."""
    total = progress[-1]
    steps = zip(progress, progress[1:], strict=False)
    resumed = [later for earlier, later in steps if later <= earlier and later < total]
    assert resumed, f"the upload never resumed (progress {progress[:5]}...{progress[-5:]})"
    return resumed[0]


async def _assert_one_job_of(job_service, job: job_pb2.Job, content: bytes) -> None:
    """The upload made exactly one job, whose input is `content`, and left no
    staged upload behind."""
    assert job.input_sha256 == hashlib.sha256(content).hexdigest()
    assert job.input_size_bytes == len(content)
    assert job.request_id  # generated by the client: a repeated SubmitVideo is idempotent
    async with AsyncJobClient(job_service.address) as client:
        jobs, _ = await client.list_jobs()
    assert [listed.job_id for listed in jobs] == [job.job_id]
    keys = [info.key.value for info in job_service.storage.list()]
    assert not [key for key in keys if key.startswith("uploads/")], keys
    stored = job_service.storage
    with stored.open_read(StorageKey(job.input_key)) as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == job.input_sha256


async def test_a_large_file_that_is_no_video_is_refused_with_the_servers_reason(
    job_service, tmp_path, client_kind
):
    """A 6 MiB file of noise is refused NOT_A_VIDEO by its first bytes, and
    both clients report exactly that (the first stream sends only the head, so
    grpc.aio's client cannot lose the answer to a write still in flight)."""
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(7).bytes(6 * 1024 * 1024))
    async with Client(client_kind, job_service.address) as client:
        with pytest.raises(VideoJobsError) as raised:
            await client.submit(noise)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.reason == "NOT_A_VIDEO"
    assert [i.key.value for i in job_service.storage.list()] == []
