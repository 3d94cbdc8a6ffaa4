"""Local-directory BlobStore: one directory is the storage root.

The root is made absolute once, at construction, from configuration. Keys map
to paths below it; every mapped path is checked to stay inside the root (also
through symlinks). Writes go to a temporary file under `<root>/.partial` and are
renamed into place, so a reader never sees half an object and a broken-off
write leaves nothing under its key. No method returns or raises a host path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from videojobs.storage.blobstore import (
    BlobInfo,
    BlobNotFound,
    BlobWriteAborted,
    HashingCounter,
    storage_error,
)
from videojobs.storage.keys import InvalidStorageKey, StorageKey

PARTIAL_DIR = ".partial"
# Resumable writes live here between streams, one file per key.
RESUMABLE_DIR = "resumable"


class KeyOutsideRoot(InvalidStorageKey):
    """The key would resolve outside the storage root (for example via a symlink)."""


class LocalBlobStore:
    """A BlobStore over a local directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        resolved = Path(root).expanduser().resolve()
        resolved.mkdir(parents=True, exist_ok=True)
        self._root = resolved
        self._partial_dir = resolved / PARTIAL_DIR
        self._partial_dir.mkdir(exist_ok=True)
        self._resumable_dir = self._partial_dir / RESUMABLE_DIR
        self._resumable_dir.mkdir(exist_ok=True)

    def describe(self) -> str:
        """Where the store lives, for the operator's start-up log only."""
        return f"local directory {self._root}"

    # -- key to path ---------------------------------------------------------

    def _path_for(self, key: StorageKey) -> Path:
        if key.segments[0] == PARTIAL_DIR:
            raise InvalidStorageKey(f"must not start with the reserved segment {PARTIAL_DIR!r}")
        candidate = self._root.joinpath(*key.segments)
        # realpath follows symlinks that already exist on the way; a key is
        # refused when the place it lands is not below the root.
        real = Path(os.path.realpath(candidate))
        if real != self._root and self._root not in real.parents:
            raise KeyOutsideRoot("resolves outside the storage root")
        if real == self._partial_dir or self._partial_dir in real.parents:
            raise KeyOutsideRoot("resolves into the store's temporary area")
        return candidate

    def contains(self, key: StorageKey) -> bool:
        """Whether `key` maps to a place inside the root (the containment check)."""
        try:
            self._path_for(key)
        except KeyOutsideRoot:
            return False
        return True

    # -- operations ----------------------------------------------------------

    def open_writer(self, key: StorageKey) -> _LocalBlobWriter:
        """Starts an atomic write of the object under `key`."""
        return _LocalBlobWriter(key, self._path_for(key), self._partial_dir)

    def open_read(self, key: StorageKey) -> BinaryIO:
        """Opens the object for reading. Raises BlobNotFound."""
        path = self._path_for(key)
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise storage_error(key, "read", exc) from None

    def stat(self, key: StorageKey) -> BlobInfo:
        """Size of the object. Raises BlobNotFound."""
        path = self._path_for(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(key) from None
        if not path.is_file():
            raise BlobNotFound(key)
        return BlobInfo(key=key, size_bytes=st.st_size, modified_at=_mtime(st.st_mtime))

    def exists(self, key: StorageKey) -> bool:
        """Whether an object is stored under `key`."""
        return self._path_for(key).is_file()

    def delete(self, key: StorageKey) -> None:
        """Deletes the object; missing is fine (a key that names a directory
        of other objects holds no object itself). Empty parent directories go too."""
        path = self._path_for(key)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            path.unlink()
        self._prune_empty_dirs(path.parent)

    def delete_prefix(self, prefix: StorageKey) -> int:
        """Deletes every object below `prefix`; returns how many."""
        count = 0
        for info in list(self.list(prefix)):
            self.delete(info.key)
            count += 1
        return count

    def list(self, prefix: StorageKey | None = None) -> Iterator[BlobInfo]:
        """Objects below `prefix` (all when None), in key order."""
        base = self._root if prefix is None else self._path_for(prefix)
        if not base.is_dir():
            return
        found: list[BlobInfo] = []
        for dirpath, dirnames, filenames in os.walk(base):
            current = Path(dirpath)
            if current == self._root:
                dirnames[:] = [d for d in dirnames if d != PARTIAL_DIR]
            relative_dir = current.relative_to(self._root)
            for filename in filenames:
                try:
                    key = StorageKey.join(*relative_dir.parts, filename)
                    st = (current / filename).stat()
                except InvalidStorageKey:
                    continue  # a file put there by hand under a name no key can have
                except FileNotFoundError:
                    continue  # deleted while we walked
                found.append(
                    BlobInfo(key=key, size_bytes=st.st_size, modified_at=_mtime(st.st_mtime))
                )
        yield from sorted(found, key=lambda info: info.key.value)

    def close(self) -> None:
        """Nothing to release: files are opened per operation."""

    def rename(self, source: StorageKey, target: StorageKey) -> BlobInfo:
        """Moves `source` to `target` (one rename within the root)."""
        source_path, target_path = self._path_for(source), self._path_for(target)
        if not source_path.is_file():
            raise BlobNotFound(source)
        try:
            target_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source_path, target_path)
            sync_directory(target_path.parent)
        except FileNotFoundError:
            raise BlobNotFound(source) from None
        except OSError as exc:
            raise storage_error(target, "store", exc) from None
        self._prune_empty_dirs(source_path.parent)
        return self.stat(target)

    def open_resumable(self, key: StorageKey) -> _LocalResumableWriter:
        """Starts or resumes the resumable write of `key` (its bytes so far sit
        in one file under the temporary area, named by the key's hash)."""
        return _LocalResumableWriter(key, self._path_for(key), self._resumable_path(key))

    def resumable_status(self, key: StorageKey) -> int | None:
        """Committed bytes of the unfinished resumable write of `key`, or None."""
        self._path_for(key)  # validates the key like every other operation
        try:
            return self._resumable_path(key).stat().st_size
        except FileNotFoundError:
            return None

    def _resumable_path(self, key: StorageKey) -> Path:
        return self._resumable_dir / (hashlib.sha256(key.value.encode()).hexdigest() + ".part")

    def available_bytes(self) -> int | None:
        """Free bytes on the root's filesystem, for unprivileged writers."""
        st = os.statvfs(self._root)
        return st.f_bavail * st.f_frsize

    def sweep_partial_writes(self, older_than_seconds: float) -> int:
        """Removes temporary files of writes that died (process killed mid-write)."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for directory in (self._partial_dir, self._resumable_dir):
            for entry in directory.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if entry.is_file() and entry.stat().st_mtime < cutoff:
                        entry.unlink()
                        removed += 1
        return removed

    def _prune_empty_dirs(self, directory: Path) -> None:
        while directory != self._root and self._root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or already gone): stop climbing
            directory = directory.parent


def sync_directory(path: Path) -> None:
    """fsyncs a directory, so a file renamed into it stays there through a
    power loss (the file's own bytes are fsynced before the rename)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _mtime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class _LocalBlobWriter:
    """Writes into a temp file and renames it into place on commit."""

    def __init__(self, key: StorageKey, final_path: Path, partial_dir: Path) -> None:
        self.key = key
        self._final_path = final_path
        try:
            fd, temp_name = tempfile.mkstemp(dir=partial_dir, prefix="w-", suffix=".partial")
        except OSError as exc:
            raise storage_error(key, "write", exc) from None
        self._temp_path = Path(temp_name)
        self._file = os.fdopen(fd, "wb")
        self._counter = HashingCounter()
        self._done = False

    @property
    def size_bytes(self) -> int:
        """Bytes written so far."""
        return self._counter.size_bytes

    def write(self, data: bytes) -> None:
        """Appends bytes."""
        if self._done:
            raise BlobWriteAborted(f"write to {self.key.value!r} already finished")
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise storage_error(self.key, "write", exc) from None
        self._counter.update(data)

    def sha256_hex(self) -> str:
        """Lowercase hex SHA-256 of everything written so far."""
        return self._counter.hexdigest()

    def read_back(self) -> BinaryIO:
        """Opens the bytes written so far for reading (not yet published)."""
        if self._done:
            raise BlobWriteAborted(f"write to {self.key.value!r} already finished")
        self._file.flush()
        return open(self._temp_path, "rb")  # noqa: SIM115 - the caller closes it

    def commit(self) -> BlobInfo:
        """Flushes, fsyncs and renames the temp file into place."""
        if self._done:
            raise BlobWriteAborted(f"write to {self.key.value!r} already finished")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._final_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._temp_path, self._final_path)
            sync_directory(self._final_path.parent)
        except OSError as exc:
            self.abort()
            raise storage_error(self.key, "store", exc) from None
        self._done = True
        return BlobInfo(key=self.key, size_bytes=self.size_bytes, sha256=self.sha256_hex())

    def abort(self) -> None:
        """Throws the written bytes away."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._temp_path.unlink()

    def __enter__(self) -> _LocalBlobWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()


class _LocalResumableWriter:
    """Appends to the key's resumable file; `finish` renames it into place.

    The file's size is the committed size: bytes are flushed and fsynced at
    every checkpoint and when the stream ends, so what a client is told was
    committed survives a crash of the machine.
    """

    def __init__(self, key: StorageKey, final_path: Path, part_path: Path) -> None:
        self.key = key
        self._final_path = final_path
        self._part_path = part_path
        try:
            self._file = open(part_path, "ab")  # noqa: SIM115 - closed by finish/close/abort
        except OSError as exc:
            raise storage_error(key, "write", exc) from None
        self.committed_size = self._file.tell()
        self._size = self.committed_size
        self._done = False

    @property
    def size_bytes(self) -> int:
        """Committed bytes plus those written by this stream."""
        return self._size

    def write(self, data: bytes) -> None:
        """Appends bytes."""
        if self._done:
            raise BlobWriteAborted(f"write to {self.key.value!r} already finished")
        try:
            self._file.write(data)
        except OSError as exc:
            self.close()
            raise storage_error(self.key, "write", exc) from None
        self._size += len(data)

    def checkpoint(self) -> int:
        """Flushes and fsyncs what this stream wrote."""
        if not self._done:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                self.close()
                raise storage_error(self.key, "write", exc) from None
            self.committed_size = self._size
        return self.committed_size

    def finish(self) -> BlobInfo:
        """Fsyncs and renames the file into place."""
        self.checkpoint()
        self._done = True
        try:
            self._file.close()
            self._final_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._part_path, self._final_path)
            sync_directory(self._final_path.parent)
        except OSError as exc:
            raise storage_error(self.key, "store", exc) from None
        return BlobInfo(key=self.key, size_bytes=self._size)

    def close(self) -> int:
        """Ends this stream; what reached the file stays for the next one."""
        if not self._done:
            self._done = True
            with contextlib.suppress(OSError):
                self._file.flush()
                os.fsync(self._file.fileno())
            with contextlib.suppress(OSError):
                self._file.close()
            with contextlib.suppress(OSError):
                self.committed_size = self._part_path.stat().st_size
        return self.committed_size

    def abort(self) -> None:
        """Drops the write."""
        self._done = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._part_path.unlink()
