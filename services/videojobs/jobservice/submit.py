"""SubmitVideo: stream an upload into storage, check it, create the job.

The upload is written chunk by chunk into an atomic BlobStore write (never the
whole video in memory). Nothing is published until size, SHA-256 and the
container check pass and the job row exists; any failure on the way (bad
input, a broken-off stream, a database error) removes every trace.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from videojobs.common import errors
from videojobs.jobservice.domain import (
    MAX_ATTEMPTS_LIMIT,
    MAX_EXECUTION_TIMEOUT_SECONDS,
    MAX_PRIORITY,
    MIN_PRIORITY,
    EventKind,
    Job,
    JobState,
    dispatch_rank,
    input_key_for,
    new_job_id,
    utc_now,
)
from videojobs.jobservice.store import Database
from videojobs.jobservice.store.models import JobRow
from videojobs.pipelines import ParameterError, PipelineCatalogue, PipelineFailure
from videojobs.pipelines.media import check_is_media_container
from videojobs.pipelines.plan import JobPlan, plan_job
from videojobs.storage import BlobStore, StorageKey
from videojobs.storage.blobstore import BlobWriter

log = logging.getLogger(__name__)

MAX_CHUNK_BYTES = 4 * 1024 * 1024
MAX_FILE_NAME_BYTES = 255
MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_EXTENSION = re.compile(r"\.[a-z0-9]{1,8}")


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


@dataclass(frozen=True)
class SubmitLimits:
    """Server-side limits of an upload."""

    max_upload_bytes: int
    max_attempts: int = 3
    priority_step: float = 300.0
    default_queue_timeout: float = 0.0


class SubmitService:
    """Application service for SubmitVideo."""

    def __init__(
        self,
        database: Database,
        blob_store: BlobStore,
        catalogue: PipelineCatalogue,
        limits: SubmitLimits,
        on_job_queued: Callable[[], None],
    ) -> None:
        self._database = database
        self._blob_store = blob_store
        self._catalogue = catalogue
        self._limits = limits
        self._on_job_queued = on_job_queued

    def validate_header(self, header: UploadHeader) -> JobPlan | None:
        """Checks the header before any byte is read; returns the job's plan."""
        violations: list[tuple[str, str]] = []
        name = header.file_name
        if not name:
            violations.append(("header.file_name", "is required"))
        elif "/" in name or "\\" in name or name in (".", ".."):
            violations.append(("header.file_name", "must be a base name, without '/' or '\\'"))
        elif len(name.encode()) > MAX_FILE_NAME_BYTES or any(ord(c) < 32 for c in name):
            violations.append(
                ("header.file_name", f"at most {MAX_FILE_NAME_BYTES} bytes, no control characters")
            )
        if header.request_id and not _REQUEST_ID.fullmatch(header.request_id):
            violations.append(
                ("header.request_id", "at most 128 printable ASCII characters, no spaces")
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
        plan = None
        names_field = "header.pipelines" if header.pipelines else "header.pipeline"
        names = list(header.pipelines) or ([header.pipeline] if header.pipeline else [])
        if header.pipeline and header.pipelines:
            violations.append(("header.pipelines", "set either pipeline or pipelines, not both"))
        elif not names:
            violations.append(("header.pipeline", "is required (or pipelines)"))
        else:
            try:
                plan = plan_job(
                    self._catalogue,
                    names,
                    header.parameters,
                    field_prefix="header.parameters",
                    names_field=names_field,
                )
            except ParameterError as exc:
                violations.extend(exc.violations)
        if violations:
            raise errors.invalid_argument("the upload header is invalid", violations)
        return plan

    async def submit(self, header: UploadHeader, chunks: AsyncIterator[bytes]) -> Job:
        """Stores the upload and creates the job (or returns the job of a repeated
        request_id). See the module docstring for the guarantees."""
        plan = self.validate_header(header)
        job_id = new_job_id()
        input_key = input_key_for(job_id, _extension_of(header.file_name))
        writer = await asyncio.to_thread(self._blob_store.open_writer, input_key)
        published = False
        try:
            async for chunk in chunks:
                if len(chunk) > MAX_CHUNK_BYTES:
                    raise errors.resource_exhausted(
                        f"a chunk may hold at most {MAX_CHUNK_BYTES} bytes",
                        "CHUNK_TOO_LARGE",
                        max_chunk_bytes=str(MAX_CHUNK_BYTES),
                    )
                if writer.size_bytes + len(chunk) > self._limits.max_upload_bytes:
                    raise self._too_large()
                if chunk:
                    await asyncio.to_thread(writer.write, chunk)
            size, sha256 = writer.size_bytes, writer.sha256_hex()
            self._check_received(header, size, sha256)
            await self._check_container(writer)
            await asyncio.to_thread(writer.commit)
            job, created = await self._create_job(header, plan, job_id, input_key, size, sha256)
            # Kept only when a job now refers to it: for a repeated request the
            # first upload's job stands and this copy goes.
            published = created
            return job
        finally:
            writer.abort()
            if not published:
                await asyncio.to_thread(self._blob_store.delete, input_key)

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
        if size == 0:
            violations.append(("chunk", "the upload holds no bytes"))
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

    @staticmethod
    async def _check_container(writer: BlobWriter) -> None:
        def check() -> str:
            with writer.read_back() as source:
                return check_is_media_container(source)

        try:
            await asyncio.to_thread(check)
        except PipelineFailure as exc:
            raise errors.invalid_argument(
                "the upload is not a video container",
                [("chunk", exc.message)],
                reason="NOT_A_VIDEO",
            ) from None

    async def _create_job(
        self,
        header: UploadHeader,
        plan: JobPlan,
        job_id: str,
        input_key: StorageKey,
        size: int,
        sha256: str,
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
        for _ in range(2):
            try:
                async with self._database.transaction() as repository:
                    if request_id is not None:
                        existing = await repository.get_row_by_request_id(request_id)
                        if existing is not None:
                            return await self._repeat(repository, existing, fingerprint), False
                    now = utc_now()
                    row = JobRow(
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
                        request_id=request_id,
                        request_fingerprint=fingerprint if request_id else None,
                        pipeline=plan.key,
                        parameters=plan.parameters,
                        state=JobState.QUEUED.value,
                        attempt=1,
                        max_attempts=header.max_attempts or self._limits.max_attempts,
                        file_name=header.file_name,
                        input_key=input_key.value,
                        input_size_bytes=size,
                        input_sha256=sha256,
                        progress_fraction=0.0,
                        progress_stage="queued",
                        last_sequence=0,
                        created_at=now,
                        updated_at=now,
                    )
                    await repository.add(row)
                    repository.append_event(
                        row,
                        EventKind.STATE_CHANGED,
                        {"from_state": "", "to_state": JobState.QUEUED.value, "reason": "accepted"},
                    )
                    await repository.flush()
                    job = await repository.to_domain(row)
            except IntegrityError:
                if request_id is None:
                    raise
                continue  # a concurrent upload with the same request_id won: look again
            log.info("job %s accepted (pipeline %s, %d bytes)", job_id, plan.key, size)
            self._on_job_queued()
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


def _extension_of(file_name: str) -> str:
    dot = file_name.rfind(".")
    extension = file_name[dot:].lower() if dot > 0 else ""
    return extension if _EXTENSION.fullmatch(extension) else ""


def _fingerprint(
    pipeline: str, parameters: dict[str, Any], options: dict[str, Any], size: int, sha256: str
) -> str:
    canonical = json.dumps([pipeline, parameters, options, size, sha256], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
