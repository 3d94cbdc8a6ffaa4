"""CancelJob: a queued job ends at once; a running one ends at once and its
worker is told to stop."""

from __future__ import annotations

from typing import Protocol

from videojobs.common import errors
from videojobs.common.auth import LOCAL_PRINCIPAL, Principal
from videojobs.common.text import has_unsafe_chars
from videojobs.jobservice.domain import (
    AttemptOutcome,
    EventKind,
    Job,
    JobError,
    JobState,
    check_job_id,
    check_visible,
)
from videojobs.jobservice.limits import MAX_CANCEL_REASON_BYTES
from videojobs.jobservice.store import Database


class StopNotifier(Protocol):
    """Tells the worker holding a lease to stop (the dispatch coordinator)."""

    def stop_job(self, job_id: str, lease_token: str, reason: str) -> None:
        """Queues a StopJob for the session holding `lease_token`, if connected."""


class CancelService:
    """Application service for CancelJob."""

    def __init__(self, database: Database, workers: StopNotifier) -> None:
        self._database = database
        self._workers = workers

    async def cancel(self, job_id: str, reason: str, principal: Principal = LOCAL_PRINCIPAL) -> Job:
        """Cancels the job; FAILED_PRECONDITION if it already ended, NOT_FOUND
        if it does not exist or belongs to a tenant the principal does not see."""
        check_job_id(job_id)
        if len(reason.encode("utf-8", "surrogatepass")) > MAX_CANCEL_REASON_BYTES:
            raise errors.invalid_argument(
                "reason is too long", [("reason", f"at most {MAX_CANCEL_REASON_BYTES} bytes")]
            )
        if has_unsafe_chars(reason):
            raise errors.invalid_argument(
                "reason holds characters that cannot be shown",
                [("reason", "no control, bidirectional-override or invisible characters")],
            )
        reason = reason or "cancelled by client"
        async with self._database.transaction() as repository:
            row = await repository.get_row(job_id, for_update=True)
            check_visible(job_id, None if row is None else row.tenant, principal)
            state = JobState(row.state)
            if state.is_terminal:
                raise errors.failed_precondition(
                    f"job {job_id} already ended ({state.value})",
                    "JOB_ALREADY_ENDED",
                    job_id=job_id,
                    state=state.value,
                )
            lease_token = row.lease_token if state is JobState.RUNNING else None
            if state is JobState.RUNNING:
                await repository.close_attempt(
                    row, AttemptOutcome.CANCELLED, JobError("CANCELLED", reason, "JOB_CANCELLED")
                )
            row.execution_deadline_at = None
            row.available_at = None
            row.error_code = "CANCELLED"
            row.error_message = reason
            row.error_reason = "JOB_CANCELLED"
            row.error_metadata = {}
            repository.finish(row, JobState.CANCELLED, EventKind.CANCELLED, {"reason": reason})
            job = await repository.to_domain(row)
        if lease_token is not None:
            self._workers.stop_job(job_id, lease_token, "cancelled")
        return job
