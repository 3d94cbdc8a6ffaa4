"""Following a job's events: replay from the database, then live.

The database is the source of truth. `EventHub` wakes followers in this
process when a transaction that appended events has committed, on this
replica or (through the notifier's EventsAppended notices) on any other.
Events committed by this replica also come with the wake-up (EventsCommitted):
a follower takes the next ones from the hub's short per-job buffer without
reading the database. It reads the database for the replay, when the next
event is not in the buffer (committed by another replica, or it fell
behind), and every `resync_seconds` as a safety net for a lost notice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterable

from videojobs.common.aio import wait_event
from videojobs.common.auth import LOCAL_PRINCIPAL, Principal
from videojobs.jobservice.domain import JobEvent, JobState, check_job_id, check_visible
from videojobs.jobservice.limits import REPLAY_BATCH_BYTES, REPLAY_BATCH_EVENTS
from videojobs.jobservice.notices import EventsAppended, EventsCommitted, Notice, Resync
from videojobs.jobservice.store import Database

# Recent events kept per followed job for its followers (older ones are read
# from the database by a follower that falls behind). Partial results are at
# most 256 KiB and rate-limited, so this bounds a followed job's buffer to a
# few MiB.
BUFFERED_EVENTS_PER_JOB = 16


class EventHub:
    """Wakes coroutines waiting for new events of a job (in this process),
    and keeps the events this process committed for them."""

    def __init__(self) -> None:
        self._signals: dict[str, asyncio.Event] = {}
        self._followers: Counter[str] = Counter()
        self._recent: dict[str, dict[int, JobEvent]] = {}
        self._read_locks: dict[str, asyncio.Lock] = {}

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
            self._recent.pop(job_id, None)
            self._read_locks.pop(job_id, None)

    def events_after(self, job_id: str, sequence: int) -> list[JobEvent]:
        """The buffered events of `job_id` from `sequence + 1` on, as long as
        they follow each other without a gap (empty: read the database)."""
        recent = self._recent.get(job_id)
        found: list[JobEvent] = []
        while recent is not None and (event := recent.get(sequence + 1)) is not None:
            found.append(event)
            sequence += 1
        return found

    def read_lock(self, job_id: str) -> asyncio.Lock:
        """The lock followers of `job_id` hold while they read its events."""
        lock = self._read_locks.get(job_id)
        if lock is None:
            lock = self._read_locks[job_id] = asyncio.Lock()
        return lock

    def keep(self, events: Iterable[JobEvent]) -> None:
        """Buffers `events` (of followed jobs) for the jobs' other followers."""
        for event in events:
            if event.job_id not in self._followers:
                continue  # nobody here follows it
            recent = self._recent.setdefault(event.job_id, {})
            recent[event.sequence] = event
            while len(recent) > BUFFERED_EVENTS_PER_JOB:
                del recent[min(recent)]

    def signal_for(self, job_id: str) -> asyncio.Event:
        """The event that will be set on the next commit touching `job_id`.

        Take it *before* reading the database, so a commit that lands between
        the read and the wait is not missed.
        """
        signal = self._signals.get(job_id)
        if signal is None:
            signal = self._signals[job_id] = asyncio.Event()
        return signal

    def notify(self, job_ids: Iterable[str]) -> None:
        """Called after a commit that appended events for `job_ids`."""
        for job_id in job_ids:
            signal = self._signals.pop(job_id, None)
            if signal is not None:
                signal.set()

    def on_notice(self, notice: Notice) -> None:
        """Notifier subscriber: wakes followers of jobs with new events (every
        follower after a Resync)."""
        if isinstance(notice, EventsCommitted):
            self.keep(notice.events)
            self.notify({event.job_id for event in notice.events})
        elif isinstance(notice, EventsAppended):
            self.notify(notice.job_ids)
        elif isinstance(notice, Resync):
            self.notify(list(self._signals))


class EventFeed:
    """Application service behind StreamResults."""

    def __init__(self, database: Database, hub: EventHub, resync_seconds: float = 10.0) -> None:
        self._database = database
        self._hub = hub
        self._resync_seconds = resync_seconds

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
        replayed = False
        while True:
            signal = self._hub.signal_for(job_id)
            if replayed:
                # Live: the next events, if this process committed them.
                live = self._hub.events_after(job_id, sequence)
                for event in live:
                    yield event
                    sequence = event.sequence
                    if event.kind.is_terminal:
                        return
                if live:
                    await wait_event(signal, self._resync_seconds)
                    continue
            # Followers of one job read the database one at a time; each
            # keeps what it read in the hub, so the others woken by the same
            # notice (events another replica wrote) take it from there.
            async with self._hub.read_lock(job_id):
                shared = self._hub.events_after(job_id, sequence) if replayed else []
                if shared:
                    events, ended, stored_up_to = shared, False, shared[-1].sequence
                else:
                    async with self._database.reading() as repository:
                        row = await repository.get_row(job_id)
                        check_visible(job_id, None if row is None else row.tenant, principal)
                        ended = JobState(row.state).is_terminal
                        stored_up_to = row.last_sequence
                        # Bounded by bytes as well as count: memory stays flat
                        # however much a job holds.
                        events = await repository.events_after(
                            job_id, sequence, REPLAY_BATCH_EVENTS, REPLAY_BATCH_BYTES
                        )
                    if replayed:
                        self._hub.keep(events)
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
            replayed = True
            await wait_event(signal, self._resync_seconds)
