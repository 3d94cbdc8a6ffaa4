"""Deleting jobs: on request (DeleteJob) and by the retention policy.

A job that ended may be deleted with everything it stored. The policy
deletes jobs that ended (or were imported) more than `retention_days` ago
(0: keep forever) and,
sooner, removes the inputs of FAILED and CANCELLED jobs
(`failed_input_retention_days`; 0: as long as the job). Live jobs are never
touched: every query is restricted to terminal states, and a deletion re-reads
the row under lock before it acts.

Rows go first, in one transaction; blobs after it. A blob whose deletion fails
is no longer referenced by any job, so the orphan sweep removes it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from videojobs.common import errors
from videojobs.common.auth import LOCAL_PRINCIPAL, Principal
from videojobs.common.failures import RepeatedFailureLog
from videojobs.jobservice.domain import (
    TERMINAL_STATES,
    JobState,
    check_job_id,
    check_visible,
    job_prefix,
    utc_now,
)
from videojobs.jobservice.store import Database
from videojobs.storage import BlobStore, StorageKey

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400.0
# Jobs handled per retention transaction.
BATCH = 100


@dataclass(frozen=True)
class RetentionPolicy:
    """How long ended jobs and the inputs of failed ones are kept (days; 0: forever)."""

    retention_days: float = 30.0
    failed_input_retention_days: float = 7.0


@dataclass
class RetentionReport:
    """What a retention pass deleted (or, dry, would delete)."""

    jobs: list[tuple[str, str, datetime]] = field(default_factory=list)  # id, state, ended
    inputs: list[tuple[str, str, datetime]] = field(default_factory=list)
    job_bytes: int = 0
    input_bytes: int = 0

    def summary(self) -> str:
        """One line for people."""
        return (
            f"{len(self.jobs)} job(s) ({self.job_bytes} bytes of input) and "
            f"{len(self.inputs)} input(s) of failed or cancelled jobs ({self.input_bytes} bytes)"
        )


class JobDeletion:
    """Application service for DeleteJob and the retention policy."""

    def __init__(
        self, database: Database, blob_store: BlobStore, policy: RetentionPolicy | None = None
    ) -> None:
        self._database = database
        self._store = blob_store
        self.policy = policy or RetentionPolicy()
        self._task: asyncio.Task | None = None
        self._failures = RepeatedFailureLog(log, "retention pass")

    async def delete(self, job_id: str, principal: Principal = LOCAL_PRINCIPAL) -> int:
        """Deletes an ended job and its blobs; returns how many blobs went.
        NOT_FOUND for an unknown job (or another tenant's), FAILED_PRECONDITION
        for a live one."""
        check_job_id(job_id)
        async with self._database.transaction() as repository:
            row = await repository.get_row(job_id, for_update=True)
            check_visible(job_id, None if row is None else row.tenant, principal)
            state = JobState(row.state)
            if not state.is_terminal:
                raise errors.failed_precondition(
                    f"job {job_id} has not ended ({state.value}); cancel it first",
                    "JOB_NOT_ENDED",
                    job_id=job_id,
                    state=state.value,
                )
            prefix = job_prefix(job_id, row.tenant)
            await repository.delete_job(job_id)
        removed = await self._delete_blobs(job_id, prefix)
        log.info("job %s deleted with %d blob(s)", job_id, removed)
        return removed

    async def _delete_blobs(self, job_id: str, prefix: StorageKey) -> int:
        try:
            return await asyncio.to_thread(self._store.delete_prefix, prefix)
        except Exception:  # noqa: BLE001 - unreferenced now: the orphan sweep retries
            log.warning("could not delete the blobs of job %s yet", job_id, exc_info=True)
            return 0

    # -- the policy --------------------------------------------------------------

    async def apply(self, now: datetime | None = None, *, dry_run: bool = False) -> RetentionReport:
        """One pass of the policy (or, with `dry_run`, the report of what it would do)."""
        now = now or utc_now()
        report = RetentionReport()
        if self.policy.retention_days > 0:
            cutoff = now - timedelta(days=self.policy.retention_days)
            await self._expire_jobs(cutoff, report, dry_run)
        input_days = self.policy.failed_input_retention_days
        if input_days > 0 and (
            self.policy.retention_days <= 0 or input_days < self.policy.retention_days
        ):
            cutoff = now - timedelta(days=input_days)
            await self._drop_failed_inputs(cutoff, report, dry_run)
        return report

    async def _expire_jobs(self, cutoff: datetime, report: RetentionReport, dry_run: bool):
        seen: set[str] = set()
        while True:
            async with self._database.reading() as repository:
                rows = await repository.ended_before(sorted(TERMINAL_STATES), cutoff, BATCH)
            rows = [row for row in rows if row.job_id not in seen]
            if not rows:
                return
            for row in rows:
                seen.add(row.job_id)
                report.jobs.append((row.job_id, row.state, row.updated_at))
                report.job_bytes += 0 if row.input_removed_at else row.input_size_bytes
                if not dry_run:
                    with contextlib.suppress(errors.ServiceError):  # deleted meanwhile
                        await self.delete(row.job_id)

    async def _drop_failed_inputs(self, cutoff: datetime, report: RetentionReport, dry_run: bool):
        failed = [JobState.FAILED, JobState.CANCELLED]
        seen: set[str] = set()
        while True:
            async with self._database.reading() as repository:
                rows = await repository.ended_before(failed, cutoff, BATCH, input_kept=True)
            rows = [row for row in rows if row.job_id not in seen]
            if not rows:
                return
            for row in rows:
                seen.add(row.job_id)
                report.inputs.append((row.job_id, row.state, row.updated_at))
                report.input_bytes += row.input_size_bytes
                if not dry_run:
                    await self._drop_input(row.job_id)

    async def _drop_input(self, job_id: str) -> None:
        async with self._database.transaction() as repository:
            row = await repository.get_row(job_id, for_update=True)
            if row is None or row.state not in (JobState.FAILED.value, JobState.CANCELLED.value):
                return
            if row.input_removed_at is not None:
                return
            row.input_removed_at = utc_now()
            key = StorageKey(row.input_key)
        await asyncio.to_thread(self._store.delete, key)
        log.info("input of %s job %s removed by retention", row.state.lower(), job_id)

    # -- in the background -----------------------------------------------------------

    def start(self, interval_seconds: float) -> None:
        """Applies the policy now and every `interval_seconds`."""
        if self.policy.retention_days <= 0 and self.policy.failed_input_retention_days <= 0:
            return
        self._task = asyncio.create_task(self._loop(interval_seconds), name="retention")

    async def stop(self) -> None:
        """Stops the background passes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self, interval_seconds: float) -> None:
        while True:
            try:
                report = await self.apply()
                self._failures.succeeded()
                if report.jobs or report.inputs:
                    log.info("retention removed %s", report.summary())
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                self._failures.failed(exc)
            await asyncio.sleep(interval_seconds)
