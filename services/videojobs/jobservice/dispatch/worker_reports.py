"""What a worker says on its stream, once the servicer has checked it.

The servicer turns each `ConnectRequest` (after hello) into one of these
values; the coordinator applies a run of them in order, in one transaction
(`DispatchCoordinator.apply_reports`). Every field here has been validated:
ids and tokens are well formed, storage keys are `StorageKey`s, text is
bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from videojobs.common import errors
from videojobs.jobservice.domain import Artifact
from videojobs.storage import StorageKey


@dataclass(frozen=True)
class Heartbeat:
    """The worker is alive, runs `running` (job id -> lease token), and may be draining."""

    running: dict[str, str]
    draining: bool = False


@dataclass(frozen=True)
class ProgressReport:
    """How far the job's current attempt is (0.0 to 1.0) and in which stage."""

    job_id: str
    lease_token: str
    fraction: float
    stage: str


@dataclass(frozen=True)
class PartialResultReport:
    """One pipeline's result as it comes; `data` is empty when `size_bytes`
    is over the limit (the report is refused by its size alone)."""

    job_id: str
    lease_token: str
    pipeline: str
    data: dict[str, Any]
    size_bytes: int


@dataclass(frozen=True)
class CompletionReport:
    """The attempt succeeded: its result document, artifacts and summary."""

    job_id: str
    lease_token: str
    output_key: StorageKey
    artifacts: list[Artifact]
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    summary_bytes: int = 0
    report_bytes: int = 0


@dataclass(frozen=True)
class FailureReport:
    """The attempt failed; `retryable` says whether another attempt may help."""

    job_id: str
    lease_token: str
    error: errors.ServiceError
    retryable: bool


@dataclass(frozen=True)
class StoppedReport:
    """The worker stopped the job (told to, or on its own while draining)."""

    job_id: str
    lease_token: str


WorkerReport = (
    Heartbeat
    | ProgressReport
    | PartialResultReport
    | CompletionReport
    | FailureReport
    | StoppedReport
)
