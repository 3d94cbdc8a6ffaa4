"""JobRepository: reads and writes jobs and their events inside one session.

The repository never commits: the application service that opened the unit of
work (`Database.transaction()`) owns the transaction, so a state change and the
event that reports it are always written together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import (
    Text,
    and_,
    bindparam,
    cast,
    delete,
    func,
    inspect,
    select,
    type_coerce,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from videojobs.jobservice import event_payloads
from videojobs.jobservice.domain import (
    Artifact,
    Attempt,
    AttemptOutcome,
    EventKind,
    Job,
    JobError,
    JobEvent,
    JobState,
    utc_now,
)
from videojobs.jobservice.event_payloads import EventPayload
from videojobs.jobservice.notices import (
    AttemptEnded,
    EventsAppended,
    EventsCommitted,
    Notice,
    merge,
)
from videojobs.jobservice.store.models import (
    ArtifactRow,
    AttemptRow,
    EventRow,
    JobPipelineRow,
    JobRow,
    StagedUploadRow,
    UtcDateTime,
    WorkerSessionRow,
)
from videojobs.pipelines.plan import KEY_SEPARATOR
from videojobs.storage import StorageKey

# The statements of the hot paths, built once with bound parameters: a
# statement object that is reused keeps its cache key, so SQLAlchemy neither
# rebuilds nor re-keys it per call (that was a tenth of job-service's CPU).
_JOB_BY_ID = select(JobRow).where(JobRow.job_id == bindparam("job_id"))
_JOB_BY_ID_LOCKED = _JOB_BY_ID.with_for_update()
_JOB_BY_REQUEST_ID = select(JobRow).where(
    JobRow.tenant == bindparam("tenant"), JobRow.request_id == bindparam("request_id")
)
_QUEUED_OF_TENANT = select(func.count()).where(
    JobRow.tenant == bindparam("tenant"), JobRow.state == JobState.QUEUED.value
)
_EVENTS_WHERE = (
    EventRow.job_id == bindparam("job_id"),
    EventRow.sequence > bindparam("after"),
)
_EVENT_SIZES_AFTER = (
    select(EventRow.sequence, func.length(cast(EventRow.payload, Text)))
    .where(*_EVENTS_WHERE)
    .order_by(EventRow.sequence)
    .limit(bindparam("limit"))
)
_EVENTS_AFTER = (
    select(EventRow).where(*_EVENTS_WHERE).order_by(EventRow.sequence).limit(bindparam("limit"))
)
_EVENTS_BETWEEN = (
    select(EventRow)
    .where(*_EVENTS_WHERE, EventRow.sequence <= bindparam("last"))
    .order_by(EventRow.sequence)
    .limit(bindparam("limit"))
)
_ATTEMPTS_OF = (
    select(AttemptRow)
    .where(AttemptRow.job_id.in_(bindparam("job_ids", expanding=True)))
    .order_by(AttemptRow.job_id, AttemptRow.number)
)
_ARTIFACTS_OF = (
    select(ArtifactRow)
    .where(ArtifactRow.job_id.in_(bindparam("job_ids", expanding=True)))
    .order_by(ArtifactRow.job_id, ArtifactRow.ordinal)
)


def _claimable_statement(skip_locked: bool):
    """Queued jobs, not backing off, whose every pipeline is one of `names`,
    in dispatch order, `limit` of them, locked (see `JobRepository.claimable`)."""
    foreign = (
        select(JobPipelineRow.job_id)
        .where(
            JobPipelineRow.job_id == JobRow.job_id,
            JobPipelineRow.pipeline.not_in(bindparam("names", expanding=True)),
        )
        .exists()
    )
    now = bindparam("now", type_=UtcDateTime)
    return (
        select(JobRow)
        .where(
            JobRow.state == JobState.QUEUED.value,
            (JobRow.available_at.is_(None)) | (JobRow.available_at <= now),
            ~foreign,
            # A job always has its set; one without rows is never claimed blind.
            select(JobPipelineRow.job_id).where(JobPipelineRow.job_id == JobRow.job_id).exists(),
        )
        .order_by(JobRow.dispatch_rank, JobRow.position)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=skip_locked)
    )


_CLAIMABLE = _claimable_statement(skip_locked=False)
_CLAIMABLE_SKIP_LOCKED = _claimable_statement(skip_locked=True)


class JobRepository:
    """Jobs, artifacts and events, over one AsyncSession."""

    def __init__(self, session: AsyncSession, *, skip_locked: bool = False) -> None:
        self.session = session
        # PostgreSQL: rows another replica is working on are skipped, not waited
        # for (SQLite serialises writers anyway).
        self._skip_locked = skip_locked
        self._notices: list[Notice] = []
        self._jobs_with_new_events: set[str] = set()
        self._new_events: list[JobEvent] = []
        self._events_awaiting_insert: list[EventRow] = []

    # -- notices -------------------------------------------------------------

    def notify(self, notice: Notice) -> None:
        """Sends `notice` to every replica once this unit of work commits."""
        self._notices.append(notice)

    def pending_notices(self) -> list[Notice]:
        """What this unit of work will announce when it commits."""
        notices = list(self._notices)
        if self._jobs_with_new_events:
            notices.append(EventsAppended(frozenset(self._jobs_with_new_events)))
            notices.append(EventsCommitted(tuple(self._new_events)))
        return merge(notices)

    # -- reading -------------------------------------------------------------

    async def get_row(self, job_id: str, *, for_update: bool = False) -> JobRow | None:
        """The job's row, locked for the rest of the transaction when `for_update`."""
        statement = _JOB_BY_ID_LOCKED if for_update else _JOB_BY_ID
        return (await self.session.execute(statement, {"job_id": job_id})).scalar_one_or_none()

    async def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        row = await self.get_row(job_id)
        return None if row is None else await self.to_domain(row)

    async def get_row_by_request_id(self, tenant: str, request_id: str) -> JobRow | None:
        """The job a tenant created with this idempotency key, or None."""
        parameters = {"tenant": tenant, "request_id": request_id}
        return (await self.session.execute(_JOB_BY_REQUEST_ID, parameters)).scalar_one_or_none()

    async def count_queued(self, tenant: str) -> int:
        """How many of a tenant's jobs wait in the queue."""
        return int((await self.session.execute(_QUEUED_OF_TENANT, {"tenant": tenant})).scalar_one())

    async def staged_upload_owner(self, key: str) -> str | None:
        """The tenant that owns a staged upload, or None when nobody does yet."""
        row = await self.staged_upload(key)
        return None if row is None else row.tenant

    async def staged_upload(self, key: str) -> StagedUploadRow | None:
        """A staged upload's record (owner, and digest once written whole)."""
        return await self.session.get(StagedUploadRow, key)

    async def record_staged_upload_digest(self, key: str, size_bytes: int, sha256: str) -> None:
        """Keeps the size and SHA-256 of a staged upload written whole."""
        await self.session.execute(
            update(StagedUploadRow)
            .where(StagedUploadRow.key == key)
            .values(size_bytes=size_bytes, sha256=sha256)
        )

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
            statement = statement.where(_includes_pipeline(pipeline))
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
        parameters = {"job_id": job_id, "after": after_sequence, "limit": limit}
        last = None
        if max_bytes is not None:
            sizes = (await self.session.execute(_EVENT_SIZES_AFTER, parameters)).all()
            if not sizes:
                return []
            total, last = 0, sizes[0][0]
            for sequence, size in sizes:
                total += size or 0
                if total > max_bytes and sequence != sizes[0][0]:
                    break
                last = sequence
        if last is None:
            statement = _EVENTS_AFTER
        else:
            statement, parameters = _EVENTS_BETWEEN, {**parameters, "last": last}
        rows = (await self.session.execute(statement, parameters)).scalars().all()
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
        for table in (EventRow, AttemptRow, ArtifactRow, JobPipelineRow):
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
        statement = (
            select(JobRow)
            .where(JobRow.state == JobState.RUNNING.value, JobRow.lease_token.in_(tokens))
            .with_for_update()
        )
        return list((await self.session.execute(statement)).scalars().all())

    async def running_for_worker(self, worker_id: str) -> list[JobRow]:
        """Running jobs leased to `worker_id` (by any session, on any replica), locked."""
        statement = (
            select(JobRow)
            .where(JobRow.state == JobState.RUNNING.value, JobRow.worker_id == worker_id)
            .with_for_update()
        )
        return list((await self.session.execute(statement)).scalars().all())

    async def running_in_session(self, session_id: str) -> list[JobRow]:
        """Running jobs whose lease the dispatch session `session_id` holds, locked."""
        statement = (
            select(JobRow)
            .where(JobRow.state == JobState.RUNNING.value, JobRow.lease_session == session_id)
            .with_for_update()
        )
        return list((await self.session.execute(statement)).scalars().all())

    # -- worker sessions (ListWorkers) -----------------------------------------

    async def open_worker_session(self, row: WorkerSessionRow, forget_before: datetime) -> None:
        """Records a newly opened dispatch session; drops rows last touched
        before `forget_before` (sessions of a replica that died)."""
        await self.session.execute(
            delete(WorkerSessionRow).where(WorkerSessionRow.last_seen_at < forget_before)
        )
        self.session.add(row)

    async def touch_worker_session(
        self, session_id: str, seen_at: datetime, draining: bool
    ) -> None:
        """A heartbeat of the session: when it was heard and whether it drains."""
        await self.session.execute(
            update(WorkerSessionRow)
            .where(WorkerSessionRow.session_id == session_id)
            .values(last_seen_at=seen_at, draining=draining)
        )

    async def close_worker_session(self, session_id: str) -> None:
        """Forgets a session that ended."""
        await self.session.execute(
            delete(WorkerSessionRow).where(WorkerSessionRow.session_id == session_id)
        )

    async def worker_sessions(self, seen_since: datetime) -> list[WorkerSessionRow]:
        """Sessions heard from at or after `seen_since`, by worker id."""
        statement = (
            select(WorkerSessionRow)
            .where(WorkerSessionRow.last_seen_at >= seen_since)
            .order_by(WorkerSessionRow.worker_id, WorkerSessionRow.connected_at)
        )
        return list((await self.session.execute(statement)).scalars().all())

    async def running_jobs_by_session(self) -> list[tuple[str, str, str]]:
        """(session id, job id, tenant) of every running job."""
        statement = select(JobRow.lease_session, JobRow.job_id, JobRow.tenant).where(
            JobRow.state == JobState.RUNNING.value, JobRow.lease_session.is_not(None)
        )
        return [tuple(row) for row in (await self.session.execute(statement)).all()]

    # -- statistics (GetStats) --------------------------------------------------

    async def count_by_state_and_pipeline(self) -> dict[tuple[str, str], int]:
        """How many jobs are in each (state, pipeline set)."""
        statement = select(JobRow.state, JobRow.pipeline, func.count()).group_by(
            JobRow.state, JobRow.pipeline
        )
        return {
            (state, pipeline): count
            for state, pipeline, count in (await self.session.execute(statement)).all()
        }

    async def job_timings(
        self, created_since: datetime, tenant: str | None
    ) -> list[tuple[str, str, datetime, datetime | None, datetime | None, datetime | None]]:
        """(pipeline set, state, created, first attempt's start, last start,
        end) of each job created at or after `created_since` (of `tenant`, or
        every tenant for None)."""
        first_start = (
            select(func.min(AttemptRow.started_at))
            .where(AttemptRow.job_id == JobRow.job_id)
            .scalar_subquery()
        )
        statement = select(
            JobRow.pipeline,
            JobRow.state,
            JobRow.created_at,
            type_coerce(first_start, UtcDateTime),
            JobRow.started_at,
            JobRow.ended_at,
        ).where(JobRow.created_at >= created_since)
        if tenant is not None:
            statement = statement.where(JobRow.tenant == tenant)
        return [tuple(row) for row in (await self.session.execute(statement)).all()]

    async def next_claimable(self, pipelines: Iterable[str], now: datetime) -> JobRow | None:
        """The first queued job (smallest dispatch rank, not backing off) whose
        every pipeline is one of `pipelines`, locked for this transaction."""
        rows = await self.claimable(pipelines, now, 1)
        return rows[0] if rows else None

    async def claimable(self, pipelines: Iterable[str], now: datetime, limit: int) -> list[JobRow]:
        """The first `limit` queued jobs (smallest dispatch rank, not backing
        off) whose every pipeline is one of `pipelines`, locked for this
        transaction.

        On PostgreSQL rows another replica has locked are skipped, so replicas
        claiming at once take different jobs; the caller's transition re-checks
        the state in the same transaction."""
        statement = _CLAIMABLE_SKIP_LOCKED if self._skip_locked else _CLAIMABLE
        parameters = {"names": sorted(set(pipelines)), "now": now, "limit": limit}
        return list((await self.session.execute(statement, parameters)).scalars().all())

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
        # Locked for the reaper's transaction; on PostgreSQL rows another
        # replica's reaper holds are skipped, so each expiry is handled once.
        statement = (
            select(JobRow)
            .where(JobRow.state == state.value, column <= now)
            .order_by(column)
            .limit(limit)
            .with_for_update(skip_locked=self._skip_locked)
        )
        return list((await self.session.execute(statement)).scalars().all())

    async def next_deadline(self) -> datetime | None:
        """The earliest lease expiry, execution deadline or queue deadline (one
        round trip; each minimum is read from its (state, column) index)."""

        def earliest(state: JobState, column):
            return (
                select(type_coerce(func.min(column), UtcDateTime))
                .where(JobRow.state == state.value)
                .scalar_subquery()
            )

        row = (
            await self.session.execute(
                select(
                    earliest(JobState.RUNNING, JobRow.lease_expires_at),
                    earliest(JobState.RUNNING, JobRow.execution_deadline_at),
                    earliest(JobState.QUEUED, JobRow.queue_deadline_at),
                )
            )
        ).one()
        present = [value for value in row if value is not None]
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
        unique key raises IntegrityError here). Events recorded before, while
        the row was new, are staged after it: without relationship()s the
        unit of work would not insert them in that order."""
        self.session.add(row)
        await self.session.flush()
        self.session.add_all(self._events_awaiting_insert)
        self._events_awaiting_insert.clear()

    async def flush(self) -> None:
        """Sends staged changes (raises IntegrityError on a unique-key clash)."""
        await self.session.flush()

    def open_attempt(self, row: JobRow, worker_id: str, at: datetime) -> None:
        """Records the start of the row's current attempt."""
        self.session.add(
            AttemptRow(
                job_id=row.job_id,
                number=row.attempt,
                worker_id=worker_id,
                started_at=at,
                outcome=AttemptOutcome.RUNNING.value,
            )
        )

    def set_pipelines(self, row: JobRow, pipelines: Sequence[str]) -> None:
        """Stores the set of pipelines the job runs (one row each)."""
        for name in sorted(set(pipelines)):
            self.session.add(JobPipelineRow(job_id=row.job_id, pipeline=name))

    async def close_attempt(
        self, row: JobRow, outcome: AttemptOutcome, error: JobError | None = None
    ) -> None:
        """Records how the job's current attempt ended (if it is open)."""
        # No flush first: the job's pending changes go in one UPDATE at commit,
        # not one now and another for what the caller changes after this.
        with self.session.no_autoflush:
            attempt = await self.session.get(AttemptRow, (row.job_id, row.attempt))
        if attempt is None or attempt.outcome != AttemptOutcome.RUNNING.value:
            return
        attempt.outcome = outcome.value
        attempt.ended_at = utc_now()
        self.notify(
            AttemptEnded(
                row.job_id,
                row.attempt,
                row.pipeline,
                outcome.value,
                max(0.0, (attempt.ended_at - attempt.started_at).total_seconds()),
            )
        )
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

    def record(
        self,
        row: JobRow,
        payload: EventPayload,
        *,
        at: datetime | None = None,
        job_state: JobState | None = None,
    ) -> None:
        """Adds the next event of `row`'s job (sequence = last + 1), written at
        `at` (now) in `job_state` (the row's state); announced on commit."""
        row.last_sequence = (row.last_sequence or 0) + 1
        created_at = at or utc_now()
        state = job_state if job_state is not None else JobState(row.state)
        event_row = EventRow(
            job_id=row.job_id,
            sequence=row.last_sequence,
            created_at=created_at,
            kind=payload.kind.value,
            job_state=state.value,
            attempt=row.attempt,
            payload=event_payloads.encode(payload),
        )
        if inspect(row).transient:
            # A job not inserted yet: inserted by `add` already counting this
            # event (no UPDATE after), which is staged once the row is in.
            self._events_awaiting_insert.append(event_row)
        else:
            self.session.add(event_row)
        self._jobs_with_new_events.add(row.job_id)
        # The same event as a read would return it, for followers in this process.
        self._new_events.append(
            JobEvent(
                job_id=row.job_id,
                sequence=row.last_sequence,
                create_time=created_at,
                kind=payload.kind,
                job_state=state,
                attempt=row.attempt,
                payload=payload,
            )
        )

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
        """The domain Job of `row`, with its artifacts and attempts: read only
        where the row says there can be some (artifacts belong to a SUCCEEDED
        job alone; a job that never started has no attempts), so a new job
        costs no read at all. Its pipelines are the row's pipeline set."""
        artifacts: dict[str, tuple[Artifact, ...]] = {}
        attempts: dict[str, tuple[Attempt, ...]] = {}
        if row.state == JobState.SUCCEEDED.value:
            artifacts = await self._artifacts_for([row.job_id])
        if row.started_at is not None or row.attempt != 1:
            attempts = await self._attempts_for([row.job_id])
        return _to_job(row, artifacts.get(row.job_id, ()), attempts.get(row.job_id, ()))

    async def _attempts_for(self, job_ids: list[str]) -> dict[str, tuple[Attempt, ...]]:
        if not job_ids:
            return {}
        found: dict[str, list[Attempt]] = {}
        rows = await self.session.execute(_ATTEMPTS_OF, {"job_ids": job_ids})
        for row in rows.scalars():
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
        found: dict[str, list[Artifact]] = {}
        rows = await self.session.execute(_ARTIFACTS_OF, {"job_ids": job_ids})
        for row in rows.scalars():
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


def _includes_pipeline(pipeline: str):
    """Jobs whose set of pipelines includes `pipeline` (`a+b`: both)."""
    return and_(
        *(
            select(JobPipelineRow.job_id)
            .where(JobPipelineRow.job_id == JobRow.job_id, JobPipelineRow.pipeline == name)
            .exists()
            for name in sorted(set(filter(None, pipeline.split("+"))))
        )
    )


def _to_job(
    row: JobRow,
    artifacts: tuple[Artifact, ...],
    attempts: tuple[Attempt, ...] = (),
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
        # The set's canonical name is its sorted names joined (as its rows).
        pipelines=tuple(row.pipeline.split(KEY_SEPARATOR)),
    )


def _to_event(row: EventRow) -> JobEvent:
    return JobEvent(
        job_id=row.job_id,
        sequence=row.sequence,
        create_time=row.created_at,
        kind=EventKind(row.kind),
        job_state=JobState(row.job_state),
        attempt=row.attempt,
        payload=event_payloads.decode(EventKind(row.kind), row.payload),
    )
