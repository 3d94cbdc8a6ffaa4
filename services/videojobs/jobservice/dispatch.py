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
import functools
import itertools
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from videojobs.common import errors
from videojobs.common.auth import LOCAL_PRINCIPAL, Principal
from videojobs.common.failures import RepeatedFailureLog
from videojobs.common.text import echo
from videojobs.jobservice.domain import (
    Artifact,
    Assignment,
    AttemptOutcome,
    EventKind,
    JobError,
    JobState,
    attempt_prefix_for,
    job_id_of,
    new_lease_token,
    retry_delay_seconds,
    utc_now,
)
from videojobs.jobservice.limits import (
    MAX_ANNOUNCED_PIPELINES,
    MAX_HELD_LEASES,
    MAX_PIPELINE_NAME_CHARS,
    MAX_WORKER_VERSION_CHARS,
    PROGRESS_EVENT_MIN_INTERVAL_SECONDS,
    ReportLimits,
)
from videojobs.jobservice.reports import (
    ReportPolicy,
    TokenBucket,
    clean_failure,
    clean_stage,
    clean_warnings,
    completion_problem,
    json_depth,
)
from videojobs.jobservice.store import Database, JobRepository
from videojobs.jobservice.store.models import JobRow
from videojobs.storage import BlobStore, StorageKey
from videojobs.storage.blobstore import BlobNotFound, BlobStoreError

log = logging.getLogger(__name__)

WORKER_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_CONCURRENT_JOBS = 64
# Bounds the pipeline-set keys a worker's claims match (2**n - 1 of them).
MAX_MATCHED_PIPELINES = 10
# A background loop that keeps failing (a full database) waits this long at most.
MAX_LOOP_BACKOFF_SECONDS = 10.0


@dataclass(frozen=True)
class DispatchSettings:
    """Lease timings and retry policy.

    A lease lives `lease_duration` seconds past the last heartbeat. A retryable
    failure waits `retry_backoff_base * 2**(failures-1)` seconds (capped at
    `retry_backoff_max`, with jitter) before its next attempt. A job whose
    worker vanished more than `max_lease_losses` times fails (ABORTED).
    """

    heartbeat_interval: float = 2.0
    lease_duration: float = 10.0
    retry_backoff_base: float = 1.0
    retry_backoff_max: float = 60.0
    max_lease_losses: int = 10


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
    draining: bool = False


@dataclass(eq=False)
class WorkerSession:
    """One live worker connection and the leases it holds."""

    hello: WorkerHello
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    leases: dict[str, str] = field(default_factory=dict)  # job_id -> lease_token
    # Jobs the worker was told to stop and has not confirmed stopping: they
    # still occupy a slot, so a worker is never given more than it declared.
    stopping: dict[str, str] = field(default_factory=dict)  # job_id -> lease_token
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    closed: bool = False
    draining: bool = False
    # Set when one of its leases expired while its stream stayed open (a hung
    # process): it gets no new job until it says something again.
    unresponsive: bool = False
    # Per lease: the partial-result rate limiter and when progress was last
    # recorded (progress events are thinned to one per interval).
    partial_buckets: dict[str, TokenBucket] = field(default_factory=dict)
    last_progress_at: dict[str, float] = field(default_factory=dict)
    # Progress held back by that interval, and the timers that record it.
    pending_progress: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    progress_flushes: dict[str, asyncio.TimerHandle] = field(default_factory=dict)

    @property
    def worker_id(self) -> str:
        """The worker's announced id."""
        return self.hello.worker_id

    @functools.cached_property
    def pipeline_keys(self) -> list[str]:
        """Every pipeline set this worker can run, as canonical keys: a job of
        several pipelines goes only to a worker that runs all of them."""
        names = sorted(self.hello.pipelines)[:MAX_MATCHED_PIPELINES]
        return [
            "+".join(combo)
            for size in range(1, len(names) + 1)
            for combo in itertools.combinations(names, size)
        ]

    @property
    def free_capacity(self) -> int:
        """How many more jobs this worker may be given now."""
        if self.draining or self.unresponsive:
            return 0
        return self.hello.max_concurrent_jobs - len(self.leases) - len(self.stopping)

    def send_stop(self, job_id: str, lease_token: str, reason: str) -> None:
        """Queues a StopOrder; the slot stays taken until the worker confirms."""
        if self.leases.get(job_id) == lease_token:
            del self.leases[job_id]
            self.stopping[job_id] = lease_token
        self.outbox.put_nowait(StopOrder(job_id, lease_token, reason))

    def heard_from(self) -> None:
        """The worker said something: it is alive."""
        self.unresponsive = False


# Put in a session's outbox when a newer session of its worker id replaced it.
SESSION_REPLACED = object()


def check_worker_identity(worker_id: str, principal: Principal) -> None:
    """PERMISSION_DENIED unless `worker_id` is the principal's own: its name, or
    its name, ':' and a suffix (several processes of one credential).
    Administrators (and, without an auth file, everyone) may use any id."""
    if principal.is_admin:
        return
    if worker_id == principal.name or worker_id.startswith(principal.name + ":"):
        return
    raise errors.ServiceError(
        f"worker id {echo(worker_id)} is not the identity of this credential "
        f"({principal.name}, or {principal.name}:<suffix>)",
        "PERMISSION_DENIED",
        "WORKER_ID_MISMATCH",
        metadata={"principal": principal.name},
    )


def validate_hello(hello: WorkerHello) -> None:
    """INVALID_ARGUMENT (field violations under `hello.`) for a malformed hello."""
    violations = []
    if not WORKER_ID_PATTERN.fullmatch(hello.worker_id):
        violations.append(("hello.worker_id", "1 to 128 characters from [A-Za-z0-9._:-]"))
    if not hello.pipelines:
        violations.append(("hello.pipelines", "name at least one pipeline"))
    elif len(hello.pipelines) > MAX_ANNOUNCED_PIPELINES:
        violations.append(("hello.pipelines", f"at most {MAX_ANNOUNCED_PIPELINES} pipelines"))
    else:
        for name in sorted(hello.pipelines):
            if not name or len(name) > MAX_PIPELINE_NAME_CHARS:
                violations.append(
                    (
                        "hello.pipelines",
                        f"pipeline name {echo(name)} must be 1 to {MAX_PIPELINE_NAME_CHARS} "
                        "characters",
                    )
                )
    if len(hello.held_leases) > MAX_HELD_LEASES:
        violations.append(("hello.held_leases", f"at most {MAX_HELD_LEASES}"))
    if len(hello.version) > MAX_WORKER_VERSION_CHARS:
        violations.append(("hello.version", f"at most {MAX_WORKER_VERSION_CHARS} characters"))
    if not 1 <= hello.max_concurrent_jobs <= MAX_CONCURRENT_JOBS:
        violations.append(("hello.max_concurrent_jobs", f"must be 1 to {MAX_CONCURRENT_JOBS}"))
    if violations:
        raise errors.invalid_argument("the worker hello is invalid", violations)


def _requeue(
    repository: JobRepository, row: JobRow, reason: str, delay_seconds: float = 0.0
) -> None:
    """RUNNING -> QUEUED with attempt + 1, eligible again after `delay_seconds`."""
    row.attempt += 1
    row.worker_id = None
    row.lease_token = None
    row.lease_expires_at = None
    row.execution_deadline_at = None
    row.started_at = None
    row.progress_fraction = 0.0
    row.progress_stage = "queued" if delay_seconds <= 0 else "waiting to retry"
    row.available_at = utc_now() + timedelta(seconds=delay_seconds) if delay_seconds > 0 else None
    repository.change_state(row, JobState.QUEUED, reason=reason)


def fail_job(repository: JobRepository, row: JobRow, error: JobError) -> None:
    """Ends the job FAILED with `error` (and the terminal failed event)."""
    row.error_code = error.code
    row.error_message = error.message
    row.error_reason = error.reason
    row.error_metadata = dict(error.metadata)
    row.execution_deadline_at = None
    row.available_at = None
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


class DispatchCoordinator:
    """Application service behind DispatchService.Connect."""

    def __init__(
        self,
        database: Database,
        settings: DispatchSettings,
        blob_store: BlobStore | None = None,
        report_limits: ReportLimits | None = None,
    ) -> None:
        self._database = database
        self.settings = settings
        self._blob_store = blob_store
        self._reports = ReportPolicy(report_limits or ReportLimits())
        self._sessions: dict[str, WorkerSession] = {}
        self._wake_dispatcher = asyncio.Event()
        self._wake_reaper = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._dispatch_failures = RepeatedFailureLog(log, "dispatch round")
        self._reaper_failures = RepeatedFailureLog(log, "deadline check")
        self._requeue_failures = RepeatedFailureLog(log, "requeue of a disconnected worker's jobs")

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
        """A job entered QUEUED: try to hand it out (and watch its queue deadline)."""
        self._wake_dispatcher.set()
        self._wake_reaper.set()

    @property
    def max_partial_result_bytes(self) -> int:
        """Largest partial result that may be recorded (bigger ones are refused by size)."""
        return self._reports.limits.max_partial_result_bytes

    @property
    def sessions(self) -> list[WorkerSession]:
        """Live worker sessions."""
        return list(self._sessions.values())

    # -- sessions ------------------------------------------------------------

    async def open_session(
        self, hello: WorkerHello, principal: Principal = LOCAL_PRINCIPAL
    ) -> WorkerSession:
        """Registers a worker; adopts the leases it still holds that are current.

        The worker id must be the principal's own (its name, or the name, a
        colon and a suffix) unless the principal is an administrator. A live
        session of the same worker id is replaced: its stream ends (ABORTED,
        SESSION_REPLACED), leases the new hello holds move to the new session,
        the others go back to the queue."""
        validate_hello(hello)
        check_worker_identity(hello.worker_id, principal)
        session = WorkerSession(hello=hello, draining=hello.draining)
        replaced_leases = self._replace_older_session(hello)
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
        lost = [token for job_id, token in replaced_leases.items() if job_id not in session.leases]
        if lost:
            await self._requeue_leases(lost, f"worker {hello.worker_id} reconnected without them")
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

    def _replace_older_session(self, hello: WorkerHello) -> dict[str, str]:
        """Ends a live session of the same worker id (never two sessions with
        one id); returns the leases it held."""
        for older in list(self._sessions.values()):
            if older.worker_id != hello.worker_id or older.closed:
                continue
            log.warning(
                "worker %s: a new session replaces session %s",
                hello.worker_id,
                older.session_id,
            )
            older.closed = True
            self._sessions.pop(older.session_id, None)
            leases = dict(older.leases)
            # Its close must not requeue what the new session takes over.
            older.leases.clear()
            older.stopping.clear()
            older.outbox.put_nowait(SESSION_REPLACED)
            return leases
        return {}

    async def close_session(self, session: WorkerSession, *, requeue: bool) -> None:
        """Forgets a session. With `requeue` (its stream broke while this server
        runs), its jobs go back to QUEUED with attempt + 1 at once; if that
        cannot be written now (a full database), their leases expire instead."""
        session.closed = True
        self._sessions.pop(session.session_id, None)
        for flush in session.progress_flushes.values():
            flush.cancel()
        session.progress_flushes.clear()
        if requeue and session.leases:
            try:
                await self._requeue_leases(
                    session.leases.values(), f"worker {session.worker_id} disconnected"
                )
            except Exception as exc:  # noqa: BLE001 - the lease reaper requeues them later
                self._requeue_failures.failed(exc)
        log.info("worker %s disconnected (session %s)", session.worker_id, session.session_id)
        self._wake_dispatcher.set()

    async def _requeue_leases(
        self,
        lease_tokens: Iterable[str],
        reason: str,
        outcome: AttemptOutcome = AttemptOutcome.LEASE_LOST,
    ) -> list[str]:
        async with self._database.transaction() as repository:
            rows = await repository.running_on_tokens(lease_tokens)
            for row in rows:
                await self._lose_attempt(repository, row, reason, outcome)
        if rows:
            log.info("requeued %s: %s", ",".join(r.job_id for r in rows), reason)
            self._wake_dispatcher.set()
        return [r.job_id for r in rows]

    async def _lose_attempt(
        self, repository: JobRepository, row: JobRow, reason: str, outcome: AttemptOutcome
    ) -> None:
        """The attempt ended without a verdict (worker gone, or handed back): it
        goes back to the queue at once. Lost leases are not failures of the
        job, but a job that loses more than `max_lease_losses` fails."""
        await repository.close_attempt(row, outcome, JobError("UNAVAILABLE", reason, "WORKER_LOST"))
        if outcome is AttemptOutcome.LEASE_LOST:
            row.lease_losses += 1
            if row.lease_losses > self.settings.max_lease_losses:
                fail_job(
                    repository,
                    row,
                    JobError(
                        "ABORTED",
                        f"the job lost its worker {row.lease_losses} times; giving up",
                        "TOO_MANY_LOST_LEASES",
                    ),
                )
                return
        _requeue(repository, row, reason)

    async def _attempt_failed(
        self,
        repository: JobRepository,
        row: JobRow,
        error: JobError,
        retryable: bool,
        outcome_if_retried: AttemptOutcome = AttemptOutcome.RETRIED,
    ) -> None:
        """A failed attempt: retried after a backoff while attempts remain,
        otherwise the job fails with `error`."""
        row.failed_attempts += 1
        if retryable and row.failed_attempts < row.max_attempts:
            await repository.close_attempt(row, outcome_if_retried, error)
            delay = retry_delay_seconds(
                row.failed_attempts,
                self.settings.retry_backoff_base,
                self.settings.retry_backoff_max,
                random.random(),
            )
            _requeue(
                repository,
                row,
                f"attempt {row.attempt} failed ({error.message}); retrying in {delay:.1f}s",
                delay_seconds=delay,
            )
        else:
            final = (
                AttemptOutcome.TIMED_OUT
                if outcome_if_retried is AttemptOutcome.TIMED_OUT
                else AttemptOutcome.FAILED
            )
            await repository.close_attempt(row, final, error)
            fail_job(repository, row, error)

    # -- reports from workers ------------------------------------------------

    async def heartbeat(
        self, session: WorkerSession, running: dict[str, str], draining: bool = False
    ) -> None:
        """Renews the session's leases and reconciles what the worker runs."""
        if draining and not session.draining:
            log.info("worker %s is draining", session.worker_id)
        session.draining = draining
        for job_id in [j for j in session.stopping if j not in running]:
            # No longer running on the worker: the slot is free again.
            del session.stopping[job_id]
            self._wake_dispatcher.set()
        for job_id, token in running.items():
            if session.leases.get(job_id) != token and session.stopping.get(job_id) != token:
                # The worker runs something that is not (or no longer) its
                # lease, and nobody told it to stop yet.
                session.outbox.put_nowait(StopOrder(job_id, token, "lease_lost"))
        expiry = utc_now() + timedelta(seconds=self.settings.lease_duration)
        async with self._database.transaction() as repository:
            await repository.renew_leases(session.leases.values(), expiry)

    async def report_progress(
        self, session: WorkerSession, job_id: str, token: str, fraction: float, stage: str
    ) -> None:
        """Records progress (never backwards) and its event, at most one event
        per PROGRESS_EVENT_MIN_INTERVAL_SECONDS per job, so a worker cannot
        fill the event log with progress. Reports that come sooner are
        coalesced: the latest is recorded when the interval is over."""
        stage = clean_stage(stage)
        wait = PROGRESS_EVENT_MIN_INTERVAL_SECONDS - (
            time.monotonic() - session.last_progress_at.get(job_id, -math.inf)
        )
        if wait > 0 and fraction < 1.0:
            session.pending_progress[job_id] = (token, fraction, stage)
            if job_id not in session.progress_flushes:
                session.progress_flushes[job_id] = asyncio.get_running_loop().call_later(
                    wait, self._flush_progress, session, job_id
                )
            return
        session.pending_progress.pop(job_id, None)
        await self._record_progress(session, job_id, token, fraction, stage)

    def _flush_progress(self, session: WorkerSession, job_id: str) -> None:
        """Records the progress held back by the interval, if its lease still stands."""
        session.progress_flushes.pop(job_id, None)
        pending = session.pending_progress.pop(job_id, None)
        if pending is None or session.closed or session.leases.get(job_id) != pending[0]:
            return
        task = asyncio.create_task(self._record_progress(session, job_id, *pending, quiet=True))
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._requeue_failures.failed(task.exception())

    async def _record_progress(
        self,
        session: WorkerSession,
        job_id: str,
        token: str,
        fraction: float,
        stage: str,
        *,
        quiet: bool = False,
    ) -> None:
        refused = None
        async with self._database.transaction() as repository:
            row = await self._current_lease(repository, session, job_id, token, quiet=quiet)
            if row is None:
                return
            fraction = min(1.0, max(row.progress_fraction, fraction))
            if fraction == row.progress_fraction and stage == row.progress_stage:
                return
            if row.last_sequence >= self._reports.limits.max_events_per_job:
                refused = self._reports.too_many_events()
                await self._attempt_failed(repository, row, refused, retryable=False)
            else:
                row.progress_fraction = fraction
                row.progress_stage = stage
                row.updated_at = utc_now()
                repository.append_event(
                    row, EventKind.PROGRESS, {"fraction": fraction, "stage": stage}
                )
        if refused is not None:
            self._refused(session, job_id, token, refused)
        else:
            session.last_progress_at[job_id] = time.monotonic()

    async def report_partial_result(
        self,
        session: WorkerSession,
        job_id: str,
        token: str,
        pipeline: str,
        data: dict[str, Any],
        size_bytes: int,
    ) -> None:
        """Records a partial result event, unless it breaks a limit (size, rate,
        bytes or events per job): then the attempt fails and the worker is
        told to stop."""
        bucket = session.partial_buckets.setdefault(job_id, self._reports.new_bucket())
        refused = None
        async with self._database.transaction() as repository:
            row = await self._current_lease(repository, session, job_id, token)
            if row is None:
                return
            refused = self._reports.partial_result_problem(
                size_bytes,
                row.partial_result_bytes or 0,
                row.last_sequence,
                bucket,
                json_depth(data),
            )
            if refused is not None:
                await self._attempt_failed(repository, row, refused, retryable=False)
            else:
                row.partial_result_bytes = (row.partial_result_bytes or 0) + size_bytes
                repository.append_event(
                    row, EventKind.PARTIAL_RESULT, {"pipeline": pipeline, "data": data}
                )
        if refused is not None:
            self._refused(session, job_id, token, refused)

    def _refused(self, session: WorkerSession, job_id: str, token: str, error: JobError) -> None:
        """After a report broke a limit and failed its attempt: the worker stops the job."""
        log.warning(
            "job %s: refused a report from worker %s (%s): %s",
            job_id,
            session.worker_id,
            error.reason,
            error.message,
        )
        session.send_stop(job_id, token, "job_ended")
        self._forget_lease(session, job_id)
        self._wake_dispatcher.set()

    @staticmethod
    def _forget_lease(session: WorkerSession, job_id: str) -> None:
        session.partial_buckets.pop(job_id, None)
        session.last_progress_at.pop(job_id, None)
        session.pending_progress.pop(job_id, None)
        flush = session.progress_flushes.pop(job_id, None)
        if flush is not None:
            flush.cancel()

    async def report_completion(
        self,
        session: WorkerSession,
        job_id: str,
        token: str,
        output_key: StorageKey,
        artifacts: list[Artifact],
        summary: dict[str, Any],
        warnings: list[str] | None = None,
        *,
        summary_bytes: int = 0,
        report_bytes: int = 0,
    ) -> None:
        """RUNNING -> SUCCEEDED, recording the result of this attempt only.

        The report is a claim: its keys must lie under the attempt's prefix
        (else INVALID_ARGUMENT ends the worker's stream), and the result
        document and every artifact must exist in storage with the reported
        size, and the report must be within its limits (else the attempt
        fails and the worker is told to stop)."""
        missing = await self._missing_outputs(output_key, artifacts)
        oversize = completion_problem(
            len(artifacts), summary_bytes, report_bytes, json_depth(summary)
        )
        warnings = clean_warnings(list(warnings or []))
        refused = None
        async with self._database.transaction() as repository:
            row = await self._current_lease(repository, session, job_id, token)
            if row is None:
                return
            prefix = attempt_prefix_for(job_id, row.attempt, row.tenant)
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
            refused = oversize or missing
            if refused is not None:
                await self._attempt_failed(repository, row, refused, retryable=oversize is None)
            else:
                row.output_key = output_key.value
                row.summary = summary
                row.warnings = warnings
                row.progress_fraction = 1.0
                row.progress_stage = "done"
                row.execution_deadline_at = None
                await repository.close_attempt(row, AttemptOutcome.SUCCEEDED)
                repository.set_artifacts(row, artifacts)
                repository.finish(
                    row,
                    JobState.SUCCEEDED,
                    EventKind.COMPLETED,
                    {
                        "output_key": output_key.value,
                        "artifacts": [a.to_dict() for a in artifacts],
                        "summary": summary,
                        "warnings": warnings,
                    },
                )
        if refused is not None:
            self._refused(session, job_id, token, refused)
            return
        session.leases.pop(job_id, None)
        self._forget_lease(session, job_id)
        log.info("job %s succeeded on worker %s", job_id, session.worker_id)
        self._wake_dispatcher.set()
        await self._remove_other_attempts(job_id, prefix)

    async def _missing_outputs(
        self, output_key: StorageKey, artifacts: list[Artifact]
    ) -> JobError | None:
        """Why the outputs a completion names are not (all) in storage as
        reported, or None. Without a blob store (unit tests) nothing is checked."""
        if self._blob_store is None:
            return None
        store = self._blob_store
        expected: list[tuple[StorageKey, int | None]] = [(output_key, None)] + [
            (a.key, a.size_bytes) for a in artifacts
        ]

        def check() -> str | None:
            for key, size in expected:
                if job_id_of(key) is None:
                    return f"{key.value} belongs to no job"  # refused by prefix later anyway
                try:
                    info = store.stat(key)
                except BlobNotFound:
                    return f"{key.value} is not in storage"
                except BlobStoreError as exc:
                    return f"{key.value} cannot be checked ({exc})"
                if size is not None and info.size_bytes != size:
                    return f"{key.value} holds {info.size_bytes} bytes, not the {size} reported"
            return None

        problem = await asyncio.to_thread(check)
        if problem is None:
            return None
        return JobError(
            "INTERNAL",
            f"the worker reported outputs that storage does not hold as reported ({problem})",
            "OUTPUT_MISSING",
        )

    async def _remove_other_attempts(self, job_id: str, winner: StorageKey) -> None:
        """Deletes what earlier (lost or failed) attempts wrote: the job keeps
        exactly one output, its winner's. Best effort: a failure only logs."""
        if self._blob_store is None:
            return
        store = self._blob_store

        def sweep() -> int:
            removed = 0
            attempts = StorageKey(winner.value.rsplit("/", 1)[0])  # .../attempts
            for info in list(store.list(attempts)):
                if not info.key.is_within(winner):
                    store.delete(info.key)
                    removed += 1
            return removed

        try:
            removed = await asyncio.to_thread(sweep)
        except Exception:  # noqa: BLE001 - cleanup must never fail a completion
            log.warning("could not remove old attempt outputs of job %s", job_id, exc_info=True)
            return
        if removed:
            log.info("removed %d file(s) of earlier attempts of job %s", removed, job_id)

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
            await self._attempt_failed(
                repository,
                row,
                clean_failure(error.code, error.message, error.reason, dict(error.metadata)),
                retryable,
            )
        session.leases.pop(job_id, None)
        self._forget_lease(session, job_id)
        log.info("job %s failed on worker %s: %s", job_id, session.worker_id, error.message)
        self._wake_dispatcher.set()

    async def report_stopped(self, session: WorkerSession, job_id: str, token: str) -> None:
        """The worker stopped a job: its slot is free again. A job it stopped on
        its own (draining, shutting down) while the lease is still current is
        handed back: QUEUED at once with attempt + 1."""
        session.leases.pop(job_id, None)
        session.stopping.pop(job_id, None)
        self._forget_lease(session, job_id)
        await self._requeue_leases(
            [token], f"handed back by worker {session.worker_id}", AttemptOutcome.HANDED_BACK
        )
        self._wake_dispatcher.set()

    def stop_job(self, job_id: str, lease_token: str, reason: str) -> None:
        """Tells whichever session holds the lease to stop the job."""
        for session in self._sessions.values():
            if session.leases.get(job_id) == lease_token:
                session.send_stop(job_id, lease_token, reason)
                self._wake_dispatcher.set()

    async def _current_lease(
        self,
        repository: JobRepository,
        session: WorkerSession,
        job_id: str,
        token: str,
        *,
        quiet: bool = False,
    ) -> JobRow | None:
        """The job's row when `token` is its current lease, else None (and,
        unless `quiet`, the worker is told to stop the job)."""
        row = await repository.get_row(job_id, for_update=True)
        if row is not None and row.state == JobState.RUNNING.value and row.lease_token == token:
            return row
        if quiet:
            return None
        reason = (
            "job_ended" if row is not None and JobState(row.state).is_terminal else "lease_lost"
        )
        log.info("refused a stale report for job %s from worker %s", job_id, session.worker_id)
        session.send_stop(job_id, token, reason)
        return None

    # -- background loops ----------------------------------------------------

    async def _dispatch_loop(self) -> None:
        timeout: float | None = None
        while True:
            # Woken by submits, connects, freed slots and requeues; the only
            # timer is the moment a job backing off becomes eligible again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_dispatcher.wait(), timeout)
            self._wake_dispatcher.clear()
            try:
                await self._dispatch_round()
                timeout = await self._until_next_eligible()
                self._dispatch_failures.succeeded()
            except Exception as exc:  # noqa: BLE001 - the loop must survive a database hiccup
                self._dispatch_failures.failed(exc)
                timeout = _loop_backoff(self._dispatch_failures.failures)

    async def _until_next_eligible(self) -> float | None:
        now = utc_now()
        async with self._database.reading() as repository:
            eligible_at = await repository.next_available_at(now)
        if eligible_at is None:
            return None
        return max(0.0, (eligible_at - now).total_seconds()) + 0.01

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
            row = await repository.claim_next_queued(
                session.pipeline_keys, session.worker_id, token, expiry
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
                output_prefix=attempt_prefix_for(row.job_id, row.attempt, row.tenant),
                lease_expire_time=expiry,
                execution_deadline=row.execution_deadline_at,
                input_format=row.input_format or "",
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
        self._wake_reaper.set()  # its execution deadline may be the next one due
        return True

    async def _reaper_loop(self) -> None:
        """Enforces, from the database, what workers cannot be trusted with:
        lease expiry, execution timeouts and queue timeouts. Sleeps until the
        next deadline (or a wake-up: a new job or assignment may bring an
        earlier one)."""
        while True:
            # Cleared before reading the database, so a wake-up that arrives
            # while we read is not lost.
            self._wake_reaper.clear()
            try:
                await self._process_due()
                async with self._database.reading() as repository:
                    next_deadline = await repository.next_deadline()
                timeout = None
                if next_deadline is not None:
                    timeout = max(0.0, (next_deadline - utc_now()).total_seconds()) + 0.02
                self._reaper_failures.succeeded()
            except Exception as exc:  # noqa: BLE001 - the loop must survive a database hiccup
                self._reaper_failures.failed(exc)
                timeout = _loop_backoff(self._reaper_failures.failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_reaper.wait(), timeout)

    async def _process_due(self) -> None:
        now = utc_now()
        async with self._database.reading() as repository:
            next_deadline = await repository.next_deadline()
        if next_deadline is None or next_deadline > now:
            return
        stops: list[tuple[str, str, str]] = []
        async with self._database.transaction() as repository:
            for row in await repository.expired_leases(now):
                stops.append((row.job_id, row.lease_token, "lease_lost"))
                log.info("lease of job %s (worker %s) expired", row.job_id, row.worker_id)
                await self._lose_attempt(
                    repository,
                    row,
                    f"lease of worker {row.worker_id} expired",
                    AttemptOutcome.LEASE_LOST,
                )
            for row in await repository.overdue_attempts(now):
                stops.append((row.job_id, row.lease_token, "timed_out"))
                log.info("job %s attempt %d timed out", row.job_id, row.attempt)
                await self._attempt_failed(
                    repository,
                    row,
                    JobError(
                        "DEADLINE_EXCEEDED",
                        f"attempt {row.attempt} ran longer than its execution timeout "
                        f"({row.execution_timeout_seconds:g}s)",
                        "EXECUTION_TIMEOUT",
                    ),
                    retryable=True,
                    outcome_if_retried=AttemptOutcome.TIMED_OUT,
                )
            for row in await repository.overdue_in_queue(now):
                log.info("job %s timed out in the queue", row.job_id)
                fail_job(
                    repository,
                    row,
                    JobError(
                        "DEADLINE_EXCEEDED",
                        f"no worker took the job within its queue timeout "
                        f"({row.queue_timeout_seconds:g}s)",
                        "QUEUE_TIMEOUT",
                    ),
                )
        for job_id, token, reason in stops:
            if reason == "lease_lost":
                for session in self._sessions.values():
                    if session.leases.get(job_id) == token:
                        session.unresponsive = True
                        log.warning("worker %s is unresponsive", session.worker_id)
            self.stop_job(job_id, token, reason)
        self._wake_dispatcher.set()


def _loop_backoff(failures: int) -> float:
    """Seconds a failing background loop waits: 0.5 s doubling to 10 s."""
    return min(MAX_LOOP_BACKOFF_SECONDS, 0.5 * 2 ** min(failures - 1, 10))
