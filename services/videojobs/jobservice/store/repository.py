"""JobRepository: reads and writes jobs and their events inside one session.

The repository never commits: the application service that opened the unit of
work (`Database.transaction()`) owns the transaction, so a state change and the
event that reports it are always written together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession

from videojobs.jobservice.domain import (
    Artifact,
    EventKind,
    Job,
    JobError,
    JobEvent,
    JobState,
    check_transition,
    utc_now,
)
from videojobs.jobservice.store.models import ArtifactRow, EventRow, JobRow, UtcDateTime
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

    async def get_row_by_request_id(self, request_id: str) -> JobRow | None:
        """The job created with this idempotency key, or None."""
        statement = select(JobRow).where(JobRow.request_id == request_id)
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def list_page(
        self,
        *,
        states: Sequence[JobState],
        pipeline: str,
        before_position: int | None,
        limit: int,
    ) -> list[tuple[int, Job]]:
        """Up to `limit` jobs, newest first, older than `before_position` when given."""
        statement = select(JobRow).order_by(JobRow.position.desc()).limit(limit)
        if states:
            statement = statement.where(JobRow.state.in_([s.value for s in states]))
        if pipeline:
            statement = statement.where(JobRow.pipeline == pipeline)
        if before_position is not None:
            statement = statement.where(JobRow.position < before_position)
        rows = (await self.session.execute(statement)).scalars().all()
        artifacts = await self._artifacts_for([r.job_id for r in rows])
        return [(r.position, _to_job(r, artifacts.get(r.job_id, ()))) for r in rows]

    async def events_after(self, job_id: str, after_sequence: int, limit: int) -> list[JobEvent]:
        """Stored events of a job with sequence > `after_sequence`, in order."""
        statement = (
            select(EventRow)
            .where(EventRow.job_id == job_id, EventRow.sequence > after_sequence)
            .order_by(EventRow.sequence)
            .limit(limit)
        )
        rows = (await self.session.execute(statement)).scalars().all()
        return [_to_event(r) for r in rows]

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
        statement = (
            select(JobRow)
            .where(JobRow.state == JobState.RUNNING.value, JobRow.lease_expires_at <= now)
            .order_by(JobRow.lease_expires_at)
            .limit(limit)
        )
        return list((await self.session.execute(statement)).scalars().all())

    async def next_lease_expiry(self) -> datetime | None:
        """The earliest lease expiry among running jobs."""
        # type_coerce keeps the UTC column type on the aggregate, so the value
        # comes back timezone-aware like every other instant.
        statement = select(type_coerce(func.min(JobRow.lease_expires_at), UtcDateTime)).where(
            JobRow.state == JobState.RUNNING.value
        )
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

    async def claim_oldest_queued(
        self, pipelines: Iterable[str], worker_id: str, lease_token: str, lease_expires_at: datetime
    ) -> JobRow | None:
        """Atomically moves the oldest queued job of one of `pipelines` to RUNNING.

        Compare-and-set on the state: two job-service replicas racing for one
        job both try, exactly one update matches, the loser tries the next job.
        """
        names = list(pipelines)
        for _ in range(8):
            candidate = (
                await self.session.execute(
                    select(JobRow.job_id)
                    .where(JobRow.state == JobState.QUEUED.value, JobRow.pipeline.in_(names))
                    .order_by(JobRow.position)
                    .limit(1)
                )
            ).scalar_one_or_none()
            if candidate is None:
                return None
            now = utc_now()
            result = await self.session.execute(
                update(JobRow)
                .where(JobRow.job_id == candidate, JobRow.state == JobState.QUEUED.value)
                .values(
                    state=JobState.RUNNING.value,
                    worker_id=worker_id,
                    lease_token=lease_token,
                    lease_expires_at=lease_expires_at,
                    started_at=now,
                    updated_at=now,
                    progress_fraction=0.0,
                    progress_stage="assigned",
                )
                .execution_options(synchronize_session=False)
            )
            if result.rowcount == 1:
                row = await self.get_row(candidate)
                await self.session.refresh(row)
                return row
        return None

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
                )
            )

    # -- mapping -------------------------------------------------------------

    async def to_domain(self, row: JobRow) -> Job:
        """The domain Job of `row`, with its artifacts."""
        artifacts = await self._artifacts_for([row.job_id])
        return _to_job(row, artifacts.get(row.job_id, ()))

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
                Artifact(StorageKey(row.key), row.media_type, row.size_bytes)
            )
        return {job_id: tuple(items) for job_id, items in found.items()}


def _to_job(row: JobRow, artifacts: tuple[Artifact, ...]) -> Job:
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
        worker_id=row.worker_id,
        lease_token=row.lease_token,
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
