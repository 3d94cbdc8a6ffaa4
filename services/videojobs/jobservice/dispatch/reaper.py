"""The deadline reaper: enforces, from the database, what workers cannot be
trusted with: lease expiry, execution timeouts and queue timeouts.

It sleeps until the earliest deadline (or a wake-up: a new job or assignment
may bring an earlier one; at most `resync_interval` seconds). Due rows are
locked in the reaper's transaction; on PostgreSQL rows another replica's
reaper holds are skipped (`FOR UPDATE SKIP LOCKED`), so each expiry is
handled by exactly one replica. The stop orders that follow travel as
notices to whichever replica holds the worker's stream.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from videojobs.common.aio import wait_event
from videojobs.common.failures import RepeatedFailureLog
from videojobs.common.logs import log_context
from videojobs.jobservice import lifecycle
from videojobs.jobservice.dispatch.dispatcher import loop_backoff
from videojobs.jobservice.domain import JobState, utc_now
from videojobs.jobservice.notices import earliest
from videojobs.jobservice.store import Database

log = logging.getLogger(__name__)

# Rows handled per transaction (the reaper loops until nothing is due).
DUE_BATCH = 100


class DeadlineReaper:
    """Expires leases, times out attempts and queued jobs."""

    def __init__(
        self, database: Database, *, policy: lifecycle.RetryPolicy, resync_interval: float
    ) -> None:
        self._database = database
        self._policy = policy
        self._resync_interval = resync_interval
        self._wake = asyncio.Event()
        self._failures = RepeatedFailureLog(log, "deadline check")
        # The next deadline needs a database read (at start, after a timer
        # fired, after a wake-up that did not say which deadline it brought).
        self._must_read = True
        # The earliest deadline wake-ups brought since the last look.
        self._hint: datetime | None = None

    def wake(self, deadline: datetime | None = None, *, known: bool = False) -> None:
        """A deadline may have come nearer: look again. With `known`, the
        caller says which (`deadline`; None: none), and the reaper takes it
        without reading the database."""
        if not known:
            self._must_read = True
        elif deadline is None:
            return
        else:
            self._hint = earliest(self._hint, deadline)
        self._wake.set()

    async def run(self) -> None:
        """The reaper loop (until cancelled): the next deadline from the
        database at start and whenever a timer fires, else from what wake-ups
        said; what is due is handled as the database has it."""
        next_deadline: datetime | None = None
        while True:
            # Cleared before reading, so a wake-up that arrives meanwhile is not lost.
            self._wake.clear()
            hint, self._hint = self._hint, None
            try:
                if self._must_read:
                    self._must_read = False
                    next_deadline = await self._next_deadline()
                else:
                    next_deadline = earliest(next_deadline, hint)
                    if next_deadline is not None and next_deadline <= utc_now():
                        # Due as far as wake-ups said: the database decides.
                        next_deadline = await self._next_deadline()
                while next_deadline is not None and next_deadline <= utc_now():
                    handled = await self._handle_due()
                    next_deadline = await self._next_deadline()
                    if handled < DUE_BATCH:
                        # What is still due is another replica's to handle (its
                        # rows are locked) or came due just now: look again soon.
                        break
                timeout = self._resync_interval
                if next_deadline is not None:
                    until = max(0.0, (next_deadline - utc_now()).total_seconds()) + 0.02
                    timeout = min(timeout, until)
                self._failures.succeeded()
            except Exception as exc:  # noqa: BLE001 - the loop must survive a database hiccup
                self._failures.failed(exc)
                self._must_read = True
                timeout = loop_backoff(self._failures.failures)
            if not await wait_event(self._wake, timeout):
                # A deadline (or the resync interval) came: the database says
                # what is due and what comes next (leases renewed meanwhile).
                self._must_read = True

    async def _next_deadline(self):
        async with self._database.reading() as repository:
            return await repository.next_deadline()

    async def process_due(self) -> int:
        """Handles what is due now (one batch of each kind), if anything is;
        returns how many rows of the largest kind it handled."""
        next_deadline = await self._next_deadline()
        if next_deadline is None or next_deadline > utc_now():
            return 0
        return await self._handle_due()

    async def _handle_due(self) -> int:
        now = utc_now()
        async with self._database.transaction() as repository:
            expired = await repository.expired_leases(now, DUE_BATCH)
            for row in expired:
                with log_context(job_id=row.job_id, attempt=row.attempt, worker_id=row.worker_id):
                    log.info("lease of job %s (worker %s) expired", row.job_id, row.worker_id)
                await lifecycle.expire_lease(repository, row, self._policy)
            overdue = [
                row
                for row in await repository.overdue_attempts(now, DUE_BATCH)
                if row.state == JobState.RUNNING.value
            ]
            for row in overdue:
                with log_context(job_id=row.job_id, attempt=row.attempt, worker_id=row.worker_id):
                    log.info("job %s attempt %d timed out", row.job_id, row.attempt)
                await lifecycle.time_out_attempt(repository, row, self._policy)
            queued_too_long = await repository.overdue_in_queue(now, DUE_BATCH)
            for row in queued_too_long:
                with log_context(job_id=row.job_id):
                    log.info("job %s timed out in the queue", row.job_id)
                lifecycle.time_out_in_queue(repository, row)
        return max(len(expired), len(overdue), len(queued_too_long))
