"""The job lifecycle: every transition of a job, in one place.

Each function here takes the caller's unit of work (a `JobStore`: the
repository of an open transaction, or a fake in unit tests) and a job row,
checks the state machine (design brief section 3), changes the row, records
the typed event that reports the change, closes or opens the attempt record,
and adds the notices other replicas need (`notices.py`). Nothing else writes
a job's state, lease or error columns or its events; whoever commits the unit
of work commits the change and its event together.

    QUEUED --assign--> RUNNING --complete--> SUCCEEDED
      |                   |---fail_attempt / time_out_attempt--> QUEUED (retry) | FAILED
      |                   |---lose_attempt / expire_lease / hand_back--> QUEUED (attempt + 1)
      |---time_out_in_queue / fail--> FAILED
      |---cancel (from QUEUED or RUNNING)--> CANCELLED

Whether a caller may make a transition (it holds the lease, it is the job's
tenant) is the caller's check; whether the job may make it is checked here.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from videojobs.jobservice.domain import (
    Artifact,
    AttemptOutcome,
    JobError,
    JobState,
    check_transition,
    retry_delay_seconds,
    utc_now,
)
from videojobs.jobservice.event_payloads import (
    Cancelled,
    Completed,
    EventPayload,
    Failed,
    PartialResult,
    Progress,
    StateChanged,
)
from videojobs.jobservice.notices import (
    AttemptStarted,
    JobsQueued,
    LeaseExpired,
    LeaseGranted,
    Notice,
    StopLease,
    StopReason,
    earliest,
)
from videojobs.jobservice.store.models import JobRow
from videojobs.storage import StorageKey


class JobStore(Protocol):
    """What the lifecycle needs of a unit of work (JobRepository implements it)."""

    async def add(self, row: JobRow) -> None:
        """Inserts a new job row."""

    def set_pipelines(self, row: JobRow, pipelines: Sequence[str]) -> None:
        """Stores the set of pipelines the job runs."""

    def record(
        self,
        row: JobRow,
        payload: EventPayload,
        *,
        at: datetime | None = None,
        job_state: JobState | None = None,
    ) -> None:
        """Appends the job's next event (sequence = last + 1), at `at` (now)
        in `job_state` (the row's state)."""

    def open_attempt(self, row: JobRow, worker_id: str, at: datetime) -> None:
        """Records the start of the row's current attempt."""

    async def close_attempt(
        self, row: JobRow, outcome: AttemptOutcome, error: JobError | None = None
    ) -> None:
        """Records how the row's current attempt ended (if it is open)."""

    def set_artifacts(self, row: JobRow, artifacts: Sequence[Artifact]) -> None:
        """Records the files of the successful attempt."""

    def notify(self, notice: Notice) -> None:
        """Sends `notice` to every replica once the unit of work commits."""


@dataclass(frozen=True)
class RetryPolicy:
    """When a job gets another attempt.

    A retryable failure waits `backoff_base * 2**(failures-1)` seconds (capped
    at `backoff_max`, with jitter) before its next attempt, while fewer than
    the job's `max_attempts` failed. A job whose worker vanished more than
    `max_lease_losses` times fails (ABORTED).
    """

    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_lease_losses: int = 10

    def delay_seconds(self, failed_attempts: int, jitter: float | None = None) -> float:
        """Backoff before the next attempt after `failed_attempts` failures."""
        return retry_delay_seconds(
            failed_attempts,
            self.backoff_base,
            self.backoff_max,
            random.random() if jitter is None else jitter,
        )


# -- accepting ----------------------------------------------------------------


async def accept(store: JobStore, row: JobRow, pipelines: Sequence[str]) -> None:
    """A new job, QUEUED: inserts it with its pipelines and the first event."""
    if row.state != JobState.QUEUED.value:
        raise ValueError(f"a new job starts QUEUED, not {row.state}")
    row.last_sequence = 0
    # Recorded first, so the row is inserted already at sequence 1 (no
    # UPDATE after); `add` stages the event once the row is in.
    store.record(row, StateChanged(None, JobState.QUEUED, "accepted"))
    await store.add(row)
    store.set_pipelines(row, pipelines)
    store.notify(JobsQueued(row.available_at, row.queue_deadline_at))


async def import_ended(
    store: JobStore,
    row: JobRow,
    pipelines: Sequence[str],
    outcome: Completed | Failed | Cancelled,
    *,
    system: str,
    accepted_at: datetime,
    ended_at: datetime,
) -> None:
    """A job that ran in another system, inserted in its final state (never
    seen live): its history says it was queued back then and how it ended."""
    final = _FINAL_STATES[type(outcome)]
    row.state = final.value
    row.last_sequence = 0
    _set_error(row, outcome)
    if isinstance(outcome, Completed):
        row.output_key = outcome.output_key.value
    await store.add(row)
    store.set_pipelines(row, pipelines)
    store.record(
        row,
        StateChanged(None, JobState.QUEUED, f"imported from {system}"),
        at=accepted_at,
        job_state=JobState.QUEUED,
    )
    store.record(row, outcome, at=ended_at)


# -- running ------------------------------------------------------------------


def eligible_since(row: JobRow) -> datetime:
    """When a queued job could first be given to a worker: when it was
    queued (its last change), or when its retry backoff ended."""
    return max(row.updated_at, row.available_at or row.updated_at)


def assign(
    store: JobStore,
    row: JobRow,
    *,
    worker_id: str,
    session_id: str,
    lease_token: str,
    lease_expires_at: datetime,
    now: datetime | None = None,
) -> None:
    """QUEUED -> RUNNING: the job's current attempt is leased to `worker_id`'s
    session until `lease_expires_at` (renewed by heartbeats)."""
    now = now or utc_now()
    store.notify(
        AttemptStarted(
            row.job_id,
            row.attempt,
            row.pipeline,
            dispatch_seconds=max(0.0, (now - eligible_since(row)).total_seconds()),
            queue_wait_seconds=(now - row.created_at).total_seconds() if row.attempt == 1 else None,
        )
    )
    _move(store, row, JobState.RUNNING, f"assigned to worker {worker_id}", now)
    row.worker_id = worker_id
    row.lease_session = session_id
    row.lease_token = lease_token
    row.lease_expires_at = lease_expires_at
    row.execution_deadline_at = now + timedelta(seconds=row.execution_timeout_seconds)
    row.available_at = None
    row.started_at = now
    row.progress_fraction = 0.0
    row.progress_stage = "assigned"
    store.open_attempt(row, worker_id, now)
    store.notify(LeaseGranted(earliest(row.lease_expires_at, row.execution_deadline_at)))


def adopt(row: JobRow, *, worker_id: str, session_id: str, lease_expires_at: datetime) -> None:
    """A reconnecting worker keeps the lease it announced: the running attempt
    moves to its new session (no state change, no event)."""
    _require(row, JobState.RUNNING)
    row.worker_id = worker_id
    row.lease_session = session_id
    row.lease_expires_at = lease_expires_at


def record_progress(store: JobStore, row: JobRow, fraction: float, stage: str) -> bool:
    """Progress of the running attempt, never backwards; False when it
    changes nothing (no event)."""
    _require(row, JobState.RUNNING)
    fraction = min(1.0, max(row.progress_fraction, fraction))
    if fraction == row.progress_fraction and stage == row.progress_stage:
        return False
    row.progress_fraction = fraction
    row.progress_stage = stage
    row.updated_at = utc_now()
    store.record(row, Progress(fraction, stage))
    return True


def record_partial_result(
    store: JobStore, row: JobRow, pipeline: str, data: dict[str, Any], size_bytes: int
) -> None:
    """A partial result of the running attempt (its bytes count towards the
    job's cap)."""
    _require(row, JobState.RUNNING)
    row.partial_result_bytes = (row.partial_result_bytes or 0) + size_bytes
    store.record(row, PartialResult(pipeline, data))


async def complete(
    store: JobStore,
    row: JobRow,
    *,
    output_key: StorageKey,
    artifacts: Sequence[Artifact],
    summary: dict[str, Any],
    warnings: Sequence[str],
) -> None:
    """RUNNING -> SUCCEEDED with the attempt's result."""
    _require(row, JobState.RUNNING)
    row.output_key = output_key.value
    row.summary = summary
    row.warnings = list(warnings)
    row.progress_fraction = 1.0
    row.progress_stage = "done"
    await store.close_attempt(row, AttemptOutcome.SUCCEEDED)
    store.set_artifacts(row, artifacts)
    _end(
        store,
        row,
        JobState.SUCCEEDED,
        Completed(output_key, tuple(artifacts), summary, tuple(warnings)),
    )


async def fail_attempt(
    store: JobStore,
    row: JobRow,
    error: JobError,
    *,
    retryable: bool,
    policy: RetryPolicy,
    outcome_if_retried: AttemptOutcome = AttemptOutcome.RETRIED,
    jitter: float | None = None,
) -> bool:
    """The running attempt failed with `error`. Retryable with attempts left:
    QUEUED again after a backoff (returns True); otherwise FAILED."""
    _require(row, JobState.RUNNING)
    row.failed_attempts += 1
    if retryable and row.failed_attempts < row.max_attempts:
        await store.close_attempt(row, outcome_if_retried, error)
        delay = policy.delay_seconds(row.failed_attempts, jitter)
        _requeue(
            store,
            row,
            f"attempt {row.attempt} failed ({error.message}); retrying in {delay:.1f}s",
            delay,
        )
        return True
    final = (
        AttemptOutcome.TIMED_OUT
        if outcome_if_retried is AttemptOutcome.TIMED_OUT
        else AttemptOutcome.FAILED
    )
    await store.close_attempt(row, final, error)
    fail(store, row, error)
    return False


async def lose_attempt(
    store: JobStore,
    row: JobRow,
    reason: str,
    *,
    policy: RetryPolicy,
    outcome: AttemptOutcome = AttemptOutcome.LEASE_LOST,
) -> None:
    """The running attempt ended without a verdict (its worker went away, or
    handed it back): QUEUED again at once with attempt + 1. Lost leases are not
    failures of the job, but a job that loses more than `max_lease_losses`
    fails (ABORTED)."""
    _require(row, JobState.RUNNING)
    await store.close_attempt(row, outcome, JobError("UNAVAILABLE", reason, "WORKER_LOST"))
    if outcome is AttemptOutcome.LEASE_LOST:
        row.lease_losses += 1
        if row.lease_losses > policy.max_lease_losses:
            fail(
                store,
                row,
                JobError(
                    "ABORTED",
                    f"the job lost its worker {row.lease_losses} times; giving up",
                    "TOO_MANY_LOST_LEASES",
                ),
            )
            return
    _requeue(store, row, reason)


async def hand_back(store: JobStore, row: JobRow, worker_id: str, policy: RetryPolicy) -> None:
    """The worker stopped the job on its own (draining, shutting down) while
    its lease stood: QUEUED again at once, not counted as a lost lease."""
    await lose_attempt(
        store,
        row,
        f"handed back by worker {worker_id}",
        policy=policy,
        outcome=AttemptOutcome.HANDED_BACK,
    )


async def expire_lease(store: JobStore, row: JobRow, policy: RetryPolicy) -> None:
    """The lease ran out without a heartbeat: the attempt is lost, and the
    session still holding it (a hung worker) is told to stop."""
    token = row.lease_token
    store.notify(LeaseExpired(row.job_id, row.attempt))
    await lose_attempt(store, row, f"lease of worker {row.worker_id} expired", policy=policy)
    if token:
        store.notify(StopLease(row.job_id, token, StopReason.LEASE_EXPIRED))


async def time_out_attempt(store: JobStore, row: JobRow, policy: RetryPolicy) -> None:
    """The attempt ran past its execution deadline: a retryable failure
    (TIMED_OUT), and its worker is told to stop."""
    token = row.lease_token
    await fail_attempt(
        store,
        row,
        JobError(
            "DEADLINE_EXCEEDED",
            f"attempt {row.attempt} ran longer than its execution timeout "
            f"({row.execution_timeout_seconds:g}s)",
            "EXECUTION_TIMEOUT",
        ),
        retryable=True,
        policy=policy,
        outcome_if_retried=AttemptOutcome.TIMED_OUT,
    )
    if token:
        store.notify(StopLease(row.job_id, token, StopReason.TIMED_OUT))


def time_out_in_queue(store: JobStore, row: JobRow) -> None:
    """No worker took the job before its queue deadline: FAILED."""
    _require(row, JobState.QUEUED)
    fail(
        store,
        row,
        JobError(
            "DEADLINE_EXCEEDED",
            f"no worker took the job within its queue timeout ({row.queue_timeout_seconds:g}s)",
            "QUEUE_TIMEOUT",
        ),
    )


async def cancel(store: JobStore, row: JobRow, reason: str) -> None:
    """QUEUED or RUNNING -> CANCELLED; a running attempt's worker is told to stop."""
    state = JobState(row.state)
    check_transition(state, JobState.CANCELLED)
    token = row.lease_token if state is JobState.RUNNING else None
    if state is JobState.RUNNING:
        await store.close_attempt(
            row, AttemptOutcome.CANCELLED, JobError("CANCELLED", reason, "JOB_CANCELLED")
        )
    _end(store, row, JobState.CANCELLED, Cancelled(reason))
    if token:
        store.notify(StopLease(row.job_id, token, StopReason.CANCELLED))


def fail(store: JobStore, row: JobRow, error: JobError) -> None:
    """Ends the job FAILED with `error` (the caller closed any attempt)."""
    _end(store, row, JobState.FAILED, Failed(error))


# -- internals ----------------------------------------------------------------

_FINAL_STATES: dict[type, JobState] = {
    Completed: JobState.SUCCEEDED,
    Failed: JobState.FAILED,
    Cancelled: JobState.CANCELLED,
}


def _require(row: JobRow, state: JobState) -> None:
    if row.state != state.value:
        raise IllegalState(f"job {row.job_id} is {row.state}, not {state.value}")


class IllegalState(ValueError):
    """A transition was asked of a job that is not in the state it needs (a bug)."""


def _move(store: JobStore, row: JobRow, target: JobState, reason: str, now: datetime) -> None:
    current = JobState(row.state)
    check_transition(current, target)
    row.state = target.value
    row.updated_at = now
    store.record(row, StateChanged(current, target, reason))


def _requeue(store: JobStore, row: JobRow, reason: str, delay_seconds: float = 0.0) -> None:
    """RUNNING -> QUEUED with attempt + 1, eligible again after `delay_seconds`."""
    now = utc_now()
    row.attempt += 1
    row.worker_id = None
    row.lease_session = None
    row.lease_token = None
    row.lease_expires_at = None
    row.execution_deadline_at = None
    row.started_at = None
    row.progress_fraction = 0.0
    row.progress_stage = "queued" if delay_seconds <= 0 else "waiting to retry"
    row.available_at = now + timedelta(seconds=delay_seconds) if delay_seconds > 0 else None
    _move(store, row, JobState.QUEUED, reason, now)
    store.notify(JobsQueued(row.available_at, row.queue_deadline_at))


def _set_error(row: JobRow, outcome: EventPayload) -> None:
    if isinstance(outcome, Failed):
        error = outcome.error
        row.error_code, row.error_message = error.code, error.message
        row.error_reason, row.error_metadata = error.reason, dict(error.metadata)
    elif isinstance(outcome, Cancelled):
        row.error_code, row.error_message = "CANCELLED", outcome.reason
        row.error_reason, row.error_metadata = "JOB_CANCELLED", {}


def _end(store: JobStore, row: JobRow, target: JobState, payload: EventPayload) -> None:
    """Moves `row` to the terminal `target` and records the terminal event."""
    current = JobState(row.state)
    check_transition(current, target)
    now = utc_now()
    row.state = target.value
    row.ended_at = now
    row.updated_at = now
    row.lease_token = None
    row.lease_session = None
    row.lease_expires_at = None
    row.execution_deadline_at = None
    row.available_at = None
    _set_error(row, payload)
    store.record(row, payload)


__all__ = [
    "IllegalState",
    "JobStore",
    "RetryPolicy",
    "accept",
    "adopt",
    "assign",
    "cancel",
    "complete",
    "expire_lease",
    "fail",
    "fail_attempt",
    "hand_back",
    "import_ended",
    "lose_attempt",
    "record_partial_result",
    "record_progress",
    "time_out_attempt",
    "time_out_in_queue",
]
