"""DispatchCoordinator: the application service behind DispatchService.Connect.

It opens and closes worker sessions, turns workers' reports into lifecycle
transitions (after checking each claim: the lease is current, keys lie under
the attempt's prefix, outputs exist, limits hold; the reports that arrived
together go in one transaction, see `apply_reports`), and reacts to notices
from every replica: work to hand out, leases to stop, sessions replaced.

Fencing: every report quotes the lease token; a report whose token is not the
job's current lease is refused, and the worker is told to stop that job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from videojobs.common import errors
from videojobs.common.auth import LOCAL_PRINCIPAL, Principal
from videojobs.common.failures import RepeatedFailureLog
from videojobs.common.logs import bind_log_fields
from videojobs.common.tracing import job_span
from videojobs.jobservice import lifecycle
from videojobs.jobservice.dispatch.dispatcher import Dispatcher
from videojobs.jobservice.dispatch.outputs import AttemptOutputs
from videojobs.jobservice.dispatch.reaper import DeadlineReaper
from videojobs.jobservice.dispatch.sessions import (
    SessionTable,
    StopOrder,
    WorkerHello,
    WorkerSession,
    check_worker_identity,
    validate_hello,
)
from videojobs.jobservice.dispatch.worker_reports import (
    CompletionReport,
    FailureReport,
    Heartbeat,
    PartialResultReport,
    ProgressReport,
    StoppedReport,
    WorkerReport,
)
from videojobs.jobservice.domain import (
    Artifact,
    Assignment,
    JobError,
    JobState,
    attempt_prefix_for,
    utc_now,
)
from videojobs.jobservice.limits import PROGRESS_EVENT_MIN_INTERVAL_SECONDS, ReportLimits
from videojobs.jobservice.notices import (
    JobsQueued,
    LeaseGranted,
    Notice,
    Resync,
    StopLease,
    StopReason,
    WorkerConnected,
)
from videojobs.jobservice.reports import (
    ReportPolicy,
    clean_failure,
    clean_stage,
    clean_warnings,
    completion_problem,
    json_depth,
)
from videojobs.jobservice.store import Database, JobRepository
from videojobs.jobservice.store.models import JobRow, WorkerSessionRow
from videojobs.storage import BlobStore, StorageKey

log = logging.getLogger(__name__)

# A worker-session row no heartbeat touched for this long belongs to a replica
# that died without closing it: the next session to open removes it.
FORGET_WORKER_SESSIONS_AFTER = timedelta(hours=1)


@dataclass(frozen=True)
class DispatchSettings:
    """Lease timings, the retry policy and the safety-net sweep; the one
    source of these defaults (settings and flags read them from here).

    A lease lives `lease_duration` seconds past the last heartbeat; workers
    heartbeat every `heartbeat_interval` (they are told so in Welcome).
    `resync_interval`: how often dispatcher, reaper and followers re-read
    the database even without a notice (notices make this a safety net).
    """

    heartbeat_interval: float = 2.0
    lease_duration: float = 10.0
    resync_interval: float = 10.0
    retry_policy: lifecycle.RetryPolicy = lifecycle.RetryPolicy()


class DispatchCoordinator:
    """Worker sessions of this replica, their reports, and the background loops."""

    def __init__(
        self,
        database: Database,
        settings: DispatchSettings,
        blob_store: BlobStore | None = None,
        report_limits: ReportLimits | None = None,
    ) -> None:
        self._database = database
        self.settings = settings
        self._policy = settings.retry_policy
        self._outputs = AttemptOutputs(blob_store)
        self._reports = ReportPolicy(report_limits or ReportLimits())
        self._sessions = SessionTable()
        self.dispatcher = Dispatcher(
            database,
            self._sessions,
            lease_duration=settings.lease_duration,
            resync_interval=settings.resync_interval,
            policy=self._policy,
        )
        self.reaper = DeadlineReaper(
            database, policy=self._policy, resync_interval=settings.resync_interval
        )
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._requeue_failures = RepeatedFailureLog(log, "requeue of a disconnected worker's jobs")
        database.notifier.subscribe(self.on_notice)

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        """Starts the dispatcher and the deadline reaper."""
        self._tasks = [
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(self.reaper.run(), name="deadline-reaper"),
        ]

    async def stop(self) -> None:
        """Stops the background tasks. Leases stay in the database: workers that
        reconnect to any replica adopt them, the others expire."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def on_notice(self, notice: Notice) -> None:
        """A notice from this or another replica (after its commit)."""
        match notice:
            case JobsQueued(eligible_at, deadline, known):
                self.dispatcher.wake(eligible_at, known=known)
                self.reaper.wake(deadline, known=known)
            case Resync():
                self.dispatcher.wake(known=False)
                self.reaper.wake()
            case LeaseGranted(deadline, known):
                # A new lease expiry and execution deadline.
                self.reaper.wake(deadline, known=known)
            case StopLease(job_id, lease_token, reason):
                if self._sessions.stop(job_id, lease_token, reason):
                    self.dispatcher.wake()
            case WorkerConnected(worker_id, session_id):
                self._sessions.replace_older(worker_id, session_id)

    @property
    def max_partial_result_bytes(self) -> int:
        """Largest partial result that may be recorded (bigger ones are refused by size)."""
        return self._reports.limits.max_partial_result_bytes

    def held_assignment(self, job_id: str, lease_token: str) -> Assignment | None:
        """The assignment `lease_token` holds on `job_id` in a session of this
        replica, or None (then only the database can tell)."""
        return self._sessions.held_assignment(job_id, lease_token)

    @property
    def sessions(self) -> list[WorkerSession]:
        """Live worker sessions of this replica."""
        return list(self._sessions)

    # -- sessions ------------------------------------------------------------

    async def open_session(
        self, hello: WorkerHello, principal: Principal = LOCAL_PRINCIPAL
    ) -> WorkerSession:
        """Registers a worker; it keeps the leases it announces that are current.

        The worker id must be the principal's own (its name, or the name, a
        colon and a suffix) unless the principal is an administrator. Any
        other session of the same worker id, on any replica, ends (ABORTED,
        SESSION_REPLACED). Running jobs of this worker id that the hello does
        not announce go back to the queue (the worker does not run them)."""
        validate_hello(hello)
        check_worker_identity(hello.worker_id, principal)
        session = WorkerSession(hello=hello, draining=hello.draining)
        expiry = utc_now() + timedelta(seconds=self.settings.lease_duration)
        now = utc_now()
        async with self._database.transaction() as repository:
            await repository.open_worker_session(
                WorkerSessionRow(
                    session_id=session.session_id,
                    worker_id=hello.worker_id,
                    status_address=hello.status_address,
                    version=hello.version,
                    pipelines=sorted(hello.pipelines),
                    slots=hello.max_concurrent_jobs,
                    draining=hello.draining,
                    connected_at=now,
                    last_seen_at=now,
                ),
                forget_before=now - FORGET_WORKER_SESSIONS_AFTER,
            )
            announced = {token for token in hello.held_leases.values()}
            rows = {row.job_id: row for row in await repository.running_on_tokens(announced)}
            for row in await repository.running_for_worker(hello.worker_id):
                rows.setdefault(row.job_id, row)
            for row in rows.values():
                if hello.held_leases.get(row.job_id) == row.lease_token:
                    lifecycle.adopt(
                        row,
                        worker_id=hello.worker_id,
                        session_id=session.session_id,
                        lease_expires_at=expiry,
                    )
                    session.leases[row.job_id] = row.lease_token
                elif row.worker_id == hello.worker_id:
                    await lifecycle.lose_attempt(
                        repository,
                        row,
                        f"worker {hello.worker_id} reconnected without it",
                        policy=self._policy,
                    )
            repository.notify(WorkerConnected(hello.worker_id, session.session_id))
        self._sessions.add(session)
        for job_id, token in hello.held_leases.items():
            if job_id not in session.leases:
                session.outbox.put_nowait(StopOrder(job_id, token, StopReason.LEASE_LOST))
        log.info(
            "worker %s connected (session %s, pipelines %s, capacity %d, adopted %d)",
            hello.worker_id,
            session.session_id,
            ",".join(sorted(hello.pipelines)),
            hello.max_concurrent_jobs,
            len(session.leases),
        )
        self.dispatcher.wake()
        return session

    async def close_session(self, session: WorkerSession, *, requeue: bool) -> None:
        """Forgets a session. With `requeue` (its stream broke while this server
        runs), the jobs it still holds go back to QUEUED with attempt + 1 at
        once (not those its worker took to a newer session); if that cannot be
        written now (a full database), their leases expire instead."""
        self._sessions.remove(session)
        session.cancel_timers()
        try:
            async with self._database.transaction() as repository:
                await repository.close_worker_session(session.session_id)
                if requeue:
                    for row in await repository.running_in_session(session.session_id):
                        await lifecycle.lose_attempt(
                            repository,
                            row,
                            f"worker {session.worker_id} disconnected",
                            policy=self._policy,
                        )
        except Exception as exc:  # noqa: BLE001 - the lease reaper requeues them later
            self._requeue_failures.failed(exc)
        log.info("worker %s disconnected (session %s)", session.worker_id, session.session_id)
        self.dispatcher.wake()

    # -- reports from workers ------------------------------------------------
    #
    # A worker's reports are applied in the order they arrive. The servicer
    # hands over every report that has arrived while the previous ones were
    # being applied, and `apply_reports` applies that run in ONE transaction
    # (group commit): under load a job's progress, partial results and
    # completion cost one commit instead of one each. Each report is a
    # "step" run inside the shared transaction; what must wait for the
    # commit (waking the dispatcher, removing earlier attempts' files, logs
    # and spans of the outcome) is queued on the batch and runs after it.

    async def apply_reports(self, session: WorkerSession, reports: Sequence[WorkerReport]) -> None:
        """Applies `reports` (one worker's, in order) in one transaction.

        A report that breaks the stream's contract (a completion naming keys
        outside its attempt) ends the run: the reports before it commit, and
        its INVALID_ARGUMENT is raised (ending the worker's stream). A
        database error rolls the whole run back and is raised: the stream
        ends and the session's jobs go back to the queue, as when the stream
        breaks between two reports."""
        steps: list[_Step] = []
        for report in reports:
            step = await self._prepare(session, report)
            if step is not None:
                steps.append(step)
        await self._run_steps(steps)

    async def _run_steps(self, steps: list[_Step]) -> None:
        if not steps:
            return
        refusal: errors.ServiceError | None = None
        after_commit: list[_AfterCommit] = []
        async with self._database.transaction() as repository:
            batch = _Batch(repository, after_commit)
            for job_id, step in steps:
                if job_id:
                    bind_log_fields(job_id=job_id)
                refusal = await step(batch)
                if refusal is not None:
                    break
        for job_id, action in after_commit:
            if job_id:
                bind_log_fields(job_id=job_id)
            await action()
        if refusal is not None:
            raise refusal

    async def _prepare(self, session: WorkerSession, report: WorkerReport) -> _Step | None:
        """What applying `report` takes: the checks made outside the
        transaction (storage, sizes), then the step that runs inside it.
        None: nothing to write (progress held back by the interval)."""
        match report:
            case Heartbeat(running, draining):
                return "", functools.partial(self._heartbeat_step, session, running, draining)
            case ProgressReport(job_id, token, fraction, stage):
                stage = clean_stage(stage)
                now = time.monotonic()
                wait = PROGRESS_EVENT_MIN_INTERVAL_SECONDS - (
                    now - session.last_progress_at.get(job_id, -math.inf)
                )
                if wait > 0 and fraction < 1.0:
                    session.pending_progress[job_id] = (token, fraction, stage)
                    if job_id not in session.progress_flushes:
                        session.progress_flushes[job_id] = asyncio.get_running_loop().call_later(
                            wait, self._flush_progress, session, job_id
                        )
                    return None
                session.pending_progress.pop(job_id, None)
                # Counted from now: a second report in the same run waits.
                session.last_progress_at[job_id] = now
                return job_id, functools.partial(
                    self._progress_step, session, job_id, token, fraction, stage
                )
            case PartialResultReport():
                return report.job_id, functools.partial(self._partial_result_step, session, report)
            case CompletionReport():
                missing = await self._outputs.missing(report.output_key, report.artifacts)
                oversize = completion_problem(
                    len(report.artifacts),
                    report.summary_bytes,
                    report.report_bytes,
                    json_depth(report.summary),
                )
                return report.job_id, functools.partial(
                    self._completion_step, session, report, oversize or missing, oversize is None
                )
            case FailureReport():
                return report.job_id, functools.partial(self._failure_step, session, report)
            case StoppedReport(job_id, token):
                return job_id, functools.partial(self._stopped_step, session, job_id, token)
        raise TypeError(f"not a worker report: {report!r}")

    async def heartbeat(
        self, session: WorkerSession, running: dict[str, str], draining: bool = False
    ) -> None:
        """Renews the session's leases and reconciles what the worker runs."""
        await self.apply_reports(session, [Heartbeat(running, draining)])

    async def _heartbeat_step(
        self, session: WorkerSession, running: dict[str, str], draining: bool, batch: _Batch
    ) -> None:
        if draining and not session.draining:
            log.info("worker %s is draining", session.worker_id)
        session.draining = draining
        for job_id in [j for j in session.stopping if j not in running]:
            # No longer running on the worker: the slot is free again.
            del session.stopping[job_id]
            batch.after("", self._wake_dispatcher)
        for job_id, token in running.items():
            if session.leases.get(job_id) != token and session.stopping.get(job_id) != token:
                # The worker runs something that is not (or no longer) its
                # lease, and nobody told it to stop yet.
                session.outbox.put_nowait(StopOrder(job_id, token, StopReason.LEASE_LOST))
        now = utc_now()
        expiry = now + timedelta(seconds=self.settings.lease_duration)
        await batch.repository.renew_leases(session.leases.values(), expiry)
        await batch.repository.touch_worker_session(session.session_id, now, draining)

    async def report_progress(
        self, session: WorkerSession, job_id: str, token: str, fraction: float, stage: str
    ) -> None:
        """Records progress (never backwards) and its event, at most one event
        per PROGRESS_EVENT_MIN_INTERVAL_SECONDS per job, so a worker cannot
        fill the event log with progress. Reports that come sooner are
        coalesced: the latest is recorded when the interval is over."""
        await self.apply_reports(session, [ProgressReport(job_id, token, fraction, stage)])

    def _flush_progress(self, session: WorkerSession, job_id: str) -> None:
        """Records the progress held back by the interval, if its lease still stands."""
        session.progress_flushes.pop(job_id, None)
        pending = session.pending_progress.get(job_id)
        if pending is None or session.closed or session.leases.get(job_id) != pending[0]:
            session.pending_progress.pop(job_id, None)
            return
        now = time.monotonic()
        wait = PROGRESS_EVENT_MIN_INTERVAL_SECONDS - (
            now - session.last_progress_at.get(job_id, -math.inf)
        )
        if wait > 0:  # the last event was written later than this timer assumed
            session.progress_flushes[job_id] = asyncio.get_running_loop().call_later(
                wait, self._flush_progress, session, job_id
            )
            return
        del session.pending_progress[job_id]
        session.last_progress_at[job_id] = now
        step = functools.partial(self._progress_step, session, job_id, *pending, quiet=True)
        task = asyncio.create_task(self._run_steps([(job_id, step)]))
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._requeue_failures.failed(task.exception())

    async def _progress_step(
        self,
        session: WorkerSession,
        job_id: str,
        token: str,
        fraction: float,
        stage: str,
        batch: _Batch,
        *,
        quiet: bool = False,
    ) -> None:
        row = await self._current_lease(batch, session, job_id, token, quiet=quiet)
        if row is None:
            return
        if row.last_sequence >= self._reports.limits.max_events_per_job:
            refused = self._reports.too_many_events()
            await lifecycle.fail_attempt(
                batch.repository, row, refused, retryable=False, policy=self._policy
            )
            self._refused(batch, session, job_id, token, refused)
        else:
            lifecycle.record_progress(batch.repository, row, fraction, stage)
            # The interval counts from when the event is written (its time),
            # not from when the report was read: a step that waited for the
            # database must not let the next event come sooner after it.
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
        await self.apply_reports(
            session, [PartialResultReport(job_id, token, pipeline, data, size_bytes)]
        )

    async def _partial_result_step(
        self, session: WorkerSession, report: PartialResultReport, batch: _Batch
    ) -> None:
        job_id, token = report.job_id, report.lease_token
        bucket = session.partial_buckets.setdefault(job_id, self._reports.new_bucket())
        row = await self._current_lease(batch, session, job_id, token)
        if row is None:
            return
        refused = self._reports.partial_result_problem(
            report.size_bytes,
            row.partial_result_bytes or 0,
            row.last_sequence,
            bucket,
            json_depth(report.data),
        )
        if refused is not None:
            await lifecycle.fail_attempt(
                batch.repository, row, refused, retryable=False, policy=self._policy
            )
            self._refused(batch, session, job_id, token, refused)
        else:
            lifecycle.record_partial_result(
                batch.repository, row, report.pipeline, report.data, report.size_bytes
            )

    def _refused(
        self, batch: _Batch, session: WorkerSession, job_id: str, token: str, error: JobError
    ) -> None:
        """After a report broke a limit and failed its attempt: the worker stops the job."""
        session.send_stop(job_id, token, StopReason.JOB_ENDED)

        async def after() -> None:
            log.warning(
                "job %s: refused a report from worker %s (%s): %s",
                job_id,
                session.worker_id,
                error.reason,
                error.message,
            )
            self.dispatcher.wake()

        batch.after(job_id, after)

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
        report = CompletionReport(
            job_id,
            token,
            output_key,
            artifacts,
            summary,
            list(warnings or []),
            summary_bytes=summary_bytes,
            report_bytes=report_bytes,
        )
        await self.apply_reports(session, [report])

    async def _completion_step(
        self,
        session: WorkerSession,
        report: CompletionReport,
        refused: JobError | None,
        retryable: bool,
        batch: _Batch,
    ) -> errors.ServiceError | None:
        """`refused`: why the completion cannot be recorded (a limit, or
        outputs storage does not hold), found before the transaction."""
        job_id, token = report.job_id, report.lease_token
        received = utc_now()
        row = await self._current_lease(batch, session, job_id, token)
        if row is None:
            return None
        attempt, trace_parent = row.attempt, row.trace_parent
        prefix = attempt_prefix_for(job_id, row.attempt, row.tenant)
        violations = [
            (f"completion.{name}", f"must lie under {prefix.value}/")
            for name, key in [("output_key", report.output_key)]
            + [(f"artifacts[{i}].key", a.key) for i, a in enumerate(report.artifacts)]
            if not key.is_within(prefix)
        ]
        if violations:
            # Before anything of this report is written: the run's earlier
            # reports commit, then this ends the stream.
            return errors.invalid_argument("completion names keys outside its attempt", violations)
        if refused is not None:
            await lifecycle.fail_attempt(
                batch.repository, row, refused, retryable=retryable, policy=self._policy
            )
            self._refused(batch, session, job_id, token, refused)
        else:
            await lifecycle.complete(
                batch.repository,
                row,
                output_key=report.output_key,
                artifacts=report.artifacts,
                summary=report.summary,
                warnings=clean_warnings(report.warnings),
            )
            session.leases.pop(job_id, None)
            session.forget_lease(job_id)

        async def after() -> None:
            _result_span(
                "record completion", trace_parent, job_id, attempt, session, received, refused
            )
            if refused is None:
                log.info("job %s succeeded on worker %s", job_id, session.worker_id)
                self.dispatcher.slot_freed()
                if attempt > 1:  # only earlier attempts can have left files
                    await self._outputs.remove_other_attempts(job_id, prefix)

        batch.after(job_id, after)
        return None

    async def report_failure(
        self,
        session: WorkerSession,
        job_id: str,
        token: str,
        error: errors.ServiceError,
        retryable: bool,
    ) -> None:
        """A retryable failure with attempts left requeues; otherwise FAILED."""
        await self.apply_reports(session, [FailureReport(job_id, token, error, retryable)])

    async def _failure_step(
        self, session: WorkerSession, report: FailureReport, batch: _Batch
    ) -> None:
        job_id, token, error = report.job_id, report.lease_token, report.error
        received = utc_now()
        row = await self._current_lease(batch, session, job_id, token)
        if row is None:
            return
        attempt, trace_parent = row.attempt, row.trace_parent
        await lifecycle.fail_attempt(
            batch.repository,
            row,
            clean_failure(error.code, error.message, error.reason, dict(error.metadata)),
            retryable=report.retryable,
            policy=self._policy,
        )
        session.leases.pop(job_id, None)
        session.forget_lease(job_id)

        async def after() -> None:
            _result_span("record failure", trace_parent, job_id, attempt, session, received, error)
            log.info("job %s failed on worker %s: %s", job_id, session.worker_id, error.message)
            self.dispatcher.wake()

        batch.after(job_id, after)

    async def report_stopped(self, session: WorkerSession, job_id: str, token: str) -> None:
        """The worker stopped a job: its slot is free again. A job it stopped on
        its own (draining, shutting down) while the lease is still current is
        handed back: QUEUED at once with attempt + 1."""
        await self.apply_reports(session, [StoppedReport(job_id, token)])

    async def _stopped_step(
        self, session: WorkerSession, job_id: str, token: str, batch: _Batch
    ) -> None:
        session.leases.pop(job_id, None)
        session.stopping.pop(job_id, None)
        session.forget_lease(job_id)
        for row in await batch.repository.running_on_tokens([token]):
            batch.rows[row.job_id] = row
            await lifecycle.hand_back(batch.repository, row, session.worker_id, self._policy)
        batch.after(job_id, self._wake_dispatcher)

    async def _wake_dispatcher(self) -> None:
        self.dispatcher.wake()

    async def _current_lease(
        self,
        batch: _Batch,
        session: WorkerSession,
        job_id: str,
        token: str,
        *,
        quiet: bool = False,
    ) -> JobRow | None:
        """The job's row when `token` is its current lease, else None (and,
        unless `quiet`, the worker is told to stop the job). The row is read
        (and locked) once per transaction: later reports of the same job in
        the run see the changes the earlier ones made."""
        if job_id in batch.rows:
            row = batch.rows[job_id]
        else:
            row = batch.rows[job_id] = await batch.repository.get_row(job_id, for_update=True)
        if row is not None and row.state == JobState.RUNNING.value and row.lease_token == token:
            return row
        if quiet:
            return None
        ended = row is not None and JobState(row.state).is_terminal
        log.info("refused a stale report for job %s from worker %s", job_id, session.worker_id)
        session.send_stop(job_id, token, StopReason.JOB_ENDED if ended else StopReason.LEASE_LOST)
        return None


_AfterCommit = tuple[str, Callable[[], Awaitable[None]]]
# A report's job id (for the log fields; "" for a heartbeat) and its step:
# the part of applying it that runs inside the run's transaction. A step
# returns the error that ends the stream, or None.
_Step = tuple[str, Callable[["_Batch"], Awaitable["errors.ServiceError | None"]]]


@dataclass
class _Batch:
    """The transaction a run of one worker's reports shares."""

    repository: JobRepository
    after_commit: list[_AfterCommit]
    # Job rows read (and locked) in this transaction, by id; None: no such job.
    rows: dict[str, JobRow | None] = field(default_factory=dict)

    def after(self, job_id: str, action: Callable[[], Awaitable[None]]) -> None:
        """Runs `action` once the transaction has committed (in report order)."""
        self.after_commit.append((job_id, action))


def _result_span(
    name: str,
    trace_parent: str | None,
    job_id: str,
    attempt: int,
    session: WorkerSession,
    received: datetime,
    error: Any,
) -> None:
    """A span of the job's trace for a worker's report, from its arrival to
    its commit (no-op unless tracing is on)."""
    with job_span(
        name,
        trace_parent,
        {
            "videojobs.job_id": job_id,
            "videojobs.attempt": attempt,
            "videojobs.worker_id": session.worker_id,
            "videojobs.error": getattr(error, "message", None),
        },
        start=received,
    ):
        pass
