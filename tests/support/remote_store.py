"""A job-service in a background thread and a lease on one of its jobs, so
tests can drive `RemoteBlobStore` (the store of a worker that knows only
job-service's address) from plain synchronous code.

`PrefixedStore` places a test's keys below the leased attempt's prefix: the
only place a worker may write. It maps keys and nothing else, so every
operation still goes through BlobService and its access rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from videojobs.jobservice.server import build_job_service
from videojobs.storage import BlobInfo, BlobNotFound, BlobStore, StorageKey
from videojobs.storage.local import LocalBlobStore
from videojobs.storage.remote import RemoteBlobStore

from support.scripted_worker import ScriptedWorker
from support.uploads import submit


class ThreadedJobService:
    """job-service (SQLite, local storage, port 0) on an event loop of its own thread."""

    def __init__(self, root: Path, **overrides: Any) -> None:
        from support.fuzzing import fuzz_settings

        root.mkdir(parents=True, exist_ok=True)
        self.storage_root = root / "data" / "storage"
        self.settings = fuzz_settings(root / "data", **overrides)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.address = ""
        self._app = None
        self._worker: ScriptedWorker | None = None
        self.lease_token = ""
        self.output_prefix = ""

    def run(self, coroutine, timeout: float = 60.0):
        """Runs `coroutine` on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def start(self, video: bytes) -> ThreadedJobService:
        """Starts the server and takes a lease on a job of `video`."""
        self._thread.start()

        async def start() -> None:
            self._app = build_job_service(self.settings)
            self.address = await self._app.start()
            import grpc

            from videojobs.v1 import job_service_pb2_grpc

            async with grpc.aio.insecure_channel(self.address) as channel:
                await submit(job_service_pb2_grpc.JobServiceStub(channel), video)
            self._worker = ScriptedWorker(self.address)
            await self._worker.__aenter__()
            assignment = await self._worker.next("assignment")
            self.lease_token = assignment.lease_token
            self.output_prefix = assignment.output_prefix

        self.run(start())
        return self

    def stop(self) -> None:
        """Stops the worker session, the server and the loop."""

        async def stop() -> None:
            if self._worker is not None:
                await self._worker.disconnect()
            if self._app is not None:
                await self._app.stop()

        with contextlib.suppress(Exception):
            self.run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def server_store(self) -> LocalBlobStore:
        """job-service's own storage (a second handle on its root)."""
        return LocalBlobStore(self.storage_root)


class PrefixedStore:
    """A BlobStore whose keys live below `prefix` of another store."""

    def __init__(self, inner: BlobStore, prefix: StorageKey) -> None:
        self._inner = inner
        self._prefix = prefix

    def _key(self, key: StorageKey) -> StorageKey:
        return self._prefix.child(key.value)

    def _info(self, info: BlobInfo) -> BlobInfo:
        relative = info.key.value.removeprefix(self._prefix.value + "/")
        return BlobInfo(StorageKey(relative), info.size_bytes, info.sha256, info.modified_at)

    def open_writer(self, key):
        return _PrefixedWriter(self._inner.open_writer(self._key(key)), key)

    def open_read(self, key):
        with self._own_keys(key):
            return self._inner.open_read(self._key(key))

    def stat(self, key):
        with self._own_keys(key):
            return self._info(self._inner.stat(self._key(key)))

    @contextlib.contextmanager
    def _own_keys(self, key: StorageKey):
        """BlobNotFound names the key the caller asked for."""
        try:
            yield
        except BlobNotFound:
            raise BlobNotFound(key) from None

    def exists(self, key):
        return self._inner.exists(self._key(key))

    def delete(self, key):
        return self._inner.delete(self._key(key))

    def delete_prefix(self, prefix):
        return self._inner.delete_prefix(self._key(prefix))

    def list(self, prefix=None) -> Iterator[BlobInfo]:
        below = self._prefix if prefix is None else self._key(prefix)
        return (self._info(info) for info in self._inner.list(below))

    def rename(self, source, target):
        with self._own_keys(source):
            return self._info(self._inner.rename(self._key(source), self._key(target)))

    def open_resumable(self, key):
        return _PrefixedResumable(self._inner.open_resumable(self._key(key)), key)

    def resumable_status(self, key):
        return self._inner.resumable_status(self._key(key))

    def available_bytes(self):
        return self._inner.available_bytes()

    def sweep_partial_writes(self, older_than_seconds: float) -> int:
        return self._inner.sweep_partial_writes(older_than_seconds)

    def close(self) -> None:
        self._inner.close()


class _PrefixedWriter:
    def __init__(self, inner, key: StorageKey) -> None:
        self._inner = inner
        self.key = key

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def commit(self) -> BlobInfo:
        info = self._inner.commit()
        return BlobInfo(self.key, info.size_bytes, info.sha256, info.modified_at)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self._inner.abort()


class _PrefixedResumable:
    def __init__(self, inner, key: StorageKey) -> None:
        self._inner = inner
        self.key = key

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def finish(self) -> BlobInfo:
        info = self._inner.finish()
        return BlobInfo(self.key, info.size_bytes, info.sha256, info.modified_at)


def remote_store(server: ThreadedJobService, sub_prefix: str) -> PrefixedStore:
    """A worker's store on `server`, holding the lease, below `sub_prefix` of
    the attempt's output prefix."""
    prefix = StorageKey(server.output_prefix).child(sub_prefix)
    return PrefixedStore(RemoteBlobStore(server.address, lease_token=server.lease_token), prefix)


def admin_view(server: ThreadedJobService, sub_prefix: str) -> PrefixedStore:
    """The same keys seen in job-service's own storage (to list and delete)."""
    prefix = StorageKey(server.output_prefix).child(sub_prefix)
    return PrefixedStore(server.server_store(), prefix)
