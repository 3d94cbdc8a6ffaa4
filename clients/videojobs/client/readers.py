"""Streaming reads of stored objects (BlobService.Read) that resume after a
broken connection: `BlobReader`, a binary file for the sync client, and
`AsyncBlobReader`, an async iterator of chunks for the asyncio client.

Both hold at most one chunk (up to 1 MiB) at a time. When a Read stream
breaks (UNAVAILABLE, or a transient failure as `retry.is_transient` has it)
they open a new one from the byte they reached, under the client's
`RetryPolicy`; any other error is raised.
"""

from __future__ import annotations

import asyncio
import io
import time
from types import TracebackType
from typing import Any

import grpc

from videojobs.client.blobs import ReadCursor
from videojobs.client.errors import VideoJobsError
from videojobs.client.retry import RetryBackoff, RetryPolicy, is_transient
from videojobs.v1 import blob_service_pb2_grpc


def _resume_delay(rpc_error: grpc.RpcError, backoff: RetryBackoff) -> tuple[VideoJobsError, float]:
    """The error and the pause before resuming; raises the error when the
    read should not (or no longer) be resumed."""
    error = VideoJobsError.from_rpc_error(rpc_error)
    if not is_transient(error):
        raise error from rpc_error
    delay = backoff.next_delay(at_least=error.retry_delay)
    if delay is None:
        raise error from rpc_error
    return error, delay


class BlobReader(io.RawIOBase):
    """A stored object as a read-only binary file, streamed chunk by chunk.

    Made by `JobClient.open_blob`, which opens the stream at once, so an
    object that does not exist or may not be read raises there (NOT_FOUND).
    `size` is the whole object's size. `iter_chunks()` yields the bytes as
    they arrive, `read(n)` / `readinto` serve any amount. Close it (or use it
    as a context manager) to end the stream early.

    Raises (from reads): `VideoJobsError` for a failed call that is not (or no
    longer) resumed, DATA_LOSS when the object ends early or changes size.
    """

    def __init__(
        self,
        stub: blob_service_pb2_grpc.BlobServiceStub,
        key: str,
        *,
        offset: int = 0,
        limit: int = 0,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__()
        self._stub = stub
        self._cursor = ReadCursor(key, offset=offset, limit=limit)
        self._backoff = (retry or RetryPolicy()).backoff()
        self._call: Any = None
        self._buffer = memoryview(b"")
        self._eof = False
        # Opened at once: a missing or unreadable object fails here, not on the first read.
        self._buffer = memoryview(self._next_chunk())

    @property
    def key(self) -> str:
        """The object's key."""
        return self._cursor.key

    @property
    def size(self) -> int:
        """The whole object's size in bytes."""
        assert self._cursor.size is not None  # known once the constructor returned
        return self._cursor.size

    @property
    def resumed(self) -> int:
        """How many times a new stream was opened after a broken one."""
        return self._backoff.retries

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        """Offset in the object of the next byte `read` returns."""
        return self._cursor.position - len(self._buffer)

    def readinto(self, buffer: Any) -> int:
        """Copies up to `len(buffer)` next bytes into `buffer`; 0 at the end."""
        self._check_open()
        if not self._buffer:
            self._buffer = memoryview(self._next_chunk())
        count = min(len(buffer), len(self._buffer))
        memoryview(buffer).cast("B")[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` next bytes (at most what one chunk holds), b"" at
        the end; with no size, everything left."""
        self._check_open()
        if size is None or size < 0:
            return self.readall()
        if not self._buffer:
            self._buffer = memoryview(self._next_chunk())
        data = bytes(self._buffer[:size])
        self._buffer = self._buffer[len(data) :]
        return data

    def readall(self) -> bytes:
        """Everything left (the whole rest in memory: prefer `iter_chunks`)."""
        return b"".join(self.iter_chunks())

    def iter_chunks(self):
        """Yields the rest of the object a chunk at a time, as it arrives."""
        self._check_open()
        if self._buffer:
            data, self._buffer = bytes(self._buffer), memoryview(b"")
            yield data
        while chunk := self._next_chunk():
            yield chunk

    def close(self) -> None:
        """Ends the stream (if still open) and closes the file."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
        super().close()

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on a closed BlobReader")

    def _next_chunk(self) -> bytes:
        """The next non-empty chunk, b"" at the end; resumes broken streams."""
        while not self._eof:
            if self._call is None:
                if self._cursor.finished:
                    # Everything arrived before the stream broke: nothing to resume.
                    self._eof = True
                    break
                self._call = self._stub.Read(self._cursor.request())
            try:
                response = next(self._call)
            except StopIteration:
                self._call = None
                self._eof = True
                self._cursor.check_complete()
                break
            except grpc.RpcError as rpc_error:
                self._call = None
                _, delay = _resume_delay(rpc_error, self._backoff)
                time.sleep(delay)
                continue
            data = self._cursor.accept(response)
            if data:
                self._backoff.progressed()
                return data
        return b""


class AsyncBlobReader:
    """A stored object as an async iterator of its bytes, chunk by chunk.

    Made by `AsyncJobClient.open_blob`. The stream opens on the first
    iteration (or on `async with`, so NOT_FOUND raises there); `size` is the
    whole object's size once it is open. Leaving early: `aclose()` or the
    `async with` block, which end the stream.
    """

    def __init__(
        self,
        stub_factory: Any,
        key: str,
        *,
        offset: int = 0,
        limit: int = 0,
        retry: RetryPolicy | None = None,
    ) -> None:
        # A factory rather than a stub: the asyncio client makes its channel
        # inside the running loop, on first use.
        self._stub_factory = stub_factory
        self._cursor = ReadCursor(key, offset=offset, limit=limit)
        self._backoff = (retry or RetryPolicy()).backoff()
        self._call: Any = None
        self._pending = b""
        self._opened = False
        self._eof = False

    @property
    def key(self) -> str:
        """The object's key."""
        return self._cursor.key

    @property
    def size(self) -> int | None:
        """The whole object's size in bytes; None until the stream is open."""
        return self._cursor.size

    @property
    def resumed(self) -> int:
        """How many times a new stream was opened after a broken one."""
        return self._backoff.retries

    async def open(self) -> AsyncBlobReader:
        """Opens the stream and waits for its first answer (raising NOT_FOUND
        and the like here); a no-op once open."""
        if not self._opened:
            self._opened = True
            self._pending = await self._next_chunk()
        return self

    async def __aenter__(self) -> AsyncBlobReader:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncBlobReader:
        return self

    async def __anext__(self) -> bytes:
        await self.open()
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        data = await self._next_chunk()
        if not data:
            raise StopAsyncIteration
        return data

    async def read_all(self) -> bytes:
        """Everything left, in memory (for small objects such as a result document)."""
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        """Ends the stream."""
        self._eof = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def _next_chunk(self) -> bytes:
        while not self._eof:
            if self._call is None:
                if self._cursor.finished:
                    self._eof = True
                    break
                self._call = self._stub_factory().Read(self._cursor.request())
            try:
                response = await self._call.read()
            except grpc.RpcError as rpc_error:
                self._call = None
                _, delay = _resume_delay(rpc_error, self._backoff)
                await asyncio.sleep(delay)
                continue
            if response is grpc.aio.EOF:
                self._call = None
                self._eof = True
                self._cursor.check_complete()
                break
            data = self._cursor.accept(response)
            if data:
                self._backoff.progressed()
                return data
        return b""
