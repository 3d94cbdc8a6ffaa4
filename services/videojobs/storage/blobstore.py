"""The BlobStore interface: bytes by relative key.

The interface is synchronous on purpose: pipelines run in worker child
processes with plain blocking I/O (PyAV reads file objects), and async callers
in the servers run each call in a thread (`asyncio.to_thread`), so the event
loop never blocks on storage.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol

from videojobs.storage.keys import StorageKey


class BlobStoreError(Exception):
    """A storage operation failed. The message names the key, never a host path."""


class BlobNotFound(BlobStoreError):
    """No object is stored under the key."""

    def __init__(self, key: StorageKey) -> None:
        super().__init__(f"no object stored under key {key.value!r}")
        self.key = key


class BlobWriteAborted(BlobStoreError):
    """A write was abandoned before commit; nothing was published."""


class StorageFull(BlobStoreError):
    """The storage has no room left (a full disk or an exceeded disk quota).

    `storage_full` lets layers that do not import this package recognise it
    (see `videojobs.common.errors.resource_error_for`)."""

    storage_full = True


def storage_error(key: StorageKey, action: str, exc: OSError) -> BlobStoreError:
    """The BlobStoreError for an OSError while `action`-ing `key`: StorageFull
    for a full disk, a plain BlobStoreError otherwise (never a host path)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"cannot {action} {key.value!r}: no space left in storage")
    return BlobStoreError(f"cannot {action} {key.value!r}: {exc.strerror or type(exc).__name__}")


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What a store knows about one object."""

    key: StorageKey
    size_bytes: int
    sha256: str | None = None
    # When the object was last written, where the backend knows (for sweeps).
    modified_at: datetime | None = None


class BlobWriter(Protocol):
    """An in-progress atomic write. Nothing is visible under the key until `commit`.

    Use as a context manager: leaving the block without `commit` (an error, a
    broken-off upload) aborts and removes every trace of the write.
    """

    key: StorageKey
    size_bytes: int

    def write(self, data: bytes) -> None:
        """Appends bytes."""

    def sha256_hex(self) -> str:
        """Lowercase hex SHA-256 of everything written so far."""

    def commit(self) -> BlobInfo:
        """Publishes the object atomically (replacing any object under the key)."""

    def abort(self) -> None:
        """Throws the written bytes away. Safe to call more than once."""

    def __enter__(self) -> BlobWriter: ...

    def __exit__(self, *exc_info: object) -> None: ...


class ResumableWriter(Protocol):
    """One stream of a resumable write: bytes appended after what an earlier,
    broken-off stream committed. The state lives in the store, not in this
    object, so a write survives a dropped connection and a server restart.

    `committed_size` is what the store holds durably; a client that lost its
    stream resumes from there. It may be less than what was sent (an object
    store commits whole parts only), never more.
    """

    key: StorageKey
    committed_size: int

    @property
    def size_bytes(self) -> int:
        """Bytes of the object so far: committed plus what this stream buffered."""

    def write(self, data: bytes) -> None:
        """Appends bytes at `size_bytes`."""

    def checkpoint(self) -> int:
        """Makes durable as much as the store can now; returns `committed_size`."""

    def finish(self) -> BlobInfo:
        """Publishes the object under the key; the write is complete."""

    def close(self) -> int:
        """Ends this stream, keeping what is committed for a later one (bytes
        buffered but not committed are dropped); returns `committed_size`."""

    def abort(self) -> None:
        """Drops the whole write, committed bytes included."""


class BlobStore(Protocol):
    """Stores bytes under relative keys. Implementations: `LocalBlobStore`,
    `S3BlobStore`, and `RemoteBlobStore` (through job-service's BlobService)."""

    def open_writer(self, key: StorageKey) -> BlobWriter:
        """Starts an atomic write of the object under `key`."""

    def open_read(self, key: StorageKey) -> BinaryIO:
        """Opens the object for reading (seekable). Raises BlobNotFound."""

    def stat(self, key: StorageKey) -> BlobInfo:
        """Size of the object. Raises BlobNotFound."""

    def exists(self, key: StorageKey) -> bool:
        """Whether an object is stored under `key`."""

    def delete(self, key: StorageKey) -> None:
        """Deletes the object; a missing object is not an error."""

    def delete_prefix(self, prefix: StorageKey) -> int:
        """Deletes every object below `prefix`; returns how many."""

    def list(self, prefix: StorageKey | None = None) -> Iterator[BlobInfo]:
        """Objects below `prefix` (all objects when None), in key order."""

    def rename(self, source: StorageKey, target: StorageKey) -> BlobInfo:
        """Moves the object under `source` to `target` (replacing any object
        there); `source` is gone afterwards. Raises BlobNotFound."""

    def open_resumable(self, key: StorageKey) -> ResumableWriter:
        """Starts, or resumes, the resumable write of the object under `key`."""

    def resumable_status(self, key: StorageKey) -> int | None:
        """Committed bytes of an unfinished resumable write of `key`, or None
        when none is in progress."""

    def available_bytes(self) -> int | None:
        """Free space left for new objects, or None where the backend has no
        such limit (object stores)."""

    def sweep_partial_writes(self, older_than_seconds: float) -> int:
        """Removes what writes that died mid-way left behind (temporary files,
        unfinished multipart uploads, resumable writes nobody resumed) older
        than `older_than_seconds`; returns how many."""

    def close(self) -> None:
        """Releases connections and threads the store holds (call at shutdown)."""


class HashingCounter:
    """Keeps the running size and SHA-256 of a stream of bytes."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.size_bytes = 0

    def update(self, data: bytes) -> None:
        """Accounts for `data`."""
        self._sha256.update(data)
        self.size_bytes += len(data)

    def hexdigest(self) -> str:
        """Lowercase hex SHA-256 so far."""
        return self._sha256.hexdigest()


def put_bytes(store: BlobStore, key: StorageKey, data: bytes) -> BlobInfo:
    """Writes `data` under `key` atomically."""
    with store.open_writer(key) as writer:
        writer.write(data)
        return writer.commit()
