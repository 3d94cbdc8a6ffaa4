"""BlobService over a real server: who may read and write which key,
resumable writes, and staged uploads turned into jobs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct

import grpc
import pytest

from videojobs.jobservice.limits import WRITE_BATCH_BYTES
from videojobs.storage import StorageKey
from videojobs.v1 import blob_service_pb2 as bs
from videojobs.v1 import blob_service_pb2_grpc, job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import rich_error
from support.scripted_worker import ScriptedWorker
from support.sql import statements_containing
from support.uploads import header, submit

LEASE = "videojobs-lease-token"


@pytest.fixture
async def blobs(job_service):
    """A BlobService stub on its own channel to the test's job-service."""
    channel = grpc.aio.insecure_channel(job_service.address)
    yield blob_service_pb2_grpc.BlobServiceStub(channel)
    await channel.close()


async def _write(blobs, key: str, data: bytes, *, offset: int = 0, finish: bool = True, lease=""):
    async def messages():
        position = offset
        chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)] or [b""]
        for index, chunk in enumerate(chunks):
            yield bs.WriteRequest(
                key=key if index == 0 else "",
                write_offset=position,
                data=chunk,
                finish_write=finish and index == len(chunks) - 1,
            )
            position += len(chunk)

    metadata = ((LEASE, lease),) if lease else None
    return await blobs.Write(messages(), metadata=metadata)


async def _read(blobs, key: str, offset: int = 0, limit: int = 0, lease="") -> bytes:
    metadata = ((LEASE, lease),) if lease else None
    call = blobs.Read(
        bs.ReadRequest(key=key, read_offset=offset, read_limit=limit), metadata=metadata
    )
    return b"".join([response.data async for response in call])


async def _error(awaitable) -> object:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await awaitable
    return rich_error(raised.value)


async def test_a_staged_upload_resumes_and_becomes_a_job(job_service, blobs, sample_mp4):
    key = "uploads/" + "a" * 32
    half = len(sample_mp4) // 2
    # First stream: half the bytes, no finish (as if the connection broke).
    first = await _write(blobs, key, sample_mp4[:half], finish=False)
    assert first.committed_size == half and not first.complete
    status = await blobs.QueryWriteStatus(bs.QueryWriteStatusRequest(key=key))
    assert (status.committed_size, status.complete) == (half, False)
    # A stream that does not start at the committed size is refused.
    error = await _error(_write(blobs, key, sample_mp4[:10], offset=0))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "write_offset" in error.violations
    # The rest, from where it stands.
    done = await _write(blobs, key, sample_mp4[half:], offset=half)
    assert (done.committed_size, done.complete) == (len(sample_mp4), True)
    # A finished staged upload is write-once.
    again = await _error(_write(blobs, key, sample_mp4))
    assert again.code == grpc.StatusCode.ALREADY_EXISTS
    # It reads back exactly, and becomes a job.
    assert await _read(blobs, key) == sample_mp4
    sha = hashlib.sha256(sample_mp4).hexdigest()

    async def stream():
        yield header(upload_key=key, expected_sha256=sha, request_id="staged-1")

    job = (await job_service.stub.SubmitVideo(stream())).job
    assert job.input_sha256 == sha and job.input_size_bytes == len(sample_mp4)
    assert job.input_format == "mp4"
    stored = job_service.storage
    assert not stored.exists(StorageKey(key))
    assert stored.exists(StorageKey(job.input_key))
    # A retried submit whose answer was lost gets the same job.
    repeat = (await job_service.stub.SubmitVideo(stream())).job
    assert repeat.job_id == job.job_id


def _with_free_box(video: bytes, padding: int) -> bytes:
    """A playable MP4 followed by a `free` box of `padding` zero bytes."""
    return video + struct.pack(">I4s", 8 + padding, b"free") + bytes(padding)


class _CountedReads:
    """Counts the bytes read through a blob store's open_read."""

    def __init__(self, store) -> None:
        self.bytes_read = 0
        self._open_read = store.open_read

    def open_read(self, key):
        source = self._open_read(key)
        counter = self

        class Counted(io.RawIOBase):
            def readable(self):
                return True

            def seekable(self):
                return True

            def readinto(self, buffer):
                data = source.read(len(buffer))
                buffer[: len(data)] = data
                counter.bytes_read += len(data)
                return len(data)

            def seek(self, offset, whence=0):
                return source.seek(offset, whence)

            def tell(self):
                return source.tell()

            def close(self):
                source.close()
                super().close()

        return Counted()


async def test_a_staged_upload_is_hashed_as_it_is_written(
    start_job_service, blobs, job_service, sample_mp4, monkeypatch
):
    """Written head first, then the rest (as the clients write), a staged
    upload's SHA-256 is kept from the write, and submit reads only its head;
    one resumed where its running hash is unknown is hashed at submit."""
    upload = _with_free_box(sample_mp4, 4 * WRITE_BATCH_BYTES)
    sha = hashlib.sha256(upload).hexdigest()
    key = "uploads/" + "h" * 32
    await _write(blobs, key, upload[:8192], finish=False)
    await _write(blobs, key, upload[8192:], offset=8192)
    async with job_service.app.database.reading() as repository:
        record = await repository.staged_upload(key)
    assert (record.size_bytes, record.sha256) == (len(upload), sha)

    reads = _CountedReads(job_service.app.blob_store)
    monkeypatch.setattr(job_service.app.blob_store, "open_read", reads.open_read)

    async def submit_of(upload_key: str, request_id: str):
        yield header(upload_key=upload_key, expected_sha256=sha, request_id=request_id)

    job = (await job_service.stub.SubmitVideo(submit_of(key, "hashed-on-write"))).job
    assert job.input_sha256 == sha and job.input_size_bytes == len(upload)
    assert 0 < reads.bytes_read < len(upload) // 4

    # Broken off, then resumed after a restart, which lost its running
    # hash: the digest is not recorded, and submit reads the upload whole.
    other_key = "uploads/" + "i" * 32
    await _write(blobs, other_key, upload[:100_000], finish=False)
    await job_service.app.stop()
    restarted = await start_job_service(data_dir=job_service.data_dir)
    channel = grpc.aio.insecure_channel(restarted.address)
    try:
        restarted_blobs = blob_service_pb2_grpc.BlobServiceStub(channel)
        await _write(restarted_blobs, other_key, upload[100_000:], offset=100_000)
        async with restarted.app.database.reading() as repository:
            assert (await repository.staged_upload(other_key)).sha256 is None
        reads = _CountedReads(restarted.app.blob_store)
        monkeypatch.setattr(restarted.app.blob_store, "open_read", reads.open_read)
        job = (await restarted.stub.SubmitVideo(submit_of(other_key, "hashed-at-submit"))).job
        assert job.input_sha256 == sha
        assert reads.bytes_read >= len(upload)
    finally:
        await channel.close()


async def test_staged_uploads_are_checked_as_they_arrive(job_service, blobs, sample_mp4):
    garbage = await _error(_write(blobs, "uploads/" + "b" * 32, bytes(range(256)) * 64))
    assert garbage.code == grpc.StatusCode.INVALID_ARGUMENT and garbage.reason == "NOT_A_VIDEO"
    playlist = await _error(
        _write(blobs, "uploads/" + "c" * 32, b"#EXTM3U\n#EXTINF:1,\nhttp://x/y.ts\n" * 200)
    )
    assert playlist.reason == "UNSUPPORTED_CONTAINER"
    # Nothing of either is kept, committed or not.
    for suffix in ("b", "c"):
        status = await blobs.QueryWriteStatus(
            bs.QueryWriteStatusRequest(key="uploads/" + suffix * 32)
        )
        assert (status.committed_size, status.complete) == (0, False)
    assert [i.key.value for i in job_service.storage.list()] == []
    # Keys outside uploads/ (and not under a held lease) are not writable.
    for key in ("jobs/" + "d" * 32 + "/input/source.mp4", "anything/else", "uploads/short"):
        denied = await _error(_write(blobs, key, sample_mp4))
        assert denied.code == grpc.StatusCode.PERMISSION_DENIED, key
    bad = await _error(_write(blobs, "/etc/passwd", b"x"))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_submit_with_an_upload_key_refuses_chunks_and_unfinished_uploads(
    job_service, blobs, sample_mp4
):
    key = "uploads/" + "e" * 32

    async def with_chunk():
        yield header(upload_key=key)
        yield js.SubmitVideoRequest(chunk=b"x")

    await _write(blobs, key, sample_mp4[:8192], finish=False)

    async def just_header():
        yield header(upload_key=key)

    unfinished = await _error(job_service.stub.SubmitVideo(just_header()))
    assert unfinished.code == grpc.StatusCode.FAILED_PRECONDITION
    await _write(blobs, key, sample_mp4[8192:], offset=8192)
    chunked = await _error(job_service.stub.SubmitVideo(with_chunk()))
    assert chunked.code == grpc.StatusCode.INVALID_ARGUMENT
    missing_key = "uploads/" + "f" * 32

    async def missing():
        yield header(upload_key=missing_key)

    assert (await _error(job_service.stub.SubmitVideo(missing()))).code == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_reads_follow_the_jobs_they_belong_to(job_service, blobs, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    # The input of a job is readable, in ranges too.
    assert await _read(blobs, job.input_key) == sample_mp4
    assert await _read(blobs, job.input_key, offset=100, limit=50) == sample_mp4[100:150]
    past = await _error(_read(blobs, job.input_key, offset=len(sample_mp4) + 1))
    assert past.code == grpc.StatusCode.INVALID_ARGUMENT
    info = await blobs.GetBlobInfo(bs.GetBlobInfoRequest(key=job.input_key))
    assert info.size_bytes == len(sample_mp4)
    output = f"jobs/{job.job_id}/attempts/1/results.json"
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        lease = assignment.lease_token
        # The running worker reads its input and writes under its prefix, by lease.
        assert await _read(blobs, job.input_key, lease=lease) == sample_mp4
        written = await _write(blobs, output, b'{"answer": 42}', lease=lease)
        assert written.complete
        # Not yet a result: others cannot read it; outside the prefix is not writable.
        assert (await _error(_read(blobs, output))).code == grpc.StatusCode.NOT_FOUND
        outside = f"jobs/{job.job_id}/attempts/2/results.json"
        denied = await _error(_write(blobs, outside, b"{}", lease=lease))
        assert denied.code == grpc.StatusCode.PERMISSION_DENIED
        assert (await _error(_write(blobs, output, b"{}", lease="x" * 32))).code == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        worker.complete(assignment, write_outputs=False)
        await _wait_succeeded(job_service, job.job_id)
    # The result of a job that SUCCEEDED is readable by anyone.
    assert await _read(blobs, output) == b'{"answer": 42}'
    # Keys of jobs that do not exist, or outside any job, read as NOT_FOUND.
    for key in (f"jobs/{'0' * 32}/input/source.mp4", "somewhere/else", output + "x"):
        assert (await _error(_read(blobs, key))).code == grpc.StatusCode.NOT_FOUND


async def test_a_lease_held_here_needs_no_database_read_until_it_ends(
    job_service, blobs, sample_mp4
):
    job = await submit(job_service.stub, sample_mp4)
    output = f"jobs/{job.job_id}/attempts/1/results.json"
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        lease = assignment.lease_token
        with statements_containing("FROM jobs") as reads:
            assert await _read(blobs, job.input_key, lease=lease) == sample_mp4
            assert (await _write(blobs, output, b"{}", lease=lease)).complete
        assert reads == []
        # Outside the attempt's prefix is refused all the same.
        outside = f"jobs/{job.job_id}/attempts/2/results.json"
        denied = await _error(_write(blobs, outside, b"{}", lease=lease))
        assert denied.code == grpc.StatusCode.PERMISSION_DENIED

        await job_service.stub.CancelJob(js.CancelJobRequest(job_id=job.job_id))
        stop = await worker.next("stop_job")
        assert stop.job_id == job.job_id
        # The ended lease is forgotten here: the database decides, and refuses.
        with statements_containing("FROM jobs") as reads:
            denied = await _error(_write(blobs, output, b"{}", lease=lease))
            assert denied.code == grpc.StatusCode.PERMISSION_DENIED
            missing = await _error(_read(blobs, job.input_key + "x", lease=lease))
            assert missing.code == grpc.StatusCode.NOT_FOUND
        assert reads


async def test_one_stream_at_a_time_per_key(job_service, blobs, sample_mp4):
    key = "uploads/" + "g" * 32
    release = asyncio.Event()
    # A whole write batch: job-service stores it at once (smaller chunks are
    # gathered first), so the stream's progress shows in its status.
    head = WRITE_BATCH_BYTES
    data = sample_mp4 + bytes(head)

    async def slow():
        yield bs.WriteRequest(key=key, write_offset=0, data=data[:head])
        await release.wait()
        yield bs.WriteRequest(write_offset=head, data=data[head:], finish_write=True)

    first = blobs.Write(slow())
    from support.waiting import eventually

    async def first_is_writing():
        status = await blobs.QueryWriteStatus(bs.QueryWriteStatusRequest(key=key))
        return status.committed_size == head

    # The local store's resumable file grows as batches are stored: the
    # first stream holds the key once its head is there.
    await eventually(first_is_writing, what="the first stream to hold the key")
    second = await _error(_write(blobs, key, b"", finish=False, offset=head))
    assert second.code == grpc.StatusCode.ABORTED and second.reason == "WRITE_IN_PROGRESS"
    release.set()
    assert (await first).complete


async def _wait_succeeded(job_service, job_id: str) -> None:
    from support.waiting import eventually

    async def done():
        job = (await job_service.stub.GetStatus(js.GetStatusRequest(job_id=job_id))).job
        return job.state == job_pb2.JOB_STATE_SUCCEEDED

    await eventually(done, what="the job to succeed")
