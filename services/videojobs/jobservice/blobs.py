"""BlobService's logic: who may touch which key, and moving the bytes.

Reads stream from the BlobStore a chunk at a time (never a whole object in
memory); writes are resumable writes of the store, one stream per key at a
time. Staged uploads (`uploads/{id}`) are checked as they arrive, like a
SubmitVideo stream: their first bytes must start an allowed container and
they may not grow past the largest upload.

Access rules (see proto/videojobs/v1/blob_service.proto): a client may read
the input of its tenant's jobs and the outputs of those that SUCCEEDED (an
administrator: of every tenant's); a worker holding a job's current lease may
read its input and read and write under the attempt's prefix; a staged upload
(`uploads/{id}`) belongs to the tenant that first wrote it, which alone may
write, query, read and submit it. Everything else reads as NOT_FOUND
(existence never leaks) and writes as PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from videojobs.common import errors
from videojobs.common.aio import run_to_completion
from videojobs.common.auth import LOCAL_PRINCIPAL, Principal, Role
from videojobs.common.logs import bind_log_fields
from videojobs.jobservice.domain import (
    Assignment,
    JobState,
    attempt_prefix_for,
    is_staged_upload_key,
    job_id_of,
)
from videojobs.jobservice.limits import MAX_CHUNK_BYTES, MAX_LEASE_TOKEN_CHARS, WRITE_BATCH_BYTES
from videojobs.jobservice.metrics import UPLOAD_BYTES
from videojobs.jobservice.store import Database
from videojobs.jobservice.store.models import JobRow
from videojobs.jobservice.upload_admission import StorageBudget, UploadAdmission
from videojobs.pipelines.containers import (
    SNIFF_BYTES,
    NotAContainer,
    UnsupportedContainer,
    sniff_container,
)
from videojobs.storage import BlobNotFound, BlobStore, InvalidStorageKey, StorageKey
from videojobs.storage.blobstore import ResumableWriter

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1024 * 1024
# A resumable stream makes its bytes durable (fsync, a finished part) at
# least this often, so a broken stream loses little.
CHECKPOINT_EVERY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class BlobInfoView:
    """What GetBlobInfo answers."""

    key: StorageKey
    size_bytes: int
    modified_at: datetime | None


@dataclass(frozen=True)
class WriteStatus:
    """Committed bytes of a write and whether it is complete."""

    committed_size: int
    complete: bool


@dataclass(frozen=True)
class WriteChunk:
    """One message of a Write stream, as plain values."""

    key: str
    offset: int
    data: bytes
    finish: bool


def parse_key(value: str, field: str = "key") -> StorageKey:
    """A StorageKey, or INVALID_ARGUMENT naming `field`."""
    try:
        return StorageKey(value)
    except InvalidStorageKey as exc:
        raise errors.invalid_argument(
            "the key is not a valid relative storage key",
            [(field, exc.reason)],
            reason="INVALID_STORAGE_KEY",
        ) from None


def _not_found(key: StorageKey) -> errors.ServiceError:
    return errors.not_found(f"no object {key.value!r} that this caller may read", "BLOB_NOT_FOUND")


def _not_writable(key: StorageKey) -> errors.ServiceError:
    return errors.ServiceError(
        f"this caller may not write {key.value!r}",
        "PERMISSION_DENIED",
        "KEY_NOT_WRITABLE",
    )


class BlobAccess:
    """Application service behind BlobService."""

    def __init__(
        self,
        database: Database,
        blob_store: BlobStore,
        *,
        max_upload_bytes: int,
        admission: UploadAdmission,
        budget: StorageBudget,
        held_assignment: Callable[[str, str], Assignment | None] | None = None,
    ) -> None:
        self._database = database
        # The leases this replica's worker sessions hold (job_id, token ->
        # Assignment): a worker's call under its own lease needs no read.
        self._held_assignment = held_assignment or (lambda job_id, token: None)
        self._store = blob_store
        self._max_upload_bytes = max_upload_bytes
        self._admission = admission
        self._budget = budget
        self._writing: set[str] = set()
        self._staged_digests = _StagedDigests()

    # -- who may touch what ----------------------------------------------------

    @staticmethod
    def _lease_prefix(row: JobRow | None, lease_token: str) -> StorageKey | None:
        """The output prefix of the attempt `lease_token` currently holds on
        the job of `row`, or None."""
        if not lease_token or len(lease_token) > MAX_LEASE_TOKEN_CHARS or row is None:
            return None
        if row.state != JobState.RUNNING.value or row.lease_token != lease_token:
            return None
        return attempt_prefix_for(row.job_id, row.attempt, row.tenant)

    def _held_here(self, job_id: str, principal: Principal, lease_token: str) -> Assignment | None:
        """The assignment `lease_token` holds on the job in a worker session
        of this replica (what the database would say, without reading it; a
        lease ended by another replica is forgotten when its notice
        arrives). Clients never act under a lease."""
        if not lease_token or principal.role is Role.CLIENT:
            return None
        return self._held_assignment(job_id, lease_token)

    async def _job_row(self, job_id: str) -> JobRow | None:
        async with self._database.reading() as repository:
            return await repository.get_row(job_id)

    async def may_read(
        self, key: StorageKey, principal: Principal = LOCAL_PRINCIPAL, lease_token: str = ""
    ) -> bool:
        """Whether the caller may read `key` (see the module docstring). One
        read of the job's row decides it."""
        if is_staged_upload_key(key):
            return await self._owns_upload(key, principal)
        job_id = job_id_of(key)
        if job_id is None:
            return False
        held = self._held_here(job_id, principal, lease_token)
        if held is not None and (key == held.input_key or key.is_within(held.output_prefix)):
            return True
        row = await self._job_row(job_id)
        if row is None:
            return False
        if principal.role is not Role.WORKER:
            if not principal.sees_tenant(row.tenant):
                return False
            if key.value == row.input_key:
                return True
            if row.state == JobState.SUCCEEDED.value and row.output_key:
                winner = StorageKey(row.output_key.rsplit("/", 1)[0])
                if key.is_within(winner):
                    return True
            if principal.role is Role.CLIENT:
                return False
        prefix = self._lease_prefix(row, lease_token)
        return prefix is not None and (key.is_within(prefix) or key.value == row.input_key)

    async def _owns_upload(self, key: StorageKey, principal: Principal) -> bool:
        """Whether the staged upload belongs to the principal's tenant (an
        upload nobody wrote yet belongs to nobody)."""
        if principal.role is Role.WORKER:
            return False
        async with self._database.reading() as repository:
            owner = await repository.staged_upload_owner(key.value)
        return owner is not None and (principal.is_admin or owner == principal.tenant)

    async def may_write(
        self, key: StorageKey, principal: Principal = LOCAL_PRINCIPAL, lease_token: str = ""
    ) -> bool:
        """Whether the caller may write `key`: a staged upload its tenant owns
        (or nobody owns yet), or a key under the prefix of a lease it holds."""
        if is_staged_upload_key(key):
            if principal.role is Role.WORKER:
                return False
            async with self._database.reading() as repository:
                owner = await repository.staged_upload_owner(key.value)
            return owner is None or owner == principal.tenant
        if principal.role is Role.CLIENT:
            return False
        job_id = job_id_of(key)
        if job_id is None or not lease_token:
            return False
        held = self._held_here(job_id, principal, lease_token)
        if held is not None:
            return key.is_within(held.output_prefix)
        prefix = self._lease_prefix(await self._job_row(job_id), lease_token)
        return prefix is not None and key.is_within(prefix)

    async def _claim_upload(self, key: StorageKey, principal: Principal) -> None:
        """Makes the principal's tenant the owner of a new staged upload; a
        race lost to another tenant is PERMISSION_DENIED like any other key."""
        try:
            async with self._database.transaction() as repository:
                if await repository.staged_upload_owner(key.value) is None:
                    await repository.claim_staged_upload(key.value, principal.tenant)
        except IntegrityError:
            pass
        async with self._database.reading() as repository:
            owner = await repository.staged_upload_owner(key.value)
        if owner != principal.tenant:
            raise _not_writable(key)

    # -- reads -------------------------------------------------------------------

    async def info(
        self, key_text: str, principal: Principal = LOCAL_PRINCIPAL, lease_token: str = ""
    ) -> BlobInfoView:
        """Size and time of a readable object, or NOT_FOUND."""
        key = parse_key(key_text)
        if not await self.may_read(key, principal, lease_token):
            raise _not_found(key)
        try:
            info = await asyncio.to_thread(self._store.stat, key)
        except BlobNotFound:
            raise _not_found(key) from None
        return BlobInfoView(key, info.size_bytes, info.modified_at)

    async def read(
        self,
        key_text: str,
        offset: int,
        limit: int,
        principal: Principal = LOCAL_PRINCIPAL,
        lease_token: str = "",
    ) -> AsyncIterator[tuple[bytes, int]]:
        """(chunk, object size) pairs of a readable object from `offset`, at
        most `limit` bytes (0: to the end). Chunks of at most 1 MiB are read
        one at a time, so memory stays flat whatever the object's size."""
        key = parse_key(key_text)
        violations = []
        if offset < 0:
            violations.append(("read_offset", "must not be negative"))
        if limit < 0:
            violations.append(("read_limit", "must not be negative"))
        if violations:
            raise errors.invalid_argument("the read range is invalid", violations)
        if not await self.may_read(key, principal, lease_token):
            raise _not_found(key)
        try:
            # Opening, sizing, seeking and the first chunk take one thread
            # hand-off (a small object: the whole read, closed in it too).
            source, size, chunk = await asyncio.to_thread(
                _open_range, self._store, key, offset, limit
            )
        except BlobNotFound:
            raise _not_found(key) from None
        try:
            remaining = (size - offset if limit == 0 else min(limit, size - offset)) - len(chunk)
            yield chunk, size
            while remaining > 0 and source is not None:
                chunk = await asyncio.to_thread(source.read, min(READ_CHUNK_BYTES, remaining))
                if not chunk:
                    break  # the object shrank under us: end here
                remaining -= len(chunk)
                yield chunk, size
        finally:
            if source is not None:
                await asyncio.to_thread(source.close)

    # -- writes ------------------------------------------------------------------

    async def status(
        self, key_text: str, principal: Principal = LOCAL_PRINCIPAL, lease_token: str = ""
    ) -> WriteStatus:
        """Committed bytes of a write of `key`, and whether it is complete."""
        key = parse_key(key_text)
        if not await self.may_write(key, principal, lease_token):
            raise _not_writable(key)
        return await self._status(key)

    async def _status(self, key: StorageKey) -> WriteStatus:
        committed = await asyncio.to_thread(self._store.resumable_status, key)
        if committed is not None:
            return WriteStatus(committed, False)
        try:
            info = await asyncio.to_thread(self._store.stat, key)
        except BlobNotFound:
            return WriteStatus(0, False)
        return WriteStatus(info.size_bytes, True)

    async def write(
        self,
        messages: AsyncIterator[WriteChunk],
        principal: Principal = LOCAL_PRINCIPAL,
        lease_token: str = "",
        peer: str = "",
    ) -> WriteStatus:
        """Applies one Write stream; see the .proto for the rules."""
        first = await anext(messages, None)
        if first is None:
            raise errors.invalid_argument(
                "the write stream is empty", [("key", "the first message must name the key")]
            )
        key = parse_key(first.key)
        if not await self.may_write(key, principal, lease_token):
            raise _not_writable(key)
        bind_log_fields(job_id=job_id_of(key))
        staged = is_staged_upload_key(key)
        if staged:
            await run_to_completion(self._claim_upload(key, principal))
        if key.value in self._writing:
            raise errors.ServiceError(
                f"another stream is writing {key.value!r}", "ABORTED", "WRITE_IN_PROGRESS"
            )
        self._writing.add(key.value)
        try:
            with contextlib.ExitStack() as stack:
                if staged:
                    stack.enter_context(self._admission.admit(peer, principal.tenant))
                    reservation = stack.enter_context(self._budget.reserve())
                else:
                    reservation = None
                return await self._write(key, first, messages, staged, reservation)
        finally:
            self._writing.discard(key.value)

    async def _write(self, key, first, messages, staged: bool, reservation) -> WriteStatus:
        if staged and (await self._status(key)).complete:
            raise errors.already_exists(
                f"the upload {key.value!r} is already complete", "UPLOAD_COMPLETE"
            )
        writer: ResumableWriter = await asyncio.to_thread(self._store.open_resumable, key)
        # A staged upload is hashed on the way (in the writer thread), so
        # SubmitVideo need not read it again. A later stream of it goes on
        # with the hash of the streams before it when this process kept one
        # that covers exactly what is committed; otherwise submit hashes it.
        digest = self._staged_digests.resume(key, writer.committed_size) if staged else None
        batches = _BatchWriter(writer, digest, reservation)
        # Chunks are gathered up to WRITE_BATCH_BYTES and handed to the
        # writer together (one thread hand-off per batch, not per chunk), as
        # they came, never copied into one buffer; what is gathered is not
        # committed, so a broken stream resumes from before it.
        gathered = _Gathered()
        finished = False
        try:
            # A staged upload's first bytes are held back until they are
            # checked, so an earlier stream committed either nothing or more
            # than the head: `pending` is never split across streams.
            pending = b""
            checked = not staged or writer.committed_size > 0
            message = first
            while message is not None:
                if finished:
                    raise errors.invalid_argument(
                        "data after finish_write", [("finish_write", "was already set")]
                    )
                if message.key and message.key != key.value:
                    raise errors.invalid_argument(
                        "a write stream names one key", [("key", "differs from the first message")]
                    )
                stands_at = batches.handed_bytes + gathered.size + len(pending)
                if message.offset != stands_at:
                    raise errors.invalid_argument(
                        "write_offset is not where the write stands",
                        [("write_offset", f"the write stands at {stands_at} bytes")],
                    )
                if len(message.data) > MAX_CHUNK_BYTES:
                    raise errors.resource_exhausted(
                        f"a chunk may hold at most {MAX_CHUNK_BYTES} bytes", "CHUNK_TOO_LARGE"
                    )
                if staged and stands_at + len(message.data) > self._max_upload_bytes:
                    raise errors.resource_exhausted(
                        f"the upload is larger than this server accepts "
                        f"({self._max_upload_bytes} bytes)",
                        "UPLOAD_TOO_LARGE",
                        max_upload_bytes=str(self._max_upload_bytes),
                    )
                data = message.data
                if not checked:
                    pending += data
                    if len(pending) < SNIFF_BYTES and not message.finish:
                        message = await anext(messages, None)
                        continue
                    _check_head(pending[:SNIFF_BYTES])
                    checked = True
                    data, pending = pending, b""
                gathered.add(data)
                if message.finish:
                    await batches.hand_over(gathered, finish=True)
                    await batches.drain()
                    finished = True
                elif gathered.size >= WRITE_BATCH_BYTES:
                    await batches.hand_over(gathered)
                message = await anext(messages, None)
            if gathered.size:
                await batches.hand_over(gathered)  # ended without finishing: keep what came
            await batches.drain()
        except errors.ServiceError as exc:
            await batches.settle()
            if exc.reason in ("NOT_A_VIDEO", "UNSUPPORTED_CONTAINER", "UPLOAD_TOO_LARGE"):
                # A refused upload keeps nothing, committed bytes included.
                await asyncio.to_thread(batches.abort)
            else:
                await asyncio.to_thread(batches.close)
            raise
        except BaseException:
            if not finished:
                await asyncio.shield(_settle_and_close(batches))
            raise
        if finished:
            size = writer.size_bytes
            if digest is not None:
                await self._record_staged_digest(key, size, digest.hexdigest())
            log.info("blob %s written (%d bytes)", key.value, size)
            return WriteStatus(size, True)
        committed = await asyncio.to_thread(batches.close)
        if digest is not None and committed == batches.handed_bytes:
            self._staged_digests.keep(key, committed, digest)
        return WriteStatus(committed, False)

    async def _record_staged_digest(self, key: StorageKey, size: int, sha256: str) -> None:
        """Keeps the SHA-256 of a staged upload hashed while it was written,
        for SubmitVideo; losing it only costs that submit a read."""
        try:
            async with self._database.transaction() as repository:
                await repository.record_staged_upload_digest(key.value, size, sha256)
        except Exception:  # noqa: BLE001 - the upload itself is complete and durable
            log.warning("could not record the digest of %s; submit will hash it", key.value)


class _Gathered:
    """Received chunks waiting to be written, kept as they came."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        if data:
            self._pieces.append(data)
            self.size += len(data)

    def take(self) -> tuple[list[bytes], int]:
        """The chunks and their size; empties the gathering."""
        pieces, size = self._pieces, self.size
        self._pieces, self.size = [], 0
        return pieces, size


class _StagedDigests:
    """The running SHA-256 of staged uploads whose stream ended before they
    were finished, so the next stream (a client sends the head first, then
    the rest) can go on hashing. Kept in memory for the most recent ones
    only: a resume elsewhere, or of one forgotten here, is hashed at submit."""

    MAX_KEPT = 256

    def __init__(self) -> None:
        self._kept: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def resume(self, key: StorageKey, committed_size: int):
        """A hash covering exactly the `committed_size` first bytes of `key`
        (a new one for an empty upload), or None when none is known."""
        if committed_size == 0:
            self._kept.pop(key.value, None)
            return hashlib.sha256()
        kept = self._kept.pop(key.value, None)
        if kept is None or kept[0] != committed_size:
            return None
        return kept[1]

    def keep(self, key: StorageKey, size: int, digest) -> None:
        """Keeps the hash of the `size` first bytes of `key`."""
        self._kept[key.value] = (size, digest)
        while len(self._kept) > self.MAX_KEPT:
            self._kept.popitem(last=False)


class _BatchWriter:
    """Writes a stream's batches in a worker thread while the stream goes on
    receiving: one batch is being written while the next is gathered, so at
    most two batches are in memory. Every call on the store's writer runs in
    a thread under one lock, in the order the batches were handed over."""

    def __init__(self, writer: ResumableWriter, digest, reservation) -> None:
        self._writer = writer
        self._digest = digest
        self._reservation = reservation
        self._lock = threading.Lock()
        self._in_flight: asyncio.Future | None = None
        self._in_flight_bytes = 0
        # Bytes of the object handed to the writer: what earlier streams
        # committed plus every batch of this one.
        self.handed_bytes = writer.committed_size
        self._last_checkpoint = writer.committed_size

    async def hand_over(self, gathered: _Gathered, finish: bool = False) -> None:
        """Starts writing what was gathered (and clears it) once the batch
        before it is written; `finish` publishes the object after it."""
        await self.drain()
        pieces, size = gathered.take()
        self.handed_bytes += size
        checkpoint = self.handed_bytes - self._last_checkpoint >= CHECKPOINT_EVERY_BYTES
        if checkpoint:
            self._last_checkpoint = self.handed_bytes
        self._in_flight_bytes = size
        self._in_flight = asyncio.ensure_future(
            asyncio.to_thread(self._write, pieces, checkpoint, finish)
        )

    async def drain(self) -> None:
        """Waits for the batch being written; raises what writing it raised."""
        if self._in_flight is None:
            return
        in_flight, self._in_flight = self._in_flight, None
        await in_flight
        if self._in_flight_bytes:
            UPLOAD_BYTES.inc(self._in_flight_bytes)
            if self._reservation is not None:
                await self._reservation.wrote(self.handed_bytes)

    async def settle(self) -> None:
        """Waits for the batch being written, whatever its outcome."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            with contextlib.suppress(BaseException):
                await in_flight

    def _write(self, pieces: list[bytes], checkpoint: bool, finish: bool) -> None:
        with self._lock:
            for data in pieces:
                self._writer.write(data)
                if self._digest is not None:
                    self._digest.update(data)  # releases the GIL for large data
            if finish:
                self._writer.finish()
            elif checkpoint:
                self._writer.checkpoint()

    def close(self) -> int:
        """(In a thread.) Ends the stream keeping what was written."""
        with self._lock:
            return self._writer.close()

    def abort(self) -> None:
        """(In a thread.) Drops the write."""
        with self._lock:
            self._writer.abort()


async def _settle_and_close(batches: _BatchWriter) -> None:
    await batches.settle()
    await asyncio.to_thread(batches.close)


def _check_head(head: bytes) -> None:
    try:
        sniff_container(head)
    except UnsupportedContainer as exc:
        raise errors.invalid_argument(
            f"the upload is {exc.format_label}, which is not accepted",
            [("data", f"{exc.format_label}: {exc.why}; upload a single-file video container")],
            reason="UNSUPPORTED_CONTAINER",
        ) from None
    except NotAContainer:
        raise errors.invalid_argument(
            "the upload is not a video container",
            [("data", "the first bytes start no supported container")],
            reason="NOT_A_VIDEO",
        ) from None


def _open_range(store: BlobStore, key: StorageKey, offset: int, limit: int):
    """(source, size, first chunk) of a read of `key` from `offset` (at most
    `limit` bytes, 0: to the end); source is None when the first chunk holds
    all there is to read (it is closed already)."""
    source = store.open_read(key)
    try:
        size = _size_of(source)
        if offset > size:
            raise errors.invalid_argument(
                "read_offset is past the end of the object",
                [("read_offset", f"the object holds {size} bytes")],
            )
        source.seek(offset)
        wanted = size - offset if limit == 0 else min(limit, size - offset)
        chunk = source.read(min(READ_CHUNK_BYTES, wanted)) if wanted else b""
        if len(chunk) >= wanted or not chunk:
            source.close()
            return None, size, chunk
        return source, size, chunk
    except BaseException:
        source.close()
        raise


def _size_of(source) -> int:
    position = source.tell()
    size = source.seek(0, 2)
    source.seek(position)
    return size
