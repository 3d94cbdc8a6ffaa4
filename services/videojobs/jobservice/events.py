"""Following a job's events: replay from the database, then live.

The database is the source of truth; `EventHub` only wakes followers in this
process when a transaction that appended events has committed. Followers
re-read from the database on every wake-up, and also every
`fallback_poll_seconds`, which covers events written by another job-service
replica sharing the database.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

from videojobs.common.auth import LOCAL_PRINCIPAL, Principal
from videojobs.jobservice.domain import JobEvent, JobState, check_job_id, check_visible
from videojobs.jobservice.limits import REPLAY_BATCH_BYTES, REPLAY_BATCH_EVENTS
from videojobs.jobservice.store import Database


class EventHub:
    """Wakes coroutines waiting for new events of a job (in this process)."""

    def __init__(self) -> None:
        self._signals: dict[str, asyncio.Event] = {}
        self._followers: Counter[str] = Counter()

    def follow(self, job_id: str) -> None:
        """A follower of `job_id` starts."""
        self._followers[job_id] += 1

    def unfollow(self, job_id: str) -> None:
        """A follower of `job_id` ends; the last one takes the job's signal
        with it, so jobs nobody follows any more cost no memory."""
        self._followers[job_id] -= 1
        if self._followers[job_id] <= 0:
            del self._followers[job_id]
            self._signals.pop(job_id, None)

    def signal_for(self, job_id: str) -> asyncio.Event:
        """The event that will be set on the next commit touching `job_id`.

        Take it *before* reading the database, so a commit that lands between
        the read and the wait is not missed.
        """
        signal = self._signals.get(job_id)
        if signal is None:
            signal = self._signals[job_id] = asyncio.Event()
        return signal

    def notify(self, job_ids: set[str]) -> None:
        """Called after a commit that appended events for `job_ids`."""
        for job_id in job_ids:
            signal = self._signals.pop(job_id, None)
            if signal is not None:
                signal.set()


class EventFeed:
    """Application service behind StreamResults."""

    def __init__(
        self, database: Database, hub: EventHub, fallback_poll_seconds: float = 2.0
    ) -> None:
        self._database = database
        self._hub = hub
        self._fallback_poll_seconds = fallback_poll_seconds

    async def follow(
        self, job_id: str, after_sequence: int, principal: Principal = LOCAL_PRINCIPAL
    ) -> AsyncIterator[JobEvent]:
        """Events of `job_id` after `after_sequence`, stored then live, ending with
        the terminal event. Raises NOT_FOUND for an unknown job, or one of a
        tenant the principal does not see."""
        check_job_id(job_id)
        self._hub.follow(job_id)
        try:
            async for event in self._follow(job_id, after_sequence, principal):
                yield event
        finally:
            self._hub.unfollow(job_id)

    async def _follow(
        self, job_id: str, after_sequence: int, principal: Principal
    ) -> AsyncIterator[JobEvent]:
        sequence = after_sequence
        while True:
            signal = self._hub.signal_for(job_id)
            async with self._database.reading() as repository:
                row = await repository.get_row(job_id)
                check_visible(job_id, None if row is None else row.tenant, principal)
                ended = JobState(row.state).is_terminal
                stored_up_to = row.last_sequence
                # Bounded by bytes as well as count: memory stays flat however
                # much a job holds.
                events = await repository.events_after(
                    job_id, sequence, REPLAY_BATCH_EVENTS, REPLAY_BATCH_BYTES
                )
            for event in events:
                yield event
                sequence = event.sequence
                if event.kind.is_terminal:
                    return
            if events and events[-1].sequence < stored_up_to:
                continue  # more were stored than one batch holds
            if ended:
                # The client resumed after the terminal event: nothing is left.
                return
            try:
                await asyncio.wait_for(signal.wait(), timeout=self._fallback_poll_seconds)
            except TimeoutError:
                pass
