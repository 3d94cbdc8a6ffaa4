"""RemoteBlobStore: the BlobStore of a worker that has only job-service's address.

Every operation goes through job-service's BlobService. Reads are streamed
into a temporary file (the decoders seek, and an object is never held in
memory); writes are spooled to a temporary file and sent as one resumable
Write when committed, resuming from the committed size after a dropped
connection. A worker proves which job it works on with its lease token
(metadata `videojobs-lease-token`); job-service decides what it may touch.

Listing, deleting and renaming are job-service's business and not offered.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import BinaryIO, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from videojobs.storage.blobstore import (
    BlobInfo,
    BlobNotFound,
    BlobStoreError,
    BlobWriteAborted,
    HashingCounter,
    StorageFull,
)
from videojobs.storage.keys import StorageKey
from videojobs.v1 import blob_service_pb2 as pb
from videojobs.v1 import blob_service_pb2_grpc

LEASE_METADATA_KEY = "videojobs-lease-token"
CHUNK_BYTES = 1024 * 1024
# A dropped connection or a restarting job-service is waited out this long
# (per operation) before the operation fails.
RETRY_FOR_SECONDS = 60.0
CALL_TIMEOUT_SECONDS = 600.0
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]
T = TypeVar("T")
_RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)


class RemoteBlobStore:
    """A BlobStore through job-service's BlobService."""

    def __init__(
        self,
        address: str,
        *,
        lease_token: str = "",
        channel: grpc.Channel | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        retry_for_seconds: float = RETRY_FOR_SECONDS,
        owns_channel: bool | None = None,
    ) -> None:
        self._owns_channel = channel is None if owns_channel is None else owns_channel
        self._channel = channel or grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = blob_service_pb2_grpc.BlobServiceStub(self._channel)
        self._metadata = ((LEASE_METADATA_KEY, lease_token),) if lease_token else ()
        self._spool_dir = os.fspath(spool_dir) if spool_dir is not None else None
        self._retry_for = retry_for_seconds

    def describe(self) -> str:
        """Where the bytes live, for the start-up log."""
        return "job-service's BlobService"

    def close(self) -> None:
        """Closes the channel if this store opened it."""
        if self._owns_channel:
            self._channel.close()

    # -- reading -------------------------------------------------------------

    def open_read(self, key: StorageKey) -> BinaryIO:
        """The object, streamed into a temporary file; resumes a broken stream
        from where it broke. Raises BlobNotFound."""
        spool = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115 - returned
        try:
            self.fetch_into(key, spool)
            spool.seek(0)
            return spool
        except BaseException:
            spool.close()
            raise

    def fetch_into(self, key: StorageKey, target: BinaryIO) -> int:
        """Streams the object into `target` (from its current position, which
        must be where this fetch started); resumes a broken stream from the
        byte it reached. Returns the object's size. Raises BlobNotFound."""
        start = target.tell()
        size = None

        def read_rest() -> None:
            nonlocal size
            offset = target.tell() - start
            stream = self._stub.Read(
                pb.ReadRequest(key=key.value, read_offset=offset),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )
            for response in stream:
                if size is None and (response.size_bytes or offset == 0):
                    size = response.size_bytes
                target.write(response.data)

        self._retrying(key, read_rest)
        received = target.tell() - start
        if size is not None and received != size:
            raise BlobStoreError(f"reading {key.value!r} ended at {received} of {size} bytes")
        return received

    def stat(self, key: StorageKey) -> BlobInfo:
        """Size and time of the object. Raises BlobNotFound."""
        response = self._retrying(
            key,
            lambda: self._stub.GetBlobInfo(
                pb.GetBlobInfoRequest(key=key.value), metadata=self._metadata, timeout=60
            ),
        )
        modified = (
            response.update_time.ToDatetime(tzinfo=UTC)
            if response.HasField("update_time")
            else None
        )
        return BlobInfo(key=key, size_bytes=response.size_bytes, modified_at=modified)

    def exists(self, key: StorageKey) -> bool:
        """Whether a readable object is stored under `key`."""
        try:
            self.stat(key)
        except BlobNotFound:
            return False
        return True

    # -- writing -------------------------------------------------------------

    def open_writer(self, key: StorageKey) -> _RemoteWriter:
        """A writer that spools locally and sends the object on commit."""
        return _RemoteWriter(self, key, tempfile.TemporaryFile(dir=self._spool_dir))

    def open_resumable(self, key: StorageKey) -> _RemoteResumableWriter:
        """Resumes (or starts) a resumable write held by job-service."""
        return _RemoteResumableWriter(self, key)

    def resumable_status(self, key: StorageKey) -> int | None:
        """Committed bytes of an unfinished write of `key`, or None."""
        status = self._query(key)
        if status.complete or status.committed_size == 0:
            return None
        return status.committed_size

    def _query(self, key: StorageKey) -> pb.QueryWriteStatusResponse:
        return self._retrying(
            key,
            lambda: self._stub.QueryWriteStatus(
                pb.QueryWriteStatusRequest(key=key.value), metadata=self._metadata, timeout=60
            ),
        )

    def _send(
        self, key: StorageKey, source: BinaryIO, size: int, *, finish: bool, origin: int = 0
    ) -> pb.WriteResponse:
        """Sends the object's bytes up to `size` as Write streams, from what
        job-service has committed, resuming after a dropped connection.
        `source` holds the object's bytes from offset `origin` on."""

        # The first try starts where this writer believes job-service stands
        # (`origin`: 0 for a new object, the last committed size when
        # resuming), saving a QueryWriteStatus round trip per object. Only a
        # refused offset, or a retry after a broken stream, asks first.
        optimistic = True

        def attempt() -> pb.WriteResponse:
            nonlocal optimistic
            if optimistic:
                optimistic = False
                try:
                    return self._stub.Write(
                        _write_messages(key, source, origin, size, finish, origin),
                        metadata=self._metadata,
                        timeout=CALL_TIMEOUT_SECONDS,
                    )
                except grpc.RpcError as exc:
                    if not _offset_refused(exc):
                        raise
            status = self._query(key)
            start = 0 if status.complete else status.committed_size
            if start < origin or start > size:
                if origin:
                    raise BlobStoreError(
                        f"the write of {key.value!r} stands at {start} bytes on job-service, "
                        f"outside what this writer holds ({origin} to {size})"
                    )
                start = 0  # an older write of this key: start over
            return self._stub.Write(
                _write_messages(key, source, start, size, finish, origin),
                metadata=self._metadata,
                timeout=CALL_TIMEOUT_SECONDS,
            )

        return self._retrying(key, attempt)

    # -- what workers may not do ------------------------------------------------

    def delete(self, key: StorageKey) -> None:
        """Not offered: job-service decides what is deleted."""
        raise BlobStoreError("deleting is not offered through BlobService")

    def delete_prefix(self, prefix: StorageKey) -> int:
        """Not offered."""
        raise BlobStoreError("deleting is not offered through BlobService")

    def list(self, prefix: StorageKey | None = None) -> Iterator[BlobInfo]:
        """Not offered."""
        raise BlobStoreError("listing is not offered through BlobService")

    def rename(self, source: StorageKey, target: StorageKey) -> BlobInfo:
        """Not offered."""
        raise BlobStoreError("renaming is not offered through BlobService")

    def available_bytes(self) -> int | None:
        """job-service keeps the space; nothing to say here."""
        return None

    def sweep_partial_writes(self, older_than_seconds: float) -> int:
        """job-service sweeps its own storage."""
        return 0

    # -- errors and retries ----------------------------------------------------

    def _retrying(self, key: StorageKey, operation: Callable[[], T]) -> T:
        deadline = time.monotonic() + self._retry_for
        delay = 0.1
        while True:
            try:
                return operation()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                if code in _RETRYABLE and time.monotonic() + delay < deadline:
                    time.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, 5.0)
                    continue
                raise _store_error(key, exc) from None


def _write_messages(
    key: StorageKey, source: BinaryIO, start: int, size: int, finish: bool, origin: int = 0
):
    source.seek(start - origin)
    offset = start
    first = True
    while True:
        chunk = source.read(min(CHUNK_BYTES, size - offset))
        last = offset + len(chunk) >= size
        yield pb.WriteRequest(
            key=key.value if first else "",
            write_offset=offset,
            data=chunk,
            finish_write=finish and last,
        )
        first = False
        offset += len(chunk)
        if last:
            return


def _offset_refused(exc: grpc.RpcError) -> bool:
    """Whether job-service refused a Write because its write stands elsewhere
    (INVALID_ARGUMENT with a field violation on `write_offset`)."""
    if not hasattr(exc, "code") or exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return False
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        return False
    for detail in status.details if status is not None else ():
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request):
            return any(v.field == "write_offset" for v in request.field_violations)
    return False


def _store_error(key: StorageKey, exc: grpc.RpcError) -> BlobStoreError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return BlobNotFound(key)
    if "STORAGE_FULL" in str(exc) or "storage is full" in details:
        return StorageFull(f"cannot store {key.value!r}: job-service's storage is full")
    return BlobStoreError(f"BlobService refused {key.value!r}: {code.name}: {details[:200]}")


class _RemoteWriter:
    """Spools the bytes; `commit` sends them to job-service."""

    def __init__(self, store: RemoteBlobStore, key: StorageKey, spool: BinaryIO) -> None:
        self.key = key
        self._store = store
        self._spool = spool
        self._counter = HashingCounter()
        self._done = False

    @property
    def size_bytes(self) -> int:
        """Bytes written so far."""
        return self._counter.size_bytes

    def write(self, data: bytes) -> None:
        """Appends bytes to the spool."""
        if self._done:
            raise BlobWriteAborted(f"write to {self.key.value!r} already finished")
        self._spool.write(data)
        self._counter.update(data)

    def sha256_hex(self) -> str:
        """Lowercase hex SHA-256 so far."""
        return self._counter.hexdigest()

    def commit(self) -> BlobInfo:
        """Sends the object; it is visible once job-service finished the write."""
        if self._done:
            raise BlobWriteAborted(f"write to {self.key.value!r} already finished")
        try:
            self._store._send(self.key, self._spool, self.size_bytes, finish=True)
        finally:
            self.abort()
        return BlobInfo(key=self.key, size_bytes=self.size_bytes, sha256=self.sha256_hex())

    def abort(self) -> None:
        """Drops the spool."""
        self._done = True
        with contextlib.suppress(OSError):
            self._spool.close()

    def __enter__(self) -> _RemoteWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()


class _RemoteResumableWriter:
    """A resumable write held by job-service: this stream's bytes are spooled
    and sent at each checkpoint (and on finish)."""

    def __init__(self, store: RemoteBlobStore, key: StorageKey) -> None:
        self.key = key
        self._store = store
        status = store._query(key)
        self.committed_size = 0 if status.complete else status.committed_size
        self._buffer = bytearray()
        self._done = False

    @property
    def size_bytes(self) -> int:
        """Committed bytes plus what this stream buffered."""
        return self.committed_size + len(self._buffer)

    def write(self, data: bytes) -> None:
        """Buffers bytes (sent at the next checkpoint)."""
        if self._done:
            raise BlobWriteAborted(f"write to {self.key.value!r} already finished")
        self._buffer += data

    def _flush(self, finish: bool) -> int:
        response = self._store._send(
            self.key,
            io.BytesIO(bytes(self._buffer)),
            self.size_bytes,
            finish=finish,
            origin=self.committed_size,
        )
        # Keep what job-service did not commit yet (an object store commits
        # whole parts only): the next flush sends it again.
        kept = max(0, response.committed_size - self.committed_size)
        self._buffer = self._buffer[kept:]
        self.committed_size = max(self.committed_size, response.committed_size)
        return self.committed_size

    def checkpoint(self) -> int:
        """Sends what is buffered."""
        if self._buffer and not self._done:
            self._flush(finish=False)
        return self.committed_size

    def finish(self) -> BlobInfo:
        """Sends the rest and completes the object."""
        size = self.size_bytes
        self._flush(finish=True)
        self._buffer = bytearray()
        self._done = True
        return BlobInfo(key=self.key, size_bytes=size)

    def close(self) -> int:
        """Sends what is buffered and ends this stream."""
        committed = self.checkpoint()
        self._done = True
        return committed

    def abort(self) -> None:
        """Not offered: an unfinished write is job-service's to sweep."""
        self._done = True
        self._buffer = bytearray()


__all__ = ["LEASE_METADATA_KEY", "RemoteBlobStore"]
