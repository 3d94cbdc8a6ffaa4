"""The dispatcher: hands queued jobs to this replica's sessions with free slots.

Woken by notices (a job queued or requeued on any replica, a freed slot, a
worker connecting), by the moment a job backing off becomes eligible, and, as
a safety net only, every `resync_interval` seconds. Each claim locks the
first eligible job whose every pipeline the worker runs (skipping rows other
replicas have locked, on PostgreSQL) and moves it to RUNNING through the
lifecycle, in one transaction. A claim that finds nothing more waiting for
a set of pipelines is remembered until jobs are queued again (or a timed
wake-up), so a slot freed meanwhile costs no transaction to find nothing.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from videojobs.common.aio import wait_event
from videojobs.common.failures import RepeatedFailureLog
from videojobs.common.logs import log_context
from videojobs.common.tracing import job_span
from videojobs.jobservice import lifecycle
from videojobs.jobservice.dispatch.sessions import SessionTable, WorkerSession
from videojobs.jobservice.domain import Assignment, attempt_prefix_for, new_lease_token, utc_now
from videojobs.jobservice.notices import earliest
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
        # When the next job backing off becomes eligible, as far as wake-ups
        # said; unknown (read from the database) at start, after one became
        # eligible, and after a wake-up that did not say.
        self._eligible_unknown = True
        self._next_eligible: datetime | None = None
        # Pipeline sets for which a claim found no job waiting, since the
        # last time jobs were queued (a JobsQueued notice, a resync, a timed
        # wake-up for a backoff or the safety net): a session with such a set
        # whose slot frees up needs no claim transaction to find nothing.
        # `_queued_count` tells a claim whether jobs were queued while it ran.
        self._nothing_waiting_for: set[frozenset[str]] = set()
        self._queued_count = 0

    def wake(self, eligible_at: datetime | None = None, *, known: bool = True) -> None:
        """Look for work now. `eligible_at`: a job backing off until then was
        queued; `known=False`: jobs were queued and nobody said until when
        they back off (the next round reads it)."""
        if not known:
            self._eligible_unknown = True
        elif eligible_at is not None:
            self._next_eligible = earliest(self._next_eligible, eligible_at)
        self._forget_nothing_waiting()
        self._wake.set()

    def slot_freed(self) -> None:
        """A session's slot came free (a job ended there) and nothing was
        queued by it: look for work for that session, unless a claim already
        found none waiting for its pipelines since jobs were last queued."""
        self._wake.set()

    def _forget_nothing_waiting(self) -> None:
        self._queued_count += 1
        self._nothing_waiting_for.clear()

    async def run(self) -> None:
        """The dispatch loop (until cancelled)."""
        timeout: float | None = 0.0
        while True:
            if not await wait_event(self._wake, timeout):
                # A backoff ended or the safety net is due: look again.
                self._forget_nothing_waiting()
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
                self._eligible_unknown = True
                timeout = loop_backoff(self._failures.failures)

    async def _until_next_eligible(self, since: datetime) -> float:
        """Seconds until the next job backing off since `since` becomes
        eligible (0: one already is), at most the resync interval. Read from
        the database only when wake-ups did not say, or when the one they
        said is no longer ahead (the round took it; the next is unknown)."""
        known = self._next_eligible
        if self._eligible_unknown or (known is not None and known <= since):
            self._eligible_unknown = False
            async with self._database.reading() as repository:
                self._next_eligible = await repository.next_available_at(since)
        eligible_at = self._next_eligible
        now = utc_now()
        if eligible_at is None:
            return self._resync_interval
        until = max(0.0, (eligible_at - now).total_seconds()) + 0.01
        return min(until, self._resync_interval)

    async def dispatch_round(self) -> None:
        """Assigns jobs, one per ready session in turn (most free slots
        first), until none is left for any of them. A claim also sees whether
        another job waits for that session, so the round never spends a
        transaction on finding nothing."""
        exhausted: set[str] = set()
        while True:
            ready = [
                s
                for s in self._sessions.ready()
                if s.session_id not in exhausted and s.pipelines not in self._nothing_waiting_for
            ]
            if not ready:
                return
            for session in ready:
                queued_count = self._queued_count
                handed_out, more = await self.assign_one(session)
                if not (handed_out and more):
                    exhausted.add(session.session_id)
                    if queued_count == self._queued_count:  # nothing queued meanwhile
                        self._nothing_waiting_for.add(session.pipelines)

    async def assign_one(self, session: WorkerSession) -> tuple[bool, bool]:
        """Claims the next job `session`'s worker can run and queues its
        assignment; says whether it did, and whether another job was waiting
        for this worker when it claimed."""
        token = new_lease_token()
        now = utc_now()
        expiry = now + timedelta(seconds=self._lease_duration)
        async with self._database.transaction() as repository:
            rows = await repository.claimable(session.pipelines, now, 2)
            if not rows:
                return False, False
            row, more = rows[0], len(rows) > 1
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
            return False, False
        session.leases[assignment.job_id] = token
        session.assigned[assignment.job_id] = assignment
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
        return True, more
