"""Which uploads may start and keep going: counts, time, space.

An upload holds a temporary file, buffers and a slot of the server for as
long as its client likes unless something says otherwise. `UploadAdmission`
bounds how many run at once (overall and per peer); `StorageBudget` refuses
an upload that would cross the free-space reserve or the storage quota, at
the start (with the size the header announces) and again as bytes arrive;
`with_idle_timeout` ends a stream whose client went quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TypeVar

from videojobs.common import errors
from videojobs.jobservice.limits import UploadLimits
from videojobs.storage import BlobStore

# How long a client refused for load or space is told to wait.
BUSY_RETRY_SECONDS = 1.0
SPACE_RETRY_SECONDS = 30.0
# Free space is re-checked after at most this many bytes of an upload.
SPACE_CHECK_EVERY_BYTES = 16 * 1024 * 1024

Item = TypeVar("Item")


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string (`ipv4:10.0.0.7:51234` ->
    `ipv4:10.0.0.7`): uploads are counted per client machine, not per port."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class UploadAdmission:
    """Counts uploads in progress, overall and per peer."""

    def __init__(self, limits: UploadLimits) -> None:
        self._limits = limits
        self._per_peer: Counter[str] = Counter()
        self._per_tenant: Counter[str] = Counter()
        self._total = 0

    @property
    def active(self) -> int:
        """Uploads in progress."""
        return self._total

    @contextlib.contextmanager
    def admit(self, peer: str, tenant: str = "") -> Iterator[None]:
        """Holds an upload slot for `peer` of `tenant`; RESOURCE_EXHAUSTED
        (TOO_MANY_UPLOADS, with RetryInfo) when none is free."""
        host = peer_host(peer)
        limits = self._limits
        if self._total >= limits.max_concurrent_uploads:
            raise _too_many(limits.max_concurrent_uploads, "server", "the server takes")
        if self._per_peer[host] >= limits.max_uploads_per_peer:
            raise _too_many(limits.max_uploads_per_peer, "peer", "one client may send")
        if 0 < limits.max_uploads_per_tenant <= self._per_tenant[tenant]:
            raise _too_many(limits.max_uploads_per_tenant, "tenant", "one tenant may send")
        self._total += 1
        self._per_peer[host] += 1
        self._per_tenant[tenant] += 1
        try:
            yield
        finally:
            self._total -= 1
            for counter, key in ((self._per_peer, host), (self._per_tenant, tenant)):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]


def _too_many(limit: int, scope: str, who: str) -> errors.ServiceError:
    return errors.resource_exhausted(
        f"{who} at most {limit} uploads at once; retry when one has finished",
        "TOO_MANY_UPLOADS",
        BUSY_RETRY_SECONDS,
        limit=str(limit),
        scope=scope,
    )


class StorageBudget:
    """Free-space reserve and storage quota, shared by every upload in flight.

    Each upload in flight has *promised* bytes (the size its header announced,
    or what has arrived when that is more) and *written* bytes. Written bytes
    already show in the filesystem's free space; the rest of a promise does
    not yet, so it is subtracted before comparing with the reserve. The quota
    counts the inputs of stored jobs plus every promise in flight.
    """

    def __init__(
        self,
        limits: UploadLimits,
        blob_store: BlobStore,
        stored_bytes: Callable[[], Awaitable[int]],
    ) -> None:
        self._limits = limits
        self._blob_store = blob_store
        self._stored_bytes = stored_bytes
        self._promised = 0
        self._written = 0

    async def check(self) -> None:
        """RESOURCE_EXHAUSTED (with RetryInfo) when the uploads in flight would
        cross the quota or the free-space reserve."""
        if self._limits.storage_quota_bytes > 0:
            stored = await self._stored_bytes()
            if stored + self._promised > self._limits.storage_quota_bytes:
                raise errors.resource_exhausted(
                    "the storage quota is used up; retry after jobs are deleted",
                    "STORAGE_QUOTA_EXCEEDED",
                    SPACE_RETRY_SECONDS,
                    quota_bytes=str(self._limits.storage_quota_bytes),
                )
        available = await asyncio.to_thread(self._blob_store.available_bytes)
        if available is not None:
            still_coming = max(0, self._promised - self._written)
            if available - still_coming < self._limits.min_free_bytes:
                raise errors.resource_exhausted(
                    "the server is short of storage space; retry later",
                    "INSUFFICIENT_STORAGE",
                    SPACE_RETRY_SECONDS,
                    reserve_bytes=str(self._limits.min_free_bytes),
                )

    @contextlib.contextmanager
    def reserve(self) -> Iterator[Reservation]:
        """Counts one upload's bytes in flight until it ends."""
        reservation = Reservation(self)
        try:
            yield reservation
        finally:
            self._promised -= reservation.promised
            self._written -= reservation.written


class Reservation:
    """The bytes one upload has promised and written."""

    def __init__(self, budget: StorageBudget) -> None:
        self._budget = budget
        self.promised = 0
        self.written = 0
        self._checked_at = 0

    async def promise(self, announced_bytes: int) -> None:
        """Counts the size the header announced and checks it fits."""
        self._set(max(announced_bytes, self.written), self.written)
        await self._budget.check()

    async def wrote(self, total_written: int) -> None:
        """Counts bytes that arrived; re-checks every SPACE_CHECK_EVERY_BYTES."""
        self._set(max(self.promised, total_written), total_written)
        if total_written - self._checked_at >= SPACE_CHECK_EVERY_BYTES:
            self._checked_at = total_written
            await self._budget.check()

    def _set(self, promised: int, written: int) -> None:
        self._budget._promised += promised - self.promised
        self._budget._written += written - self.written
        self.promised, self.written = promised, written


async def with_idle_timeout(
    items: AsyncIterator[Item], idle_timeout_seconds: float
) -> AsyncIterator[Item]:
    """`items`, ending with DEADLINE_EXCEEDED (UPLOAD_IDLE_TIMEOUT) when the
    next one takes longer than `idle_timeout_seconds` to arrive."""
    iterator = aiter(items)
    while True:
        try:
            item = await asyncio.wait_for(anext(iterator), idle_timeout_seconds)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise errors.deadline_exceeded(
                f"no upload message arrived for {idle_timeout_seconds:g}s; the upload was dropped",
                "UPLOAD_IDLE_TIMEOUT",
                idle_timeout_seconds=f"{idle_timeout_seconds:g}",
            ) from None
        yield item
