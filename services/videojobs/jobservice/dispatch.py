"""Dispatch: leases on job attempts, pushed to connected workers.

Each connected worker has a `WorkerSession` (in memory: it *is* the live
connection). Everything about jobs lives in the database: a claim is an atomic
compare-and-set from QUEUED to RUNNING that stores the lease token and expiry,
so a restarted job-service rebuilds every decision from the database and a
second replica can never claim the same attempt.

Dispatch is event-driven: a submit, a worker connecting, a freed slot or a
requeue wakes the dispatcher, which hands the oldest queued jobs to the
sessions with the most free capacity. No polling loop.

Fencing: every report quotes the lease token; a report whose token is not the
job's current lease is refused, and the worker is told to stop that job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from videojobs.common import errors
from videojobs.jobservice.domain import (
    Artifact,
    Assignment,
    EventKind,
    JobState,
    attempt_prefix_for,
    new_lease_token,
    utc_now,
)
from videojobs.jobservice.store import Database, JobRepository
from videojobs.jobservice.store.models import JobRow
from videojobs.storage import StorageKey

log = logging.getLogger(__name__)

WORKER_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_CONCURRENT_JOBS = 64


@dataclass(frozen=True)
class DispatchSettings:
    """Lease timings. A lease lives `lease_duration` seconds past the last heartbeat."""

    heartbeat_interval: float = 2.0
    lease_duration: float = 10.0


@dataclass(frozen=True)
class StopOrder:
    """Tells a worker to stop one job. `reason`: cancelled, lease_lost or job_ended."""

    job_id: str
    lease_token: str
    reason: str


@dataclass(frozen=True)
class WorkerHello:
    """What a worker says about itself when it connects."""

    worker_id: str
    pipelines: frozenset[str]
    max_concurrent_jobs: int
    held_leases: dict[str, str] = field(default_factory=dict)  # job_id -> lease_token
    version: str = ""


@dataclass(eq=False)
class WorkerSession:
    """One live worker connection and the leases it holds."""

    hello: WorkerHello
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    leases: dict[str, str] = field(default_factory=dict)  # job_id -> lease_token
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    closed: bool = False
    draining: bool = False

    @property
    def worker_id(self) -> str:
        """The worker's announced id."""
        return self.hello.worker_id

    @property
    def free_capacity(self) -> int:
        """How many more jobs this worker may be given now."""
        if self.draining:
            return 0
        return self.hello.max_concurrent_jobs - len(self.leases)

    def send_stop(self, job_id: str, lease_token: str, reason: str) -> None:
        """Queues a StopOrder and forgets the lease."""
        self.leases.pop(job_id, None)
        self.outbox.put_nowait(StopOrder(job_id, lease_token, reason))


def validate_hello(hello: WorkerHello) -> None:
    """INVALID_ARGUMENT (field violations under `hello.`) for a malformed hello."""
    violations = []
    if not WORKER_ID_PATTERN.fullmatch(hello.worker_id):
        violations.append(("hello.worker_id", "1 to 128 characters from [A-Za-z0-9._:-]"))
    if not hello.pipelines:
        violations.append(("hello.pipelines", "name at least one pipeline"))
    if not 1 <= hello.max_concurrent_jobs <= MAX_CONCURRENT_JOBS:
        violations.append(("hello.max_concurrent_jobs", f"must be 1 to {MAX_CONCURRENT_JOBS}"))
    if violations:
        raise errors.invalid_argument("the worker hello is invalid", violations)


def _requeue(repository: JobRepository, row: JobRow, reason: str) -> None:
    """RUNNING -> QUEUED with attempt + 1 (a lost lease or a retryable failure)."""
    row.attempt += 1
    row.worker_id = None
    row.lease_token = None
    row.lease_expires_at = None
    row.started_at = None
    row.progress_fraction = 0.0
    row.progress_stage = "queued"
    repository.change_state(row, JobState.QUEUED, reason=reason)


class DispatchCoordinator:
    """Application service behind DispatchService.Connect."""

    def __init__(self, database: Database, settings: DispatchSettings) -> None:
        self._database = database
        self.settings = settings
        self._sessions: dict[str, WorkerSession] = {}
        self._wake_dispatcher = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        """Starts the dispatcher and the lease reaper."""
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="dispatcher"),
            asyncio.create_task(self._reaper_loop(), name="lease-reaper"),
        ]
        self._wake_dispatcher.set()

    async def stop(self) -> None:
        """Stops the background tasks. Leases stay in the database: workers that
        reconnect to the next job-service adopt them, the others expire."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def job_queued(self) -> None:
        """A job entered QUEUED: try to hand it out."""
        self._wake_dispatcher.set()

    @property
    def sessions(self) -> list[WorkerSession]:
        """Live worker sessions."""
        return list(self._sessions.values())

    # -- sessions ------------------------------------------------------------

    async def open_session(self, hello: WorkerHello) -> WorkerSession:
        """Registers a worker; adopts the leases it still holds that are current."""
        validate_hello(hello)
        session = WorkerSession(hello=hello)
        expiry = utc_now() + timedelta(seconds=self.settings.lease_duration)
        async with self._database.transaction() as repository:
            rows = await repository.running_on_tokens(hello.held_leases.values())
            for row in rows:
                if hello.held_leases.get(row.job_id) == row.lease_token:
                    row.worker_id = hello.worker_id
                    row.lease_expires_at = expiry
                    session.leases[row.job_id] = row.lease_token
        for job_id, token in hello.held_leases.items():
            if job_id not in session.leases:
                session.outbox.put_nowait(StopOrder(job_id, token, "lease_lost"))
        self._sessions[session.session_id] = session
        log.info(
            "worker %s connected (session %s, pipelines %s, capacity %d, adopted %d)",
            hello.worker_id,
            session.session_id,
            ",".join(sorted(hello.pipelines)),
            hello.max_concurrent_jobs,
            len(session.leases),
        )
        self._wake_dispatcher.set()
        return session

    async def close_session(self, session: WorkerSession, *, requeue: bool) -> None:
        """Forgets a session. With `requeue` (its stream broke while this server
        runs), its jobs go back to QUEUED with attempt + 1 at once."""
        session.closed = True
        self._sessions.pop(session.session_id, None)
        if requeue and session.leases:
            await self._requeue_leases(
                session.leases.values(), f"worker {session.worker_id} disconnected"
            )
        log.info("worker %s disconnected (session %s)", session.worker_id, session.session_id)
        self._wake_dispatcher.set()

    async def _requeue_leases(self, lease_tokens: Iterable[str], reason: str) -> list[str]:
        async with self._database.transaction() as repository:
            rows = await repository.running_on_tokens(lease_tokens)
            for row in rows:
                _requeue(repository, row, reason)
        if rows:
            log.info("requeued %s: %s", ",".join(r.job_id for r in rows), reason)
            self._wake_dispatcher.set()
        return [r.job_id for r in rows]

    # -- reports from workers ------------------------------------------------

    async def heartbeat(
        self, session: WorkerSession, running: dict[str, str], draining: bool = False
    ) -> None:
        """Renews the session's leases and reconciles what the worker runs."""
        if draining and not session.draining:
            log.info("worker %s is draining", session.worker_id)
        session.draining = draining
        for job_id, token in running.items():
            if session.leases.get(job_id) != token:
                # The worker runs something that is not (or no longer) its lease.
                session.outbox.put_nowait(StopOrder(job_id, token, "lease_lost"))
        expiry = utc_now() + timedelta(seconds=self.settings.lease_duration)
        async with self._database.transaction() as repository:
            await repository.renew_leases(session.leases.values(), expiry)

    async def report_progress(
        self, session: WorkerSession, job_id: str, token: str, fraction: float, stage: str
    ) -> None:
        """Records progress (never backwards) and its event."""
        async with self._database.transaction() as repository:
            row = await self._current_lease(repository, session, job_id, token)
            if row is None:
                return
            fraction = min(1.0, max(row.progress_fraction, fraction))
            if fraction == row.progress_fraction and stage == row.progress_stage:
                return
            row.progress_fraction = fraction
            row.progress_stage = stage
            row.updated_at = utc_now()
            repository.append_event(row, EventKind.PROGRESS, {"fraction": fraction, "stage": stage})

    async def report_partial_result(
        self, session: WorkerSession, job_id: str, token: str, pipeline: str, data: dict[str, Any]
    ) -> None:
        """Records a partial result event."""
        async with self._database.transaction() as repository:
            row = await self._current_lease(repository, session, job_id, token)
            if row is None:
                return
            repository.append_event(
                row, EventKind.PARTIAL_RESULT, {"pipeline": pipeline, "data": data}
            )

    async def report_completion(
        self,
        session: WorkerSession,
        job_id: str,
        token: str,
        output_key: StorageKey,
        artifacts: list[Artifact],
        summary: dict[str, Any],
    ) -> None:
        """RUNNING -> SUCCEEDED, recording the result of this attempt only."""
        async with self._database.transaction() as repository:
            row = await self._current_lease(repository, session, job_id, token)
            if row is None:
                return
            prefix = attempt_prefix_for(job_id, row.attempt)
            violations = [
                (f"completion.{name}", f"must lie under {prefix.value}/")
                for name, key in [("output_key", output_key)]
                + [(f"artifacts[{i}].key", a.key) for i, a in enumerate(artifacts)]
                if not key.is_within(prefix)
            ]
            if violations:
                raise errors.invalid_argument(
                    "completion names keys outside its attempt", violations
                )
            row.output_key = output_key.value
            row.summary = summary
            row.progress_fraction = 1.0
            row.progress_stage = "done"
            repository.set_artifacts(row, artifacts)
            repository.finish(
                row,
                JobState.SUCCEEDED,
                EventKind.COMPLETED,
                {
                    "output_key": output_key.value,
                    "artifacts": [
                        {"key": a.key.value, "media_type": a.media_type, "size_bytes": a.size_bytes}
                        for a in artifacts
                    ],
                    "summary": summary,
                },
            )
        session.leases.pop(job_id, None)
        log.info("job %s succeeded on worker %s", job_id, session.worker_id)
        self._wake_dispatcher.set()

    async def report_failure(
        self,
        session: WorkerSession,
        job_id: str,
        token: str,
        error: errors.ServiceError,
        retryable: bool,
    ) -> None:
        """A retryable failure with attempts left requeues; otherwise FAILED."""
        async with self._database.transaction() as repository:
            row = await self._current_lease(repository, session, job_id, token)
            if row is None:
                return
            if retryable and row.attempt < row.max_attempts:
                _requeue(repository, row, f"attempt {row.attempt} failed: {error.message}")
            else:
                row.error_code = error.code
                row.error_message = error.message
                row.error_reason = error.reason
                row.error_metadata = dict(error.metadata)
                repository.finish(
                    row,
                    JobState.FAILED,
                    EventKind.FAILED,
                    {
                        "code": error.code,
                        "message": error.message,
                        "reason": error.reason,
                        "metadata": dict(error.metadata),
                    },
                )
        session.leases.pop(job_id, None)
        log.info("job %s failed on worker %s: %s", job_id, session.worker_id, error.message)
        self._wake_dispatcher.set()

    async def report_stopped(self, session: WorkerSession, job_id: str, token: str) -> None:
        """The worker stopped a job: its slot is free again. A job it stopped on
        its own (draining, shutting down) while the lease is still current is
        handed back: QUEUED at once with attempt + 1."""
        session.leases.pop(job_id, None)
        await self._requeue_leases([token], f"handed back by worker {session.worker_id}")
        self._wake_dispatcher.set()

    def stop_job(self, job_id: str, lease_token: str, reason: str) -> None:
        """Tells whichever session holds the lease to stop the job."""
        for session in self._sessions.values():
            if session.leases.get(job_id) == lease_token:
                session.send_stop(job_id, lease_token, reason)
                self._wake_dispatcher.set()

    async def _current_lease(
        self, repository: JobRepository, session: WorkerSession, job_id: str, token: str
    ) -> JobRow | None:
        """The job's row when `token` is its current lease, else None (and the
        worker is told to stop the job)."""
        row = await repository.get_row(job_id, for_update=True)
        if row is not None and row.state == JobState.RUNNING.value and row.lease_token == token:
            return row
        reason = (
            "job_ended" if row is not None and JobState(row.state).is_terminal else "lease_lost"
        )
        log.info("refused a stale report for job %s from worker %s", job_id, session.worker_id)
        session.send_stop(job_id, token, reason)
        return None

    # -- background loops ----------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            await self._wake_dispatcher.wait()
            self._wake_dispatcher.clear()
            try:
                await self._dispatch_round()
            except Exception:  # noqa: BLE001 - the loop must survive a database hiccup
                log.exception("dispatch round failed; retrying")
                await asyncio.sleep(1.0)
                self._wake_dispatcher.set()

    async def _dispatch_round(self) -> None:
        handed_out = True
        while handed_out:
            handed_out = False
            ready = [s for s in self._sessions.values() if not s.closed and s.free_capacity > 0]
            for session in sorted(ready, key=lambda s: -s.free_capacity):
                if await self._assign_one(session):
                    handed_out = True

    async def _assign_one(self, session: WorkerSession) -> bool:
        token = new_lease_token()
        expiry = utc_now() + timedelta(seconds=self.settings.lease_duration)
        async with self._database.transaction() as repository:
            row = await repository.claim_oldest_queued(
                session.hello.pipelines, session.worker_id, token, expiry
            )
            if row is None:
                return False
            repository.append_event(
                row,
                EventKind.STATE_CHANGED,
                {
                    "from_state": JobState.QUEUED.value,
                    "to_state": JobState.RUNNING.value,
                    "reason": f"assigned to worker {session.worker_id}",
                },
            )
            assignment = Assignment(
                job_id=row.job_id,
                attempt=row.attempt,
                lease_token=token,
                input_key=StorageKey(row.input_key),
                pipeline=row.pipeline,
                parameters=dict(row.parameters or {}),
                output_prefix=attempt_prefix_for(row.job_id, row.attempt),
                lease_expire_time=expiry,
            )
        if session.closed:
            # The stream broke while we were claiming: the job goes straight back.
            await self._requeue_leases([token], f"worker {session.worker_id} disconnected")
            return False
        session.leases[assignment.job_id] = token
        session.outbox.put_nowait(assignment)
        log.info(
            "job %s attempt %d assigned to worker %s",
            assignment.job_id,
            assignment.attempt,
            session.worker_id,
        )
        return True

    async def _reaper_loop(self) -> None:
        lease_duration = self.settings.lease_duration
        while True:
            try:
                await self._requeue_expired()
                async with self._database.reading() as repository:
                    next_expiry = await repository.next_lease_expiry()
            except Exception:  # noqa: BLE001 - the loop must survive a database hiccup
                log.exception("lease reaper failed; retrying")
                next_expiry = None
            delay = lease_duration
            if next_expiry is not None:
                delay = min(lease_duration, max(0.0, (next_expiry - utc_now()).total_seconds()))
            # A lease granted while we sleep expires no earlier than
            # lease_duration from now, so sleeping at most that long is enough.
            await asyncio.sleep(delay + 0.05)

    async def _requeue_expired(self) -> None:
        async with self._database.transaction() as repository:
            rows = await repository.expired_leases(utc_now())
            expired = [(row.job_id, row.lease_token, row.worker_id) for row in rows]
            for row in rows:
                _requeue(repository, row, f"lease of worker {row.worker_id} expired")
        for job_id, token, worker_id in expired:
            log.info("lease of job %s (worker %s) expired; requeued", job_id, worker_id)
            self.stop_job(job_id, token, "lease_lost")
        if expired:
            self._wake_dispatcher.set()
