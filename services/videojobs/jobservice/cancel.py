"""CancelJob: a queued job ends at once; a running one ends at once and its
worker, on whichever replica holds its stream, is told to stop."""

from __future__ import annotations

from videojobs.common import errors
from videojobs.common.auth import LOCAL_PRINCIPAL, Principal
from videojobs.common.text import has_unsafe_chars
from videojobs.jobservice import lifecycle
from videojobs.jobservice.domain import Job, JobState, check_job_id, check_visible
from videojobs.jobservice.limits import MAX_CANCEL_REASON_BYTES
from videojobs.jobservice.store import Database


class CancelService:
    """Application service for CancelJob."""

    def __init__(self, database: Database) -> None:
        self._database = database

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
            # The worker holding a running job's lease (on whichever replica)
            # hears of it through the lifecycle's notice.
            await lifecycle.cancel(repository, row, reason)
            job = await repository.to_domain(row)
        return job
