"""SubmitVideo: stream an upload into storage, check it, create the job.

The upload is written chunk by chunk into an atomic BlobStore write (never the
whole video in memory). Nothing is published until size, SHA-256 and the
container check pass and the job row exists; any failure on the way (bad
input, a broken-off stream, a database error) removes every trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from videojobs.common import errors
from videojobs.common.aio import run_to_completion
from videojobs.common.auth import DEFAULT_TENANT
from videojobs.common.logs import log_context
from videojobs.common.text import echo
from videojobs.common.tracing import current_trace_parent
from videojobs.jobservice import lifecycle
from videojobs.jobservice.domain import (
    LEGACY_REQUEST_ID_PREFIX,
    MAX_ATTEMPTS_LIMIT,
    MAX_EXECUTION_TIMEOUT_SECONDS,
    MAX_PRIORITY,
    MIN_PRIORITY,
    Job,
    JobState,
    dispatch_rank,
    input_key_for,
    is_staged_upload_key,
    new_job_id,
    submit_staging_key,
    utc_now,
)
from videojobs.jobservice.limits import (
    MAX_CHUNK_BYTES,
    MAX_REQUEST_ID_CHARS,
    WRITE_BATCH_BYTES,
    UploadLimits,
)
from videojobs.jobservice.metrics import UPLOAD_BYTES
from videojobs.jobservice.store import Database
from videojobs.jobservice.store.models import JobRow
from videojobs.jobservice.upload_admission import StorageBudget, UploadAdmission
from videojobs.jobservice.upload_checks import (
    check_file_name,
    check_parameters_shape,
    check_pipeline_names,
)
from videojobs.pipelines import ParameterError, PipelineCatalogue, PipelineFailure
from videojobs.pipelines.containers import (
    SNIFF_BYTES,
    ContainerFormat,
    NotAContainer,
    UnsupportedContainer,
    sniff_container,
)
from videojobs.pipelines.plan import JobPlan, plan_job
from videojobs.storage import BlobNotFound, BlobStore, InvalidStorageKey, StorageKey
from videojobs.storage.blobstore import BlobStoreError, BlobWriter, put_bytes

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# How long a tenant whose queue is full is told to wait.
TENANT_RETRY_SECONDS = 10.0


@dataclass(frozen=True)
class UploadHeader:
    """The first message of an upload, as plain values."""

    file_name: str
    pipeline: str
    parameters: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    expected_size_bytes: int = 0
    expected_sha256: str = ""
    max_attempts: int = 0
    priority: int = 0
    execution_timeout_seconds: float | None = None
    queue_timeout_seconds: float | None = None
    pipelines: tuple[str, ...] = ()
    # A finished staged upload (`uploads/{id}`) to use instead of chunks.
    upload_key: str = ""


@dataclass(frozen=True)
class SubmitLimits:
    """Server-side limits and defaults of a submit."""

    uploads: UploadLimits = field(default_factory=UploadLimits)
    # Most queued jobs one tenant may have (0: no limit).
    tenant_max_queued_jobs: int = 10_000
    max_attempts: int = 3
    priority_step: float = 300.0
    default_queue_timeout: float = 0.0

    @property
    def max_upload_bytes(self) -> int:
        """Largest accepted upload."""
        return self.uploads.max_upload_bytes


class SubmitService:
    """Application service for SubmitVideo."""

    def __init__(
        self,
        database: Database,
        blob_store: BlobStore,
        catalogue: PipelineCatalogue,
        limits: SubmitLimits,
    ) -> None:
        self._database = database
        self._blob_store = blob_store
        self._catalogue = catalogue
        self._limits = limits
        # Shared with BlobService's staged uploads: one count, one budget.
        self.admission = UploadAdmission(limits.uploads)
        self.budget = StorageBudget(limits.uploads, blob_store, self._stored_input_bytes)

    @property
    def idle_timeout_seconds(self) -> float:
        """Longest wait for the next upload message (the caller enforces it on
        the whole stream, header included; see `with_idle_timeout`)."""
        return self._limits.uploads.idle_timeout_seconds

    async def _stored_input_bytes(self) -> int:
        async with self._database.reading() as repository:
            return await repository.stored_input_bytes()

    def validate_header(self, header: UploadHeader) -> JobPlan | None:
        """Checks the header before any byte is read; returns the job's plan.

        Bounds come first (sizes, characters, counts), so nothing unbounded
        reaches the catalogue, the parameter specs or an error message."""
        violations: list[tuple[str, str]] = check_file_name(header.file_name)
        if header.request_id and not _REQUEST_ID.fullmatch(header.request_id):
            violations.append(
                (
                    "header.request_id",
                    f"at most {MAX_REQUEST_ID_CHARS} printable ASCII characters, no spaces",
                )
            )
        elif header.request_id.startswith(LEGACY_REQUEST_ID_PREFIX):
            violations.append(
                ("header.request_id", f"{LEGACY_REQUEST_ID_PREFIX!r} is kept for imported jobs")
            )
        if header.expected_size_bytes < 0:
            violations.append(("header.expected_size_bytes", "must not be negative"))
        elif header.expected_size_bytes > self._limits.max_upload_bytes:
            raise self._too_large()
        if header.expected_sha256 and not _SHA256.fullmatch(header.expected_sha256):
            violations.append(("header.expected_sha256", "64 lowercase hexadecimal characters"))
        if not 0 <= header.max_attempts <= MAX_ATTEMPTS_LIMIT:
            violations.append(
                ("header.max_attempts", f"0 (server default) to {MAX_ATTEMPTS_LIMIT}")
            )
        if not MIN_PRIORITY <= header.priority <= MAX_PRIORITY:
            violations.append(("header.priority", f"{MIN_PRIORITY} to {MAX_PRIORITY}"))
        for name, value in (
            ("header.execution_timeout", header.execution_timeout_seconds),
            ("header.queue_timeout", header.queue_timeout_seconds),
        ):
            if value is not None and not 0 < value <= MAX_EXECUTION_TIMEOUT_SECONDS:
                violations.append((name, "more than 0 and at most 24 hours"))
        names_field = "header.pipelines" if header.pipelines else "header.pipeline"
        names = list(header.pipelines) or ([header.pipeline] if header.pipeline else [])
        if header.pipeline and header.pipelines:
            violations.append(("header.pipelines", "set either pipeline or pipelines, not both"))
        elif not names:
            violations.append(("header.pipeline", "is required (or pipelines)"))
        else:
            violations.extend(check_pipeline_names(names, names_field))
        violations.extend(check_parameters_shape(header.parameters, "header.parameters"))
        if violations:
            raise errors.invalid_argument("the upload header is invalid", violations)
        try:
            return plan_job(
                self._catalogue,
                names,
                header.parameters,
                field_prefix="header.parameters",
                names_field=names_field,
            )
        except ParameterError as exc:
            raise errors.invalid_argument("the upload header is invalid", exc.violations) from None

    async def submit(
        self,
        header: UploadHeader,
        chunks: AsyncIterator[bytes],
        peer: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> Job:
        """Stores the upload and creates the job of `tenant` (or returns the job
        of a repeated request_id). See the module docstring for the guarantees."""
        plan = self.validate_header(header)
        if header.upload_key:
            await self._check_tenant_queue(tenant)
            return await self._adopt_staged_upload(header, plan, chunks, tenant)
        with self.admission.admit(peer, tenant), self.budget.reserve() as reservation:
            await reservation.promise(header.expected_size_bytes)
            return await self._receive(header, plan, chunks, reservation, tenant)

    async def _check_tenant_queue(self, tenant: str, repository=None) -> None:
        """RESOURCE_EXHAUSTED (with RetryInfo) when the tenant has as many
        queued jobs as it may (`tenant_max_queued_jobs`; 0: no limit)."""
        limit = self._limits.tenant_max_queued_jobs
        if limit <= 0:
            return
        if repository is None:
            async with self._database.reading() as reader:
                queued = await reader.count_queued(tenant)
        else:
            queued = await repository.count_queued(tenant)
        if queued >= limit:
            raise errors.resource_exhausted(
                f"tenant {tenant} has {queued} jobs waiting, the most it may; retry when "
                "some have started",
                "TENANT_QUEUE_FULL",
                TENANT_RETRY_SECONDS,
                limit=str(limit),
            )

    async def _receive(self, header, plan, chunks, reservation, tenant: str) -> Job:
        """Streams the chunks into a staged object (a multipart upload on S3),
        then publishes it as the job's input (see `_publish`). An upload
        smaller than one write batch never opens a writer here: `_publish`
        stores, checks and moves it in one thread hand-off."""
        job_id = new_job_id()
        staged = submit_staging_key(job_id, tenant)
        writer: BlobWriter | None = None
        # The first bytes wait in `head` until they say what this is; later
        # chunks are gathered up to WRITE_BATCH_BYTES and handed to a thread
        # together, one hand-off per batch rather than per chunk.
        head = b""
        gathered = bytearray()
        container: ContainerFormat | None = None

        async def hand_over() -> None:
            nonlocal writer
            if writer is None:
                # More than one batch is coming: a full tenant queue is
                # refused before it is stored (the job's transaction checks
                # again; a smaller upload is checked there only).
                await self._check_tenant_queue(tenant)
            data = bytes(gathered)
            gathered.clear()
            if writer is None:
                opening = asyncio.ensure_future(
                    asyncio.to_thread(self._open_and_write, staged, data)
                )
                try:
                    writer = await asyncio.shield(opening)
                except asyncio.CancelledError:
                    # The client went away while the thread opens the staged
                    # object: take what it opens, so `finally` removes it.
                    writer = await run_to_completion(opening)
                    raise
            else:
                await asyncio.to_thread(writer.write, data)
            UPLOAD_BYTES.inc(len(data))
            await reservation.wrote(writer.size_bytes)

        try:
            async for chunk in chunks:
                if len(chunk) > MAX_CHUNK_BYTES:
                    raise errors.resource_exhausted(
                        f"a chunk may hold at most {MAX_CHUNK_BYTES} bytes",
                        "CHUNK_TOO_LARGE",
                        max_chunk_bytes=str(MAX_CHUNK_BYTES),
                    )
                if not chunk:
                    continue
                received = (writer.size_bytes if writer else 0) + len(gathered) + len(head)
                if received + len(chunk) > self._limits.max_upload_bytes:
                    raise self._too_large()
                if container is None:
                    # Nothing is stored before the first bytes say what this is.
                    head += chunk
                    if len(head) < SNIFF_BYTES:
                        continue
                    container = _identify(head)
                    chunk, head = head, b""
                gathered += chunk
                if len(gathered) >= WRITE_BATCH_BYTES:
                    await hand_over()
            if container is None:
                if not head:
                    raise errors.invalid_argument(
                        "the upload holds no bytes", [("chunk", "the upload holds no bytes")]
                    )
                container = _identify(head)
                gathered += head
            small: bytes | None = None
            if writer is None:
                # All of it is here, less than one batch: stored by `_publish`.
                small = bytes(gathered)
                size, sha256 = len(small), hashlib.sha256(small).hexdigest()
                self._check_received(header, size, sha256)
                UPLOAD_BYTES.inc(size)
                await reservation.wrote(size)
            else:
                if gathered:
                    await hand_over()
                size, sha256 = writer.size_bytes, writer.sha256_hex()
                self._check_received(header, size, sha256)
                # Committed inside `_publish`'s thread hand-off (with the
                # container check and the move); until then it may be aborted.
            # Run to completion: a client hanging up now must not cut the
            # move or the job's transaction in half.
            job = await run_to_completion(
                self._publish(
                    header,
                    plan,
                    job_id,
                    staged,
                    container,
                    size,
                    sha256,
                    tenant,
                    writer=writer,
                    small=small,
                )
            )
            writer = None  # committed and moved
            return job
        finally:
            if writer is not None:
                await asyncio.to_thread(writer.abort)  # safe after a commit, too

    def _open_and_write(self, key: StorageKey, data: bytes) -> BlobWriter:
        """(In a thread.) Opens a writer of `key` and writes the first batch."""
        writer = self._blob_store.open_writer(key)
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        return writer

    async def _publish(
        self,
        header: UploadHeader,
        plan: JobPlan,
        job_id: str,
        staged: StorageKey,
        container: ContainerFormat,
        size: int,
        sha256: str,
        tenant: str,
        *,
        writer: BlobWriter | None = None,
        small: bytes | None = None,
    ) -> Job:
        """Checks the complete staged object as its container, moves it to the
        job's input key and creates the job. An input exists only for a
        committed job: a failure on the way removes it again, and a process
        killed in between leaves it to the orphan sweep.

        The staged object is either stored already (a staged upload), or
        still open in `writer`, or the `small` bytes to store: either way,
        storing, checking and moving take one thread hand-off, and a staged
        object this call stored is removed again when the check or the move
        fails."""
        input_key = input_key_for(job_id, container.extension, tenant)
        try:
            await asyncio.to_thread(
                self._store_check_and_move, staged, container, input_key, writer, small
            )
        except PipelineFailure as exc:
            raise errors.invalid_argument(
                "the upload is not a video container",
                [("chunk", exc.message)],
                reason="NOT_A_VIDEO",
            ) from None
        created = False
        try:
            job, created = await self._create_job(
                header, plan, job_id, input_key, container, size, sha256, tenant
            )
            return job
        finally:
            # Kept only when a job now refers to it: for a repeated request the
            # first upload's job stands and this copy goes.
            if not created:
                await asyncio.to_thread(self._blob_store.delete, input_key)

    def _store_check_and_move(
        self,
        staged: StorageKey,
        container: ContainerFormat,
        input_key: StorageKey,
        writer: BlobWriter | None,
        small: bytes | None,
    ) -> None:
        """(In a thread.) Commits `writer` or stores `small` as `staged` (if
        given), opens the stored object as `container` (PipelineFailure if it
        is not one) and renames it to `input_key`."""
        stored_here = writer is not None or small is not None
        if writer is not None:
            writer.commit()
        elif small is not None:
            put_bytes(self._blob_store, staged, small)
        try:
            # Imported here: PyAV is needed only once an upload is complete.
            from videojobs.pipelines.media import check_is_media_container

            with self._blob_store.open_read(staged) as source:
                check_is_media_container(source, container.name)
            self._blob_store.rename(staged, input_key)
        except BaseException:
            if stored_here:
                with contextlib.suppress(BlobStoreError):
                    self._blob_store.delete(staged)
            raise

    async def _adopt_staged_upload(
        self, header: UploadHeader, plan: JobPlan, chunks: AsyncIterator[bytes], tenant: str
    ) -> Job:
        """Creates the job from a finished staged upload (BlobService.Write) of
        the same tenant; another tenant's staged upload is UPLOAD_NOT_FOUND."""
        try:
            staged = StorageKey(header.upload_key)
        except InvalidStorageKey as exc:
            raise errors.invalid_argument(
                "upload_key is invalid", [("header.upload_key", exc.reason)]
            ) from None
        if not is_staged_upload_key(staged):
            raise errors.invalid_argument(
                "upload_key names no staged upload",
                [("header.upload_key", "must be uploads/{upload_id} (16-64 of [A-Za-z0-9_-])")],
            )
        async for _ in chunks:
            raise errors.invalid_argument(
                "a header with upload_key takes no chunks",
                [("chunk", "the bytes are those of the staged upload")],
            )
        async with self._database.reading() as repository:
            record = await repository.staged_upload(staged.value)
        owner = None if record is None else record.tenant
        if owner is not None and owner != tenant:
            raise _upload_not_found(staged)
        if await asyncio.to_thread(self._blob_store.resumable_status, staged) is not None:
            raise errors.failed_precondition(
                f"the staged upload {staged.value!r} is not finished",
                "UPLOAD_NOT_FINISHED",
            )
        try:
            info = await asyncio.to_thread(self._blob_store.stat, staged)
        except BlobNotFound:
            existing = await self._existing_for_request(header, tenant)
            if existing is not None:
                return existing  # the retry of a submit whose answer was lost
            raise _upload_not_found(staged) from None
        if owner is None:
            raise _upload_not_found(staged)  # written before owners were recorded
        if info.size_bytes > self._limits.max_upload_bytes:
            await asyncio.to_thread(self._blob_store.delete, staged)
            raise self._too_large()
        if info.size_bytes == 0:
            raise errors.invalid_argument(
                "the upload holds no bytes", [("header.upload_key", "the upload holds no bytes")]
            )
        if record.sha256 is not None and record.size_bytes == info.size_bytes:
            # Hashed while BlobService wrote it whole: only its head is read.
            container = await asyncio.to_thread(self._identify_head, staged)
            sha256 = record.sha256
        else:
            container, sha256 = await asyncio.to_thread(self._identify_stored, staged)
        self._check_received(header, info.size_bytes, sha256)
        # Run to completion: once the staged object is being moved into place,
        # a client that hangs up must not leave it half-published; the job is
        # created, and the client's retry (same request_id) finds it.
        return await run_to_completion(
            self._publish_staged(header, plan, staged, container, info.size_bytes, sha256, tenant)
        )

    async def _publish_staged(
        self,
        header: UploadHeader,
        plan: JobPlan,
        staged: StorageKey,
        container: ContainerFormat,
        size: int,
        sha256: str,
        tenant: str,
    ) -> Job:
        job = await self._publish(
            header, plan, new_job_id(), staged, container, size, sha256, tenant
        )
        async with self._database.transaction() as repository:
            await repository.forget_staged_upload(staged.value)
        return job

    def _identify_head(self, key: StorageKey) -> ContainerFormat:
        """The container of a stored object, from its first bytes."""
        with self._blob_store.open_read(key) as source:
            return _identify(source.read(SNIFF_BYTES))

    def _identify_stored(self, key: StorageKey) -> tuple[ContainerFormat, str]:
        """The container and SHA-256 of a stored object, read once, a chunk at a time."""
        digest = hashlib.sha256()
        with self._blob_store.open_read(key) as source:
            head = source.read(SNIFF_BYTES)
            container = _identify(head)
            digest.update(head)
            while chunk := source.read(1024 * 1024):
                digest.update(chunk)
        return container, digest.hexdigest()

    async def _existing_for_request(self, header: UploadHeader, tenant: str) -> Job | None:
        if not header.request_id:
            return None
        async with self._database.reading() as repository:
            row = await repository.get_row_by_request_id(tenant, header.request_id)
            return None if row is None else await repository.to_domain(row)

    def _too_large(self) -> errors.ServiceError:
        limit = self._limits.max_upload_bytes
        return errors.resource_exhausted(
            f"the upload is larger than this server accepts ({limit} bytes)",
            "UPLOAD_TOO_LARGE",
            max_upload_bytes=str(limit),
        )

    @staticmethod
    def _check_received(header: UploadHeader, size: int, sha256: str) -> None:
        violations = []
        if header.expected_size_bytes and header.expected_size_bytes != size:
            violations.append(
                (
                    "header.expected_size_bytes",
                    f"the header says {header.expected_size_bytes} bytes, {size} arrived",
                )
            )
        if header.expected_sha256 and header.expected_sha256 != sha256:
            violations.append(
                ("header.expected_sha256", f"the bytes that arrived have SHA-256 {sha256}")
            )
        if violations:
            raise errors.invalid_argument("the upload does not match its header", violations)

    async def _create_job(
        self,
        header: UploadHeader,
        plan: JobPlan,
        job_id: str,
        input_key: StorageKey,
        container: ContainerFormat,
        size: int,
        sha256: str,
        tenant: str = DEFAULT_TENANT,
    ) -> tuple[Job, bool]:
        options = {
            "max_attempts": header.max_attempts,
            "priority": header.priority,
            "execution_timeout": header.execution_timeout_seconds,
            "queue_timeout": header.queue_timeout_seconds,
        }
        fingerprint = _fingerprint(plan.key, plan.parameters, options, size, sha256)
        execution_timeout = header.execution_timeout_seconds or max(
            self._catalogue.spec(name).default_execution_timeout_seconds for name in plan.pipelines
        )
        queue_timeout = header.queue_timeout_seconds or self._limits.default_queue_timeout or None
        request_id = header.request_id or None
        # The first try inserts at once: the unique (tenant, request_id) key
        # refuses a repeated request, and the second try finds its job.
        for repeated in (False, True):
            try:
                async with self._database.transaction() as repository:
                    if request_id is not None and repeated:
                        existing = await repository.get_row_by_request_id(tenant, request_id)
                        if existing is not None:
                            return await self._repeat(repository, existing, fingerprint), False
                    try:
                        await self._check_tenant_queue(tenant, repository)
                    except errors.ServiceError:
                        # A full queue does not refuse the retry of a submit
                        # that was accepted: it gets its job.
                        existing = request_id and await repository.get_row_by_request_id(
                            tenant, request_id
                        )
                        if not existing:
                            raise
                        return await self._repeat(repository, existing, fingerprint), False
                    now = utc_now()
                    row = JobRow(
                        trace_parent=current_trace_parent(),
                        priority=header.priority,
                        dispatch_rank=dispatch_rank(
                            now, header.priority, self._limits.priority_step
                        ),
                        execution_timeout_seconds=execution_timeout,
                        queue_timeout_seconds=queue_timeout,
                        queue_deadline_at=(
                            now + timedelta(seconds=queue_timeout) if queue_timeout else None
                        ),
                        failed_attempts=0,
                        lease_losses=0,
                        job_id=job_id,
                        tenant=tenant,
                        request_id=request_id,
                        request_fingerprint=fingerprint if request_id else None,
                        pipeline=plan.key,
                        parameters=plan.parameters,
                        state=JobState.QUEUED.value,
                        attempt=1,
                        max_attempts=header.max_attempts or self._limits.max_attempts,
                        file_name=header.file_name,
                        input_key=input_key.value,
                        input_format=container.name,
                        input_size_bytes=size,
                        input_sha256=sha256,
                        progress_fraction=0.0,
                        progress_stage="queued",
                        last_sequence=0,
                        created_at=now,
                        updated_at=now,
                    )
                    await lifecycle.accept(repository, row, plan.pipelines)
                    await repository.flush()
                    job = await repository.to_domain(row)
            except IntegrityError:
                if request_id is None:
                    raise
                continue  # a job with this request_id exists (a retry, or a concurrent twin)
            with log_context(job_id=job_id):
                log.info("job %s accepted (pipeline %s, %d bytes)", job_id, plan.key, size)
            return job, True
        raise errors.unavailable("concurrent submits with one request_id; retry", "RETRY")

    @staticmethod
    async def _repeat(repository, existing: JobRow, fingerprint: str) -> Job:
        if existing.request_fingerprint != fingerprint:
            raise errors.already_exists(
                f"request_id {existing.request_id!r} was used for a different upload",
                "REQUEST_ID_REUSED",
                job_id=existing.job_id,
            )
        return await repository.to_domain(existing)


def _upload_not_found(staged: StorageKey) -> errors.ServiceError:
    return errors.not_found(f"no staged upload {staged.value!r}", "UPLOAD_NOT_FOUND")


def _identify(head: bytes) -> ContainerFormat:
    """The allowed container the upload's first bytes belong to, or
    INVALID_ARGUMENT: UNSUPPORTED_CONTAINER for a refused format (playlists
    and the like), NOT_A_VIDEO for bytes no container starts with."""
    try:
        return sniff_container(head)
    except UnsupportedContainer as exc:
        raise errors.invalid_argument(
            f"the upload is {exc.format_label}, which is not accepted",
            [("chunk", f"{exc.format_label}: {exc.why}; upload a single-file video container")],
            reason="UNSUPPORTED_CONTAINER",
        ) from None
    except NotAContainer:
        raise errors.invalid_argument(
            "the upload is not a video container",
            [("chunk", f"the first bytes ({echo(head[:16].hex())}) start no supported container")],
            reason="NOT_A_VIDEO",
        ) from None


def _fingerprint(
    pipeline: str, parameters: dict[str, Any], options: dict[str, Any], size: int, sha256: str
) -> str:
    canonical = json.dumps([pipeline, parameters, options, size, sha256], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
