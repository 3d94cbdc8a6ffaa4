"""Resumable uploads, shared by the sync and asyncio clients: the staged
upload's key, the Write request stream from wherever the upload stands, and
the progress it reports.

A video larger than one chunk is written to `uploads/{32 hex digits}` with
BlobService.Write. When the stream breaks, the client asks QueryWriteStatus
how many bytes the server committed and opens a new stream from there, so no
committed byte is sent twice. SubmitVideo then names the finished upload in
`UploadHeader.upload_key` and the server turns it into the job's input.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import BinaryIO

import grpc

from videojobs.client.errors import VideoJobsError
from videojobs.client.requests import UploadFile, UploadProgressCallback
from videojobs.v1 import blob_service_pb2

#: Where staged uploads live on the server (see BlobService).
STAGED_UPLOAD_PREFIX = "uploads"

#: Channel options for a channel that must open its own connection instead
#: of sharing the process-wide one to the same address (which may be dead).
FRESH_CONNECTION_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)

#: Longest wait between two looks at a stream for a stall, in seconds.
_MAX_WATCH_INTERVAL = 1.0


def watch_interval(stall_timeout: float | None) -> float | None:
    """How often to check a stream for a stall (None: never)."""
    if stall_timeout is None:
        return None
    return min(_MAX_WATCH_INTERVAL, stall_timeout / 4)


def staged_upload_lost(error: VideoJobsError) -> bool:
    """Whether a repeated SubmitVideo found its staged upload gone and no job
    made from it (NOT_FOUND, `UPLOAD_NOT_FOUND`). That happens when the
    connection broke while the first SubmitVideo was creating the job and
    the server dropped the input on the way out; the bytes must go again."""
    return error.code == grpc.StatusCode.NOT_FOUND and error.reason == "UPLOAD_NOT_FOUND"


def new_upload_key() -> str:
    """A fresh staged-upload key, `uploads/` and 32 random hex digits: nobody
    else guesses it, so nobody else writes to it."""
    return f"{STAGED_UPLOAD_PREFIX}/{secrets.token_hex(16)}"


def new_request_id() -> str:
    """A fresh idempotency key for SubmitVideo (32 random hex digits), so a
    SubmitVideo repeated after a lost answer returns the job it created."""
    return secrets.token_hex(16)


# The first stream of an upload sends only this much and half-closes: the
# server checks a staged upload's first bytes (is it a video container at
# all?), and an answer that arrives while the client is still sending can be
# lost to grpc.aio's client (grpc/grpc#36066: the caller then sees INTERNAL
# instead of NOT_A_VIDEO). A short first stream gets the real verdict.
HEAD_PROBE_BYTES = 64 * 1024
# Reads that hash what the upload streams skipped go this much at a time.
HASH_BLOCK_BYTES = 1024 * 1024


class ResumableUpload:
    """One file's resumable write to a staged-upload key.

    The first stream carries only the file's first HEAD_PROBE_BYTES (see
    there); once the server has accepted them (`head_accepted`), streams carry
    the rest.

    `committed` is what the server holds (from its last answer); each stream
    starts there and sends the rest of the file, the last message with
    `finish_write`. `on_progress(bytes, total)` reports committed plus sent
    in the current stream, so after a break the figure steps back to what
    the server really kept. `last_activity` (monotonic seconds) is when a
    stream last moved, for stall detection.

    gRPC swallows exceptions raised by a request iterator and just cancels
    the call, so a read error is kept in `read_error` for the caller.
    """

    def __init__(
        self,
        upload: UploadFile,
        key: str,
        *,
        chunk_size: int,
        on_progress: UploadProgressCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upload = upload
        self.key = key
        self.chunk_size = chunk_size
        self.committed = 0
        self.complete = False
        self.read_error: OSError | None = None
        self.head_accepted = False
        self.streams = 0
        self._sent = 0
        self._on_progress = on_progress
        self._clock = clock
        self.last_activity = clock()
        # The file's SHA-256 over its first `_hashed` bytes, taken from the
        # reads that send them (each byte once, in order), so a large file is
        # not read a second time just to hash it.
        self._digest = hashlib.sha256()
        self._hashed = 0

    @property
    def position(self) -> int:
        """Committed bytes plus those sent by the current stream."""
        return self.committed + self._sent

    def idle_seconds(self) -> float:
        """Seconds since the current stream last moved."""
        return self._clock() - self.last_activity

    def record_status(self, committed_size: int, complete: bool) -> bool:
        """Takes the server's answer (a WriteResponse or QueryWriteStatus);
        returns whether it moved the upload on.

        Raises:
            VideoJobsError: DATA_LOSS when the server holds more bytes than
                the file has, or calls the object complete at another size.
        """
        if committed_size > self.upload.size or (complete and committed_size != self.upload.size):
            raise VideoJobsError(
                grpc.StatusCode.DATA_LOSS,
                f"the staged upload {self.key} holds {committed_size} bytes "
                f"but the file has {self.upload.size}",
                reason="UPLOAD_SIZE_MISMATCH",
                domain="videojobs.dev",
            )
        advanced = committed_size > self.committed or (complete and not self.complete)
        self.committed = committed_size
        self.complete = complete
        self._sent = 0
        self._report()
        return advanced

    def start(self) -> None:
        """Reports 0 of the total before the first stream."""
        self._report()

    def stream_answered(self) -> bool:
        """Notes that a stream ended with the server's answer; returns whether
        that was the head probe (the caller then goes on at once)."""
        probing = not self.head_accepted
        self.head_accepted = True
        return probing

    @property
    def _stream_end(self) -> int:
        """Where the current stream stops: after the head while probing."""
        if self.head_accepted:
            return self.upload.size
        return min(self.upload.size, HEAD_PROBE_BYTES)

    def requests(self) -> Iterator[blob_service_pb2.WriteRequest]:
        """One Write stream from the committed size, reading the file synchronously."""
        self._begin_stream()
        with self._open() as file:
            file.seek(self.committed)
            position = self.committed
            while True:
                data = self._read(file, position)
                message = self._message(position, data)
                yield message
                # Back here only once gRPC took the message and asks for the next.
                self._taken(len(data))
                position += len(data)
                if self._last_of_stream(message):
                    return

    async def arequests(self) -> AsyncIterator[blob_service_pb2.WriteRequest]:
        """One Write stream from the committed size, reading in a worker thread."""
        self._begin_stream()
        file = await asyncio.to_thread(self._open)
        try:
            await asyncio.to_thread(file.seek, self.committed)
            position = self.committed
            while True:
                data = await asyncio.to_thread(self._read, file, position)
                message = self._message(position, data)
                yield message
                self._taken(len(data))
                position += len(data)
                if self._last_of_stream(message):
                    return
        finally:
            file.close()

    def _begin_stream(self) -> None:
        self.streams += 1
        self._sent = 0
        self.last_activity = self._clock()

    def _message(self, position: int, data: bytes) -> blob_service_pb2.WriteRequest:
        return blob_service_pb2.WriteRequest(
            # The key in every message costs little and keeps each one self-describing.
            key=self.key,
            write_offset=position,
            data=data,
            finish_write=position + len(data) >= self.upload.size,
        )

    def _last_of_stream(self, message: blob_service_pb2.WriteRequest) -> bool:
        return message.finish_write or message.write_offset + len(message.data) >= self._stream_end

    def _taken(self, count: int) -> None:
        self._sent += count
        self.last_activity = self._clock()
        self._report()

    def _report(self) -> None:
        if self._on_progress is not None:
            self._on_progress(min(self.position, self.upload.size), self.upload.size)

    def _open(self) -> BinaryIO:
        try:
            return open(self.upload.path, "rb")
        except OSError as error:
            self.read_error = error
            raise

    def _read(self, file: BinaryIO, position: int) -> bytes:
        # Never past the size described: the server checks the upload against
        # it, and a file that grew meanwhile must not send more.
        wanted = min(self.chunk_size, self._stream_end - position)
        if wanted <= 0:
            return b""
        try:
            data = file.read(wanted)
        except OSError as error:
            self.read_error = error
            raise
        if len(data) < wanted:
            # The file shrank since it was described: what was hashed is gone.
            self.read_error = OSError(
                f"{self.upload.path} changed while it was uploaded (shorter than described)"
            )
            raise self.read_error
        end = position + len(data)
        if position <= self._hashed < end:
            self._digest.update(memoryview(data)[self._hashed - position :])
            self._hashed = end
        return data

    def verified_sha256(self) -> str:
        """The SHA-256 for the SubmitVideo header, once the upload is
        complete. Raises OSError when the file changed since it was measured
        (what went up may mix two versions of it), or cannot be read."""
        if self.upload.modified_ns:  # measured (UploadFile.measure)
            self.upload.check_unchanged()
        return self.sha256_hex()

    def sha256_hex(self) -> str:
        """The SHA-256 of the file's `upload.size` bytes, hashed as they were
        read to be sent; should the streams have skipped some (the server
        held bytes this session did not send), the file is read again from
        the first of them, now, in the caller's thread.

        Raises:
            OSError: the file cannot be read, or is shorter than described.
        """
        if self._hashed < self.upload.size:
            with self._open() as file:
                file.seek(self._hashed)
                while self._hashed < self.upload.size:
                    block = file.read(min(HASH_BLOCK_BYTES, self.upload.size - self._hashed))
                    if not block:
                        raise OSError(f"{self.upload.path} changed while it was uploaded")
                    self._digest.update(block)
                    self._hashed += len(block)
        return self._digest.hexdigest()
