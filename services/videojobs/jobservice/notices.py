"""Notices: what one job-service replica tells the others (and itself) after
a commit.

The database is the truth; a notice only says "look again": a job became
claimable, a job got events, a lease must stop, a worker id connected. The
lifecycle adds them to the unit of work; the notifier (`notifier.py`)
delivers them to this process after the commit and, on PostgreSQL, to every
other replica through `LISTEN/NOTIFY`. A lost notice costs latency, never
correctness: every replica also re-reads on a slow periodic sweep.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; stay well below.
MAX_MESSAGE_BYTES = 7000


class StopReason(enum.StrEnum):
    """Why a worker is told to stop a job (maps to the contract's StopReason)."""

    CANCELLED = "cancelled"
    # The worker's lease is not (or no longer) current: it reconnected
    # without it, or another session holds the job.
    LEASE_LOST = "lease_lost"
    # Its lease ran out while its stream stayed open (a hung worker).
    LEASE_EXPIRED = "lease_expired"
    JOB_ENDED = "job_ended"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class JobsQueued:
    """One or more jobs became QUEUED (accepted, or requeued): dispatchers
    look for work, reapers for a new queue deadline.

    With `known`, the notice also says what the change brought, so neither
    has to read the database for it: `eligible_at`, the earliest end of a
    retry backoff (None: every such job may run now), and `deadline`, the
    earliest queue deadline (None: none). A notice from a replica that did
    not say is `known=False`: look in the database."""

    eligible_at: datetime | None = None
    deadline: datetime | None = None
    known: bool = True


@dataclass(frozen=True)
class LeaseGranted:
    """A job was leased: it has a lease expiry and an execution deadline
    now, which every replica's reaper must count (the replica that granted
    it may be gone when they fall due). `deadline` is the earlier of the
    two when `known`."""

    deadline: datetime | None = None
    known: bool = True


@dataclass(frozen=True)
class EventsAppended:
    """These jobs have new events: their followers re-read."""

    job_ids: frozenset[str]


@dataclass(frozen=True)
class EventsCommitted:
    """The events this replica just committed, as stored (in sequence order
    per job). Delivered in this process only, never sent to other replicas
    (they read the database when EventsAppended wakes them): followers here
    take them without reading the database again."""

    events: tuple[Any, ...]  # JobEvent


@dataclass(frozen=True)
class StopLease:
    """Whichever session holds `lease_token` of `job_id` tells its worker to stop."""

    job_id: str
    lease_token: str
    reason: StopReason


@dataclass(frozen=True)
class WorkerConnected:
    """A dispatch stream of `worker_id` opened as `session_id`: an older
    session of that id, on any replica, ends (never two sessions with one id)."""

    worker_id: str
    session_id: str


@dataclass(frozen=True)
class Resync:
    """Notices may have been missed (the listener reconnected): re-read everything."""


@dataclass(frozen=True)
class AttemptStarted:
    """A job's attempt was assigned to a worker. This process only (metrics)."""

    job_id: str
    attempt: int
    pipeline: str
    # From when the job could be given to a worker (queued, or its retry
    # backoff over) to its assignment.
    dispatch_seconds: float
    # From submit to the first attempt's start; None for later attempts.
    queue_wait_seconds: float | None


@dataclass(frozen=True)
class AttemptEnded:
    """A job's attempt ended (`outcome` an AttemptOutcome value). This
    process only (metrics)."""

    job_id: str
    attempt: int
    pipeline: str
    outcome: str
    run_seconds: float


@dataclass(frozen=True)
class LeaseExpired:
    """A worker's lease on a job ran out. This process only (metrics)."""

    job_id: str
    attempt: int


# Notices delivered in the committing process only, never sent to other replicas.
LOCAL_NOTICES = (EventsCommitted, AttemptStarted, AttemptEnded, LeaseExpired)

Notice = (
    JobsQueued
    | LeaseGranted
    | EventsAppended
    | EventsCommitted
    | StopLease
    | WorkerConnected
    | Resync
    | AttemptStarted
    | AttemptEnded
    | LeaseExpired
)


def earliest(*instants: datetime | None) -> datetime | None:
    """The earliest of the instants given (None ones left out), or None."""
    present = [instant for instant in instants if instant is not None]
    return min(present) if present else None


def _merge_queued(first: JobsQueued | None, second: JobsQueued) -> JobsQueued:
    if first is None:
        return second
    return JobsQueued(
        earliest(first.eligible_at, second.eligible_at),
        earliest(first.deadline, second.deadline),
        first.known and second.known,
    )


def _merge_leases(first: LeaseGranted | None, second: LeaseGranted) -> LeaseGranted:
    if first is None:
        return second
    return LeaseGranted(earliest(first.deadline, second.deadline), first.known and second.known)


def merge(notices: Iterable[Notice]) -> list[Notice]:
    """`notices` without repeats: one JobsQueued and one LeaseGranted (with
    the earliest times of those merged), one EventsAppended of every job,
    one EventsCommitted of every event (in order), the others in order."""
    queued: JobsQueued | None = None
    leased: LeaseGranted | None = None
    job_ids: set[str] = set()
    committed: list[Any] = []
    others: list[Notice] = []
    for notice in notices:
        if isinstance(notice, JobsQueued):
            queued = _merge_queued(queued, notice)
        elif isinstance(notice, LeaseGranted):
            leased = _merge_leases(leased, notice)
        elif isinstance(notice, EventsAppended):
            job_ids |= notice.job_ids
        elif isinstance(notice, EventsCommitted):
            committed.extend(notice.events)
        elif notice not in others:
            others.append(notice)
    merged: list[Notice] = [queued] if queued is not None else []
    if leased is not None:
        merged.append(leased)
    if job_ids:
        merged.append(EventsAppended(frozenset(job_ids)))
    if committed:
        merged.append(EventsCommitted(tuple(committed)))
    return merged + others


def _as_items(notice: Notice) -> Iterator[list]:
    match notice:
        # "q" and "l" are what every version understands; "Q" and "L" add
        # the times (versions that do not know them skip them).
        case JobsQueued(eligible_at, deadline, known):
            yield ["q"]
            if known:
                yield ["Q", _epoch(eligible_at), _epoch(deadline)]
        case LeaseGranted(deadline, known):
            yield ["l"]
            if known:
                yield ["L", _epoch(deadline)]
        case EventsAppended(job_ids):
            for job_id in sorted(job_ids):
                yield ["e", job_id]
        case StopLease(job_id, lease_token, reason):
            yield ["s", job_id, lease_token, reason.value]
        case WorkerConnected(worker_id, session_id):
            yield ["w", worker_id, session_id]
        case Resync():
            yield ["r"]
        case EventsCommitted() | AttemptStarted() | AttemptEnded() | LeaseExpired():
            return  # this process only


def encode(origin: str, notices: Iterable[Notice]) -> list[str]:
    """`notices` as JSON messages of at most MAX_MESSAGE_BYTES each, every one
    naming the replica (`origin`) that sent it."""
    messages: list[str] = []
    items: list[list] = []
    size = 0
    for notice in merge(notices):
        for item in _as_items(notice):
            item_size = len(json.dumps(item)) + 2  # with the ", " between items
            if items and size + item_size > MAX_MESSAGE_BYTES - 64:
                messages.append(json.dumps({"o": origin, "n": items}))
                items, size = [], 0
            items.append(item)
            size += item_size
    if items:
        messages.append(json.dumps({"o": origin, "n": items}))
    return messages


def decode(message: str) -> tuple[str, list[Notice]]:
    """The origin and the notices of one message; malformed items are skipped
    (a message from a newer version may hold kinds this one does not know)."""
    data = json.loads(message)
    notices: list[Notice] = []
    job_ids: set[str] = set()
    # JobsQueued and LeaseGranted keep the place of their first item; their
    # times ("Q", "L") are merged in at the end.
    queued_at = leased_at = -1
    queued_seen = leased_seen = 0  # which item came first, for two at one place
    queued_times: list[JobsQueued] = []
    lease_times: list[LeaseGranted] = []
    for number, item in enumerate(data.get("n", [])):
        try:
            match item:
                case ["q"] | ["Q", _, _]:
                    if item[0] == "Q":
                        queued_times.append(JobsQueued(_instant(item[1]), _instant(item[2])))
                    if queued_at < 0:
                        queued_at, queued_seen = len(notices), number
                case ["l"] | ["L", _]:
                    if item[0] == "L":
                        lease_times.append(LeaseGranted(_instant(item[1])))
                    if leased_at < 0:
                        leased_at, leased_seen = len(notices), number
                case ["e", str(job_id)]:
                    job_ids.add(job_id)
                case ["s", str(job_id), str(token), str(reason)]:
                    notices.append(StopLease(job_id, token, StopReason(reason)))
                case ["w", str(worker_id), str(session_id)]:
                    notices.append(WorkerConnected(worker_id, session_id))
                case ["r"]:
                    notices.append(Resync())
        except (ValueError, TypeError, OverflowError):
            continue
    # Without its times (an older replica sent it), a JobsQueued or a
    # LeaseGranted says only "look in the database". Inserted from the back,
    # so the earlier place stays right.
    placed: list[tuple[int, int, Notice]] = []
    if queued_at >= 0:
        merged_queued = None
        for notice in queued_times or [JobsQueued(known=False)]:
            merged_queued = _merge_queued(merged_queued, notice)
        placed.append((queued_at, queued_seen, merged_queued))
    if leased_at >= 0:
        merged_lease = None
        for notice in lease_times or [LeaseGranted(known=False)]:
            merged_lease = _merge_leases(merged_lease, notice)
        placed.append((leased_at, leased_seen, merged_lease))
    # The later of two at one place goes in first, so the earlier ends first.
    for index, _, notice in sorted(placed, key=lambda p: (p[0], p[1]), reverse=True):
        notices.insert(index, notice)
    if job_ids:
        notices.append(EventsAppended(frozenset(job_ids)))
    return str(data.get("o", "")), notices


def _epoch(instant: datetime | None) -> float | None:
    return None if instant is None else instant.timestamp()


def _instant(value: Any) -> datetime | None:
    """An instant sent as epoch seconds (or None); anything else is a ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not an instant: {value!r}")
    return datetime.fromtimestamp(value, UTC)
