"""The dispatcher: hands queued jobs to this replica's sessions with free slots.

Woken by notices (a job queued or requeued on any replica, a freed slot, a
worker connecting), by the moment a job backing off becomes eligible, and, as
a safety net only, every `resync_interval` seconds. Each claim locks the
first eligible job whose every pipeline the worker runs (skipping rows other
replicas have locked, on PostgreSQL) and moves it to RUNNING through the
lifecycle, in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from videojobs.common.aio import wait_event
from videojobs.common.failures import RepeatedFailureLog
from videojobs.common.logs import log_context
from videojobs.common.tracing import job_span
from videojobs.jobservice import lifecycle
from videojobs.jobservice.dispatch.sessions import SessionTable, WorkerSession
from videojobs.jobservice.domain import Assignment, attempt_prefix_for, new_lease_token, utc_now
from videojobs.jobservice.store import Database
from videojobs.storage import StorageKey

log = logging.getLogger(__name__)

# A background loop that keeps failing (a full database) waits this long at most.
MAX_LOOP_BACKOFF_SECONDS = 10.0


def loop_backoff(failures: int) -> float:
    """Seconds a failing background loop waits: 0.5 s doubling to 10 s."""
    return min(MAX_LOOP_BACKOFF_SECONDS, 0.5 * 2 ** min(failures - 1, 10))


class Dispatcher:
    """Pushes assignments into the outboxes of this replica's sessions."""

    def __init__(
        self,
        database: Database,
        sessions: SessionTable,
        *,
        lease_duration: float,
        resync_interval: float,
        policy: lifecycle.RetryPolicy,
    ) -> None:
        self._database = database
        self._sessions = sessions
        self._lease_duration = lease_duration
        self._resync_interval = resync_interval
        self._policy = policy
        self._wake = asyncio.Event()
        self._failures = RepeatedFailureLog(log, "dispatch round")

    def wake(self) -> None:
        """Look for work now."""
        self._wake.set()

    async def run(self) -> None:
        """The dispatch loop (until cancelled)."""
        timeout: float | None = 0.0
        while True:
            await wait_event(self._wake, timeout)
            self._wake.clear()
            try:
                # Jobs whose backoff ended after the round began were not seen
                # by it: measured from its start, they are due at once.
                round_started = utc_now()
                await self.dispatch_round()
                timeout = await self._until_next_eligible(round_started)
                self._failures.succeeded()
            except Exception as exc:  # noqa: BLE001 - the loop must survive a database hiccup
                self._failures.failed(exc)
                timeout = loop_backoff(self._failures.failures)

    async def _until_next_eligible(self, since) -> float:
        """Seconds until the next job backing off since `since` becomes
        eligible (0: one already is), at most the resync interval."""
        async with self._database.reading() as repository:
            eligible_at = await repository.next_available_at(since)
        now = utc_now()
        if eligible_at is None:
            return self._resync_interval
        until = max(0.0, (eligible_at - now).total_seconds()) + 0.01
        return min(until, self._resync_interval)

    async def dispatch_round(self) -> None:
        """Assigns jobs until no ready session gets one."""
        handed_out = True
        while handed_out:
            handed_out = False
            for session in self._sessions.ready():
                if await self.assign_one(session):
                    handed_out = True

    async def assign_one(self, session: WorkerSession) -> bool:
        """Claims the next job `session`'s worker can run and queues its assignment."""
        token = new_lease_token()
        now = utc_now()
        expiry = now + timedelta(seconds=self._lease_duration)
        async with self._database.transaction() as repository:
            row = await repository.next_claimable(session.pipelines, now)
            if row is None:
                return False
            queued_since = lifecycle.eligible_since(row)
            lifecycle.assign(
                repository,
                row,
                worker_id=session.worker_id,
                session_id=session.session_id,
                lease_token=token,
                lease_expires_at=expiry,
                now=now,
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
                trace_parent=row.trace_parent or "",
            )
        if session.closed:
            # The stream broke while we were claiming: the job goes straight back.
            async with self._database.transaction() as repository:
                for lost in await repository.running_on_tokens([token]):
                    await lifecycle.lose_attempt(
                        repository,
                        lost,
                        f"worker {session.worker_id} disconnected",
                        policy=self._policy,
                    )
            return False
        session.leases[assignment.job_id] = token
        session.outbox.put_nowait(assignment)
        # A span of the job's trace from when it could run to its assignment.
        with job_span(
            "dispatch",
            assignment.trace_parent,
            {
                "videojobs.job_id": assignment.job_id,
                "videojobs.attempt": assignment.attempt,
                "videojobs.worker_id": session.worker_id,
            },
            start=queued_since,
        ):
            pass
        with log_context(
            job_id=assignment.job_id, attempt=assignment.attempt, worker_id=session.worker_id
        ):
            log.info(
                "job %s attempt %d assigned to worker %s",
                assignment.job_id,
                assignment.attempt,
                session.worker_id,
            )
        return True
