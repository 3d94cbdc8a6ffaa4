"""JobRepository: reads and writes jobs and their events inside one session.

The repository never commits: the application service that opened the unit of
work (`Database.transaction()`) owns the transaction, so a state change and the
event that reports it are always written together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Text, cast, delete, func, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession

from videojobs.jobservice.domain import (
    Artifact,
    Attempt,
    AttemptOutcome,
    EventKind,
    Job,
    JobError,
    JobEvent,
    JobState,
    check_transition,
    utc_now,
)
from videojobs.jobservice.store.models import (
    ArtifactRow,
    AttemptRow,
    EventRow,
    JobRow,
    StagedUploadRow,
    UtcDateTime,
)
from videojobs.storage import StorageKey


class JobRepository:
    """Jobs, artifacts and events, over one AsyncSession."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.jobs_with_new_events: set[str] = set()

    # -- reading -------------------------------------------------------------

    async def get_row(self, job_id: str, *, for_update: bool = False) -> JobRow | None:
        """The job's row, locked for the rest of the transaction when `for_update`."""
        statement = select(JobRow).where(JobRow.job_id == job_id)
        if for_update:
            statement = statement.with_for_update()
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        row = await self.get_row(job_id)
        return None if row is None else await self.to_domain(row)

    async def get_row_by_request_id(self, tenant: str, request_id: str) -> JobRow | None:
        """The job a tenant created with this idempotency key, or None."""
        statement = select(JobRow).where(JobRow.tenant == tenant, JobRow.request_id == request_id)
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def count_queued(self, tenant: str) -> int:
        """How many of a tenant's jobs wait in the queue."""
        statement = select(func.count()).where(
            JobRow.tenant == tenant, JobRow.state == JobState.QUEUED.value
        )
        return int((await self.session.execute(statement)).scalar_one())

    async def staged_upload_owner(self, key: str) -> str | None:
        """The tenant that owns a staged upload, or None when nobody does yet."""
        row = await self.session.get(StagedUploadRow, key)
        return None if row is None else row.tenant

    async def claim_staged_upload(self, key: str, tenant: str) -> None:
        """Records `tenant` as the owner of a new staged upload."""
        self.session.add(StagedUploadRow(key=key, tenant=tenant, created_at=utc_now()))
        await self.session.flush()

    async def forget_staged_uploads_before(self, cutoff: datetime) -> int:
        """Drops owner records of staged uploads started before `cutoff`."""
        result = await self.session.execute(
            delete(StagedUploadRow).where(StagedUploadRow.created_at < cutoff)
        )
        return result.rowcount or 0

    async def forget_staged_upload(self, key: str) -> None:
        """Drops the owner record of a staged upload that is gone."""
        await self.session.execute(delete(StagedUploadRow).where(StagedUploadRow.key == key))

    async def list_page(
        self,
        *,
        states: Sequence[JobState],
        pipeline: str,
        before_position: int | None,
        limit: int,
        tenant: str | None = None,
    ) -> list[tuple[int, Job]]:
        """Up to `limit` jobs, newest first, older than `before_position` when
        given, of `tenant` only when given."""
        statement = select(JobRow).order_by(JobRow.position.desc()).limit(limit)
        if tenant is not None:
            statement = statement.where(JobRow.tenant == tenant)
        if states:
            statement = statement.where(JobRow.state.in_([s.value for s in states]))
        if pipeline:
            statement = statement.where(JobRow.pipeline == pipeline)
        if before_position is not None:
            statement = statement.where(JobRow.position < before_position)
        rows = (await self.session.execute(statement)).scalars().all()
        ids = [r.job_id for r in rows]
        artifacts = await self._artifacts_for(ids)
        attempts = await self._attempts_for(ids)
        return [
            (r.position, _to_job(r, artifacts.get(r.job_id, ()), attempts.get(r.job_id, ())))
            for r in rows
        ]

    async def events_after(
        self, job_id: str, after_sequence: int, limit: int, max_bytes: int | None = None
    ) -> list[JobEvent]:
        """Stored events of a job with sequence > `after_sequence`, in order:
        at most `limit` of them and, with `max_bytes`, only as many as fit in
        that many bytes of payload (always at least one). The sizes are read
        first, so a batch never loads more than it returns."""
        where = (EventRow.job_id == job_id, EventRow.sequence > after_sequence)
        if max_bytes is not None:
            sizes = (
                await self.session.execute(
                    select(EventRow.sequence, func.length(cast(EventRow.payload, Text)))
                    .where(*where)
                    .order_by(EventRow.sequence)
                    .limit(limit)
                )
            ).all()
            if not sizes:
                return []
            total, last = 0, sizes[0][0]
            for sequence, size in sizes:
                total += size or 0
                if total > max_bytes and sequence != sizes[0][0]:
                    break
                last = sequence
            where = (*where, EventRow.sequence <= last)
        statement = select(EventRow).where(*where).order_by(EventRow.sequence).limit(limit)
        rows = (await self.session.execute(statement)).scalars().all()
        return [_to_event(r) for r in rows]

    async def stored_input_bytes(self) -> int:
        """Bytes of every job's stored input (what the storage quota counts)."""
        total = (await self.session.execute(select(func.sum(JobRow.input_size_bytes)))).scalar()
        return int(total or 0)

    async def ended_before(
        self, states: Sequence[JobState], cutoff: datetime, limit: int, *, input_kept: bool = False
    ) -> list[JobRow]:
        """Jobs in one of `states` (terminal ones) that ended before `cutoff`,
        oldest first; with `input_kept`, only those whose input is still stored.

        Counted from the row's last change, which for a terminal job is when
        it ended here: an imported job keeps its legacy end time in `ended_at`
        but counts from its import."""
        statement = (
            select(JobRow)
            .where(JobRow.state.in_([s.value for s in states]), JobRow.updated_at < cutoff)
            .order_by(JobRow.updated_at)
            .limit(limit)
        )
        if input_kept:
            statement = statement.where(JobRow.input_removed_at.is_(None))
        return list((await self.session.execute(statement)).scalars().all())

    async def delete_job(self, job_id: str) -> None:
        """Deletes a job's rows: events, attempts, artifacts and the job."""
        for table in (EventRow, AttemptRow, ArtifactRow):
            await self.session.execute(delete(table).where(table.job_id == job_id))
        await self.session.execute(delete(JobRow).where(JobRow.job_id == job_id))

    async def existing_job_ids(self, job_ids: Iterable[str]) -> set[str]:
        """Which of `job_ids` have a job row."""
        ids = list(job_ids)
        if not ids:
            return set()
        statement = select(JobRow.job_id).where(JobRow.job_id.in_(ids))
        return set((await self.session.execute(statement)).scalars().all())

    async def running_on_tokens(self, lease_tokens: Iterable[str]) -> list[JobRow]:
        """Running jobs whose current lease is one of `lease_tokens`."""
        tokens = list(lease_tokens)
        if not tokens:
            return []
        statement = select(JobRow).where(
            JobRow.state == JobState.RUNNING.value, JobRow.lease_token.in_(tokens)
        )
        return list((await self.session.execute(statement)).scalars().all())

    async def expired_leases(self, now: datetime, limit: int = 100) -> list[JobRow]:
        """Running jobs whose lease ran out."""
        return await self._due(JobState.RUNNING, JobRow.lease_expires_at, now, limit)

    async def overdue_attempts(self, now: datetime, limit: int = 100) -> list[JobRow]:
        """Running jobs past their execution deadline."""
        return await self._due(JobState.RUNNING, JobRow.execution_deadline_at, now, limit)

    async def overdue_in_queue(self, now: datetime, limit: int = 100) -> list[JobRow]:
        """Queued jobs past their queue deadline."""
        return await self._due(JobState.QUEUED, JobRow.queue_deadline_at, now, limit)

    async def _due(self, state: JobState, column, now: datetime, limit: int) -> list[JobRow]:
        statement = (
            select(JobRow)
            .where(JobRow.state == state.value, column <= now)
            .order_by(column)
            .limit(limit)
        )
        return list((await self.session.execute(statement)).scalars().all())

    async def next_deadline(self) -> datetime | None:
        """The earliest lease expiry, execution deadline or queue deadline."""
        candidates = [
            await self._earliest(JobState.RUNNING, JobRow.lease_expires_at),
            await self._earliest(JobState.RUNNING, JobRow.execution_deadline_at),
            await self._earliest(JobState.QUEUED, JobRow.queue_deadline_at),
        ]
        present = [c for c in candidates if c is not None]
        return min(present) if present else None

    async def next_available_at(self, now: datetime) -> datetime | None:
        """When the next queued job that is backing off becomes eligible."""
        return await self._earliest(JobState.QUEUED, JobRow.available_at, after=now)

    async def _earliest(self, state: JobState, column, after: datetime | None = None):
        # type_coerce keeps the UTC column type on the aggregate, so the value
        # comes back timezone-aware like every other instant.
        statement = select(type_coerce(func.min(column), UtcDateTime)).where(
            JobRow.state == state.value
        )
        if after is not None:
            statement = statement.where(column > after)
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def count_by_state(self) -> dict[str, int]:
        """How many jobs are in each state."""
        statement = select(JobRow.state, func.count()).group_by(JobRow.state)
        return dict((await self.session.execute(statement)).all())

    # -- writing -------------------------------------------------------------

    async def add(self, row: JobRow) -> None:
        """Inserts a new job row now (its events reference it; a clash on a
        unique key raises IntegrityError here)."""
        self.session.add(row)
        await self.session.flush()

    async def flush(self) -> None:
        """Sends staged changes (raises IntegrityError on a unique-key clash)."""
        await self.session.flush()

    async def claim_next_queued(
        self, pipelines: Iterable[str], worker_id: str, lease_token: str, lease_expires_at: datetime
    ) -> JobRow | None:
        """Atomically moves the first eligible queued job of one of `pipelines`
        (smallest dispatch rank, not backing off) to RUNNING, and opens its
        attempt record.

        Compare-and-set on the state: two job-service replicas racing for one
        job both try, exactly one update matches, the loser tries the next job.
        """
        names = list(pipelines)
        for _ in range(8):
            now = utc_now()
            candidate = (
                await self.session.execute(
                    select(JobRow.job_id, JobRow.execution_timeout_seconds)
                    .where(
                        JobRow.state == JobState.QUEUED.value,
                        JobRow.pipeline.in_(names),
                        (JobRow.available_at.is_(None)) | (JobRow.available_at <= now),
                    )
                    .order_by(JobRow.dispatch_rank, JobRow.position)
                    .limit(1)
                )
            ).one_or_none()
            if candidate is None:
                return None
            job_id, timeout_seconds = candidate
            result = await self.session.execute(
                update(JobRow)
                .where(JobRow.job_id == job_id, JobRow.state == JobState.QUEUED.value)
                .values(
                    state=JobState.RUNNING.value,
                    worker_id=worker_id,
                    lease_token=lease_token,
                    lease_expires_at=lease_expires_at,
                    execution_deadline_at=now + timedelta(seconds=timeout_seconds),
                    available_at=None,
                    started_at=now,
                    updated_at=now,
                    progress_fraction=0.0,
                    progress_stage="assigned",
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:
                row = await self.get_row(job_id)
                await self.session.refresh(row)
                self.session.add(
                    AttemptRow(
                        job_id=job_id,
                        number=row.attempt,
                        worker_id=worker_id,
                        started_at=now,
                        outcome=AttemptOutcome.RUNNING.value,
                    )
                )
                return row
        return None

    async def close_attempt(
        self, row: JobRow, outcome: AttemptOutcome, error: JobError | None = None
    ) -> None:
        """Records how the job's current attempt ended (if it is open)."""
        attempt = await self.session.get(AttemptRow, (row.job_id, row.attempt))
        if attempt is None or attempt.outcome != AttemptOutcome.RUNNING.value:
            return
        attempt.outcome = outcome.value
        attempt.ended_at = utc_now()
        if error is not None:
            attempt.error_code = error.code
            attempt.error_message = error.message
            attempt.error_reason = error.reason

    async def renew_leases(self, lease_tokens: Iterable[str], lease_expires_at: datetime) -> int:
        """Extends the running leases named by `lease_tokens`; returns how many."""
        tokens = list(lease_tokens)
        if not tokens:
            return 0
        result = await self.session.execute(
            update(JobRow)
            .where(JobRow.state == JobState.RUNNING.value, JobRow.lease_token.in_(tokens))
            .values(lease_expires_at=lease_expires_at)
            .execution_options(synchronize_session=False)
        )
        return result.rowcount

    def change_state(self, row: JobRow, target: JobState, *, reason: str) -> None:
        """Moves `row` to `target` (checked against the state machine) and records
        the state_changed event. Terminal targets use `finish` instead."""
        current = JobState(row.state)
        check_transition(current, target)
        row.state = target.value
        row.updated_at = utc_now()
        self.append_event(
            row,
            EventKind.STATE_CHANGED,
            {"from_state": current.value, "to_state": target.value, "reason": reason},
        )

    def finish(
        self, row: JobRow, target: JobState, kind: EventKind, payload: dict[str, Any]
    ) -> None:
        """Moves `row` to a terminal state and records the terminal event."""
        current = JobState(row.state)
        check_transition(current, target)
        now = utc_now()
        row.state = target.value
        row.ended_at = now
        row.updated_at = now
        row.lease_token = None
        row.lease_expires_at = None
        self.append_event(row, kind, payload)

    def append_event(self, row: JobRow, kind: EventKind, payload: dict[str, Any]) -> None:
        """Adds the next event of `row`'s job (sequence = last + 1)."""
        row.last_sequence = (row.last_sequence or 0) + 1
        self.session.add(
            EventRow(
                job_id=row.job_id,
                sequence=row.last_sequence,
                created_at=utc_now(),
                kind=kind.value,
                job_state=row.state,
                attempt=row.attempt,
                payload=payload,
            )
        )
        self.jobs_with_new_events.add(row.job_id)

    def set_artifacts(self, row: JobRow, artifacts: Sequence[Artifact]) -> None:
        """Records the files of the successful attempt."""
        for ordinal, artifact in enumerate(artifacts):
            self.session.add(
                ArtifactRow(
                    job_id=row.job_id,
                    ordinal=ordinal,
                    key=artifact.key.value,
                    media_type=artifact.media_type,
                    size_bytes=artifact.size_bytes,
                    width=artifact.width,
                    height=artifact.height,
                    time_seconds=artifact.time_seconds,
                    series_index=artifact.index,
                    frame_index=artifact.frame_index,
                )
            )

    # -- mapping -------------------------------------------------------------

    async def to_domain(self, row: JobRow) -> Job:
        """The domain Job of `row`, with its artifacts and attempts."""
        artifacts = await self._artifacts_for([row.job_id])
        attempts = await self._attempts_for([row.job_id])
        return _to_job(row, artifacts.get(row.job_id, ()), attempts.get(row.job_id, ()))

    async def _attempts_for(self, job_ids: list[str]) -> dict[str, tuple[Attempt, ...]]:
        if not job_ids:
            return {}
        statement = (
            select(AttemptRow)
            .where(AttemptRow.job_id.in_(job_ids))
            .order_by(AttemptRow.job_id, AttemptRow.number)
        )
        found: dict[str, list[Attempt]] = {}
        for row in (await self.session.execute(statement)).scalars():
            error = None
            if row.error_code:
                error = JobError(row.error_code, row.error_message or "", row.error_reason or "")
            found.setdefault(row.job_id, []).append(
                Attempt(
                    number=row.number,
                    worker_id=row.worker_id,
                    start_time=row.started_at,
                    end_time=row.ended_at,
                    outcome=AttemptOutcome(row.outcome),
                    error=error,
                )
            )
        return {job_id: tuple(items) for job_id, items in found.items()}

    async def _artifacts_for(self, job_ids: list[str]) -> dict[str, tuple[Artifact, ...]]:
        if not job_ids:
            return {}
        statement = (
            select(ArtifactRow)
            .where(ArtifactRow.job_id.in_(job_ids))
            .order_by(ArtifactRow.job_id, ArtifactRow.ordinal)
        )
        found: dict[str, list[Artifact]] = {}
        for row in (await self.session.execute(statement)).scalars():
            found.setdefault(row.job_id, []).append(
                Artifact(
                    StorageKey(row.key),
                    row.media_type,
                    row.size_bytes,
                    row.width,
                    row.height,
                    row.time_seconds,
                    row.series_index,
                    row.frame_index,
                )
            )
        return {job_id: tuple(items) for job_id, items in found.items()}


def _to_job(
    row: JobRow, artifacts: tuple[Artifact, ...], attempts: tuple[Attempt, ...] = ()
) -> Job:
    # Keys read back from the database go through StorageKey again: a row
    # written by an older (or buggy) version cannot smuggle a host path out.
    error = None
    if row.error_code:
        error = JobError(
            code=row.error_code,
            message=row.error_message or "",
            reason=row.error_reason or "",
            metadata=dict(row.error_metadata or {}),
        )
    return Job(
        job_id=row.job_id,
        state=JobState(row.state),
        pipeline=row.pipeline,
        parameters=dict(row.parameters or {}),
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        input_key=StorageKey(row.input_key),
        file_name=row.file_name,
        input_size_bytes=row.input_size_bytes,
        input_sha256=row.input_sha256,
        request_id=row.request_id,
        progress_fraction=row.progress_fraction,
        progress_stage=row.progress_stage,
        output_key=StorageKey(row.output_key) if row.output_key else None,
        artifacts=artifacts,
        summary=row.summary,
        error=error,
        create_time=row.created_at,
        start_time=row.started_at,
        end_time=row.ended_at,
        last_event_sequence=row.last_sequence,
        priority=row.priority,
        execution_timeout_seconds=row.execution_timeout_seconds,
        queue_timeout_seconds=row.queue_timeout_seconds,
        next_attempt_time=row.available_at if row.state == JobState.QUEUED.value else None,
        attempts=attempts,
        warnings=tuple(row.warnings or ()),
        worker_id=row.worker_id,
        lease_token=row.lease_token,
        input_format=row.input_format or "",
        input_removed_at=row.input_removed_at,
        tenant=row.tenant,
    )


def _to_event(row: EventRow) -> JobEvent:
    return JobEvent(
        job_id=row.job_id,
        sequence=row.sequence,
        create_time=row.created_at,
        kind=EventKind(row.kind),
        job_state=JobState(row.job_state),
        attempt=row.attempt,
        payload=dict(row.payload or {}),
    )
