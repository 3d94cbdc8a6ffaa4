"""Worker sessions: the live dispatch streams of this replica.

A `WorkerSession` *is* one open DispatchService.Connect stream: the leases
its worker holds, the slots it has free, and an outbox of assignments and
stop orders the stream sends. Sessions live in memory on the replica holding
the stream; everything about jobs lives in the database, where each running
job names the session holding its lease (`jobs.lease_session`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from videojobs.common import errors
from videojobs.common.auth import Principal
from videojobs.common.text import echo
from videojobs.jobservice.domain import Assignment
from videojobs.jobservice.limits import (
    MAX_ANNOUNCED_PIPELINES,
    MAX_HELD_LEASES,
    MAX_PIPELINE_NAME_CHARS,
    MAX_STATUS_ADDRESS_CHARS,
    MAX_WORKER_VERSION_CHARS,
)
from videojobs.jobservice.notices import StopReason
from videojobs.jobservice.reports import TokenBucket

log = logging.getLogger(__name__)

WORKER_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_CONCURRENT_JOBS = 64


@dataclass(frozen=True)
class StopOrder:
    """Tells a worker to stop one job."""

    job_id: str
    lease_token: str
    reason: StopReason


@dataclass(frozen=True)
class WorkerHello:
    """What a worker says about itself when it connects."""

    worker_id: str
    pipelines: frozenset[str]
    max_concurrent_jobs: int
    held_leases: dict[str, str] = field(default_factory=dict)  # job_id -> lease_token
    version: str = ""
    draining: bool = False
    # Where the worker serves WorkerService (for ListWorkers); may be empty.
    status_address: str = ""


# Put in a session's outbox when a newer session of its worker id replaced it.
SESSION_REPLACED = object()


@dataclass(eq=False)
class WorkerSession:
    """One live worker connection and the leases it holds."""

    hello: WorkerHello
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
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
    # What each lease was given (job_id -> Assignment; not for leases adopted
    # at hello): its blob calls are checked against it without a database
    # read, while `leases` still names the same token.
    assigned: dict[str, Assignment] = field(default_factory=dict)
    # Progress held back by that interval, and the timers that record it.
    pending_progress: dict[str, tuple[str, float, str]] = field(default_factory=dict)
    progress_flushes: dict[str, asyncio.TimerHandle] = field(default_factory=dict)

    @property
    def worker_id(self) -> str:
        """The worker's announced id."""
        return self.hello.worker_id

    @property
    def pipelines(self) -> frozenset[str]:
        """What the worker runs: a job goes to it when it runs all of the job's set."""
        return self.hello.pipelines

    @property
    def free_capacity(self) -> int:
        """How many more jobs this worker may be given now."""
        if self.draining or self.unresponsive or self.closed:
            return 0
        return self.hello.max_concurrent_jobs - len(self.leases) - len(self.stopping)

    def send_stop(self, job_id: str, lease_token: str, reason: StopReason) -> None:
        """Queues a StopOrder; the slot stays taken until the worker confirms."""
        if self.leases.get(job_id) == lease_token:
            del self.leases[job_id]
            self.stopping[job_id] = lease_token
        self.forget_lease(job_id)
        self.outbox.put_nowait(StopOrder(job_id, lease_token, reason))

    def forget_lease(self, job_id: str) -> None:
        """Drops the per-lease report state of `job_id`."""
        self.assigned.pop(job_id, None)
        self.partial_buckets.pop(job_id, None)
        self.last_progress_at.pop(job_id, None)
        self.pending_progress.pop(job_id, None)
        flush = self.progress_flushes.pop(job_id, None)
        if flush is not None:
            flush.cancel()

    def cancel_timers(self) -> None:
        """Cancels held-back progress timers (the session is ending)."""
        for flush in self.progress_flushes.values():
            flush.cancel()
        self.progress_flushes.clear()

    def heard_from(self) -> None:
        """The worker said something: it is alive."""
        self.unresponsive = False


class SessionTable:
    """The sessions open on this replica."""

    def __init__(self) -> None:
        self._sessions: dict[str, WorkerSession] = {}

    def __iter__(self) -> Iterator[WorkerSession]:
        return iter(list(self._sessions.values()))

    def add(self, session: WorkerSession) -> None:
        """Registers a newly opened session."""
        self._sessions[session.session_id] = session

    def remove(self, session: WorkerSession) -> None:
        """Forgets a session that ended."""
        session.closed = True
        self._sessions.pop(session.session_id, None)

    def ready(self) -> list[WorkerSession]:
        """Sessions with free slots, most free first."""
        ready = [s for s in self._sessions.values() if s.free_capacity > 0]
        return sorted(ready, key=lambda s: -s.free_capacity)

    def replace_older(self, worker_id: str, session_id: str) -> bool:
        """Ends every session of `worker_id` other than `session_id` (a newer
        stream of that id opened, here or on another replica): its stream
        ends with ABORTED/SESSION_REPLACED and its close requeues nothing,
        since the newer session took over (or requeued) its leases."""
        replaced = False
        for older in list(self._sessions.values()):
            if older.worker_id != worker_id or older.session_id == session_id:
                continue
            log.warning(
                "worker %s: session %s replaces session %s", worker_id, session_id, older.session_id
            )
            self.remove(older)
            older.leases.clear()
            older.assigned.clear()
            older.stopping.clear()
            older.cancel_timers()
            older.outbox.put_nowait(SESSION_REPLACED)
            replaced = True
        return replaced

    def held_assignment(self, job_id: str, lease_token: str) -> Assignment | None:
        """The assignment of `job_id` whose lease `lease_token` is, if a
        session of this replica holds it now (as far as this replica knows:
        a lease another replica ended is forgotten when its notice arrives)."""
        for session in self._sessions.values():
            if session.leases.get(job_id) == lease_token:
                assignment = session.assigned.get(job_id)
                if assignment is not None and assignment.lease_token == lease_token:
                    return assignment
                return None
        return None

    def stop(self, job_id: str, lease_token: str, reason: StopReason) -> bool:
        """Tells the session holding `lease_token` (if it is here) to stop the
        job; a lease that expired marks its session unresponsive."""
        for session in self._sessions.values():
            if session.leases.get(job_id) == lease_token:
                if reason is StopReason.LEASE_EXPIRED:
                    session.unresponsive = True
                    log.warning("worker %s is unresponsive", session.worker_id)
                session.send_stop(job_id, lease_token, reason)
                return True
        return False


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
    if len(hello.status_address) > MAX_STATUS_ADDRESS_CHARS:
        violations.append(
            ("hello.status_address", f"at most {MAX_STATUS_ADDRESS_CHARS} characters")
        )
    if not 1 <= hello.max_concurrent_jobs <= MAX_CONCURRENT_JOBS:
        violations.append(("hello.max_concurrent_jobs", f"must be 1 to {MAX_CONCURRENT_JOBS}"))
    if violations:
        raise errors.invalid_argument("the worker hello is invalid", violations)
