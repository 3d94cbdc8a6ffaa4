"""Job domain types and the job state machine. No grpc, no SQL."""

from __future__ import annotations

import enum
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from videojobs.common import errors
from videojobs.common.auth import DEFAULT_TENANT, Principal
from videojobs.storage import StorageKey

JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


class JobState(enum.StrEnum):
    """States of a job; values are stored in the database."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        """Terminal states never change."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# The state machine (design brief section 3). RUNNING -> QUEUED is a lost lease
# or a retryable failure; it always comes with attempt + 1.
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    """A state change the state machine does not allow (a bug, or a race lost)."""


def check_transition(current: JobState, target: JobState) -> None:
    """Raises IllegalTransition unless `current -> target` is allowed."""
    if target not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(f"{current} -> {target}")


class EventKind(enum.StrEnum):
    """Kinds of job events; match the JobEvent payload oneof in the contract."""

    STATE_CHANGED = "state_changed"
    PROGRESS = "progress"
    PARTIAL_RESULT = "partial_result"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether a stream ends after an event of this kind."""
        return self in (EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED)


def utc_now() -> datetime:
    """Timezone-aware now, in UTC."""
    return datetime.now(UTC)


def new_job_id() -> str:
    """A fresh job id: 32 lowercase hex characters."""
    return uuid.uuid4().hex


def new_lease_token() -> str:
    """A fresh, unguessable lease token."""
    return secrets.token_hex(16)


def is_job_id(text: str) -> bool:
    """Whether `text` is a well-formed job id."""
    return bool(JOB_ID_PATTERN.fullmatch(text or ""))


def check_job_id(job_id: str, field_name: str = "job_id") -> str:
    """Returns `job_id` or raises INVALID_ARGUMENT naming `field_name`."""
    if not JOB_ID_PATTERN.fullmatch(job_id or ""):
        raise errors.invalid_argument(
            "job_id is malformed",
            [(field_name, "must be 32 lowercase hexadecimal characters")],
        )
    return job_id


def job_not_found(job_id: str) -> errors.ServiceError:
    """NOT_FOUND for `job_id`."""
    return errors.not_found(f"job {job_id} not found", "JOB_NOT_FOUND", job_id=job_id)


def check_visible(job_id: str, tenant: str | None, principal: Principal) -> None:
    """NOT_FOUND, exactly as for a job that does not exist, unless the job
    (of `tenant`; None: it does not exist) is visible to `principal`."""
    if tenant is None or not principal.sees_tenant(tenant):
        raise job_not_found(job_id)


def job_prefix(job_id: str, tenant: str = DEFAULT_TENANT) -> StorageKey:
    """Under which key prefix everything of a job is stored: `jobs/{id}` for
    the default tenant (as every job before tenants existed), else
    `tenants/{tenant}/jobs/{id}`."""
    if tenant == DEFAULT_TENANT:
        return StorageKey.join("jobs", job_id)
    return StorageKey.join("tenants", tenant, "jobs", job_id)


def input_key_for(job_id: str, extension: str, tenant: str = DEFAULT_TENANT) -> StorageKey:
    """Where a job's uploaded input is stored."""
    return job_prefix(job_id, tenant).child("input", f"source{extension}")


def attempt_prefix_for(job_id: str, attempt: int, tenant: str = DEFAULT_TENANT) -> StorageKey:
    """Under which key prefix one attempt writes its outputs."""
    return job_prefix(job_id, tenant).child("attempts", str(attempt))


# Jobs imported from the systems videojobs replaces carry `legacy:<id>` as
# their request_id; clients may not use the prefix.
LEGACY_REQUEST_ID_PREFIX = "legacy:"

# Staged uploads: `uploads/{upload_id}`, written with BlobService.Write before
# SubmitVideo turns one into a job's input.
STAGED_UPLOAD_PREFIX = "uploads"
UPLOAD_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")


def staged_upload_key(upload_id: str) -> StorageKey:
    """Where a client's staged upload is stored."""
    return StorageKey.join(STAGED_UPLOAD_PREFIX, upload_id)


def submit_staging_key(job_id: str, tenant: str = DEFAULT_TENANT) -> StorageKey:
    """Where a streamed SubmitVideo upload is stored until it has passed its
    checks (under the job's prefix, so the orphan sweep knows whose it is)."""
    return job_prefix(job_id, tenant).child("staging", "upload")


def is_staged_upload_key(key: StorageKey) -> bool:
    """Whether `key` names a staged upload (`uploads/{upload_id}`)."""
    segments = key.segments
    return (
        len(segments) == 2
        and segments[0] == STAGED_UPLOAD_PREFIX
        and UPLOAD_ID_PATTERN.fullmatch(segments[1]) is not None
    )


def job_id_of(key: StorageKey) -> str | None:
    """The job a key belongs to (`jobs/{id}/...`, also below a tenant
    prefix), or None."""
    segments = key.segments
    for index in range(len(segments) - 2):
        if segments[index] == "jobs" and JOB_ID_PATTERN.fullmatch(segments[index + 1]):
            return segments[index + 1]
    return None


@dataclass(frozen=True)
class JobError:
    """Why a job failed or was cancelled: a canonical gRPC code name and a message."""

    code: str
    message: str
    reason: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    """A file a job produced."""

    key: StorageKey
    media_type: str
    size_bytes: int
    width: int = 0
    height: int = 0
    time_seconds: float = 0.0
    index: int = 0
    frame_index: int = 0

    def to_dict(self) -> dict:
        """JSON-shaped, as stored in the completed event."""
        return {
            "key": self.key.value,
            "media_type": self.media_type,
            "size_bytes": self.size_bytes,
            "width": self.width,
            "height": self.height,
            "time_seconds": self.time_seconds,
            "index": self.index,
            "frame_index": self.frame_index,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Artifact:
        """The artifact `to_dict` wrote (keys checked again as StorageKeys)."""
        return cls(
            StorageKey(data["key"]),
            data.get("media_type", ""),
            int(data.get("size_bytes", 0)),
            int(data.get("width", 0)),
            int(data.get("height", 0)),
            float(data.get("time_seconds", 0.0)),
            int(data.get("index", 0)),
            int(data.get("frame_index", 0)),
        )


class AttemptOutcome(enum.StrEnum):
    """How an attempt ended; values are stored in the database."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    RETRIED = "RETRIED"
    LEASE_LOST = "LEASE_LOST"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    HANDED_BACK = "HANDED_BACK"


@dataclass(frozen=True)
class Attempt:
    """One attempt at running a job."""

    number: int
    worker_id: str
    start_time: datetime
    end_time: datetime | None
    outcome: AttemptOutcome
    error: JobError | None


MIN_PRIORITY, MAX_PRIORITY = -10, 10
MAX_ATTEMPTS_LIMIT = 20
MAX_EXECUTION_TIMEOUT_SECONDS = 24 * 3600.0


def dispatch_rank(accepted_at: datetime, priority: int, priority_step_seconds: float) -> float:
    """Dispatch order key, smallest first: the acceptance time in epoch seconds
    minus a head start of `priority_step_seconds` per step of priority. Higher
    priority goes first; within a priority, older first; and a job never waits
    behind higher-priority work submitted more than (difference in priority x
    step) after it, so low priorities cannot starve."""
    return accepted_at.timestamp() - priority * priority_step_seconds


def retry_delay_seconds(failed_attempts: int, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff with "equal jitter": half the exponential delay
    fixed, the other half scaled by `jitter` (a number in [0, 1), random in
    production) so retries of many jobs that failed together spread out."""
    exponential = min(cap, base * 2 ** max(0, failed_attempts - 1))
    return exponential / 2 + exponential / 2 * jitter


@dataclass(frozen=True)
class Job:
    """A job as stored."""

    job_id: str
    state: JobState
    pipeline: str
    parameters: dict[str, Any]
    attempt: int
    max_attempts: int
    input_key: StorageKey
    file_name: str
    input_size_bytes: int
    input_sha256: str
    request_id: str | None
    progress_fraction: float
    progress_stage: str
    output_key: StorageKey | None
    artifacts: tuple[Artifact, ...]
    summary: dict[str, Any] | None
    error: JobError | None
    create_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    last_event_sequence: int
    priority: int = 0
    execution_timeout_seconds: float = 0.0
    queue_timeout_seconds: float | None = None
    next_attempt_time: datetime | None = None
    attempts: tuple[Attempt, ...] = ()
    warnings: tuple[str, ...] = ()
    worker_id: str | None = None
    lease_token: str | None = None
    input_format: str = ""
    input_removed_at: datetime | None = None
    tenant: str = DEFAULT_TENANT
    # The set of pipelines the job runs, alphabetical (`pipeline` is its display name).
    pipelines: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobEvent:
    """One stored event of a job."""

    job_id: str
    sequence: int
    create_time: datetime
    kind: EventKind
    job_state: JobState
    attempt: int
    # One of the dataclasses of `event_payloads` (matching `kind`).
    payload: Any


@dataclass(frozen=True)
class Assignment:
    """A lease on one attempt of a job, given to one worker."""

    job_id: str
    attempt: int
    lease_token: str
    input_key: StorageKey
    pipeline: str
    parameters: dict[str, Any]
    output_prefix: StorageKey
    lease_expire_time: datetime
    execution_deadline: datetime
    input_format: str = ""
    trace_parent: str = ""
