"""Every job transition of `videojobs.jobservice.lifecycle`, without a database.

The lifecycle functions take a `JobStore` (the repository of an open
transaction in production); here a `FakeJobStore` keeps jobs, events, attempt
records, artifacts and notices in memory, so each transition can be checked
for the state it leaves, the event it records, the attempt it opens or closes
and the notices it sends -- and each refused transition for leaving the row
and the store exactly as they were.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from videojobs.jobservice import event_payloads, lifecycle
from videojobs.jobservice.domain import (
    ALLOWED_TRANSITIONS,
    Artifact,
    AttemptOutcome,
    IllegalTransition,
    JobError,
    JobState,
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
from videojobs.jobservice.lifecycle import IllegalState, RetryPolicy
from videojobs.jobservice.notices import (
    AttemptStarted,
    JobsQueued,
    LeaseExpired,
    LeaseGranted,
    Notice,
    StopLease,
    StopReason,
)
from videojobs.jobservice.store.models import JobRow
from videojobs.storage import StorageKey

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
JOB_ID = "0123456789abcdef0123456789abcdef"
PREFIX = StorageKey.join("jobs", JOB_ID, "attempts", "1")
OUTPUT_KEY = PREFIX.child("result.json")
ARTIFACTS = (
    Artifact(PREFIX.child("thumb-0.jpg"), "image/jpeg", 1234, 320, 240, 1.5, 0, 37),
    Artifact(PREFIX.child("thumb-1.jpg"), "image/jpeg", 2345, 320, 240, 3.0, 1, 75),
)
ERROR = JobError("INTERNAL", "decoder crashed", "PIPELINE_FAILED", {"frame": "12"})
POLICY = RetryPolicy(backoff_base=2.0, backoff_max=60.0, max_lease_losses=3)


# -- the fake unit of work ----------------------------------------------------


class Clock:
    """A fixed, manually advanced `utc_now`."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class StoredEvent:
    job_id: str
    sequence: int
    created_at: datetime
    job_state: JobState
    attempt: int
    payload: EventPayload


@dataclass
class AttemptRecord:
    worker_id: str
    started_at: datetime
    outcome: AttemptOutcome = AttemptOutcome.RUNNING
    ended_at: datetime | None = None
    error: JobError | None = None


@dataclass
class FakeJobStore:
    """The `lifecycle.JobStore` protocol, in memory."""

    clock: Clock
    rows: dict[str, JobRow] = field(default_factory=dict)
    pipelines: dict[str, list[str]] = field(default_factory=dict)
    events: list[StoredEvent] = field(default_factory=list)
    attempts: dict[tuple[str, int], AttemptRecord] = field(default_factory=dict)
    artifacts: dict[str, list[Artifact]] = field(default_factory=dict)
    notices: list[Notice] = field(default_factory=list)
    metric_notices: list[Notice] = field(default_factory=list)

    async def add(self, row: JobRow) -> None:
        assert row.job_id not in self.rows, f"job {row.job_id} inserted twice"
        self.rows[row.job_id] = row

    def set_pipelines(self, row: JobRow, pipelines: Sequence[str]) -> None:
        self.pipelines[row.job_id] = list(pipelines)

    def record(
        self,
        row: JobRow,
        payload: EventPayload,
        *,
        at: datetime | None = None,
        job_state: JobState | None = None,
    ) -> None:
        # What the repository stores must read back as the same payload.
        stored = json.loads(json.dumps(event_payloads.encode(payload)))
        assert event_payloads.decode(payload.kind, stored) == payload
        row.last_sequence = (row.last_sequence or 0) + 1
        self.events.append(
            StoredEvent(
                job_id=row.job_id,
                sequence=row.last_sequence,
                created_at=at or self.clock(),
                job_state=job_state or JobState(row.state),
                attempt=row.attempt,
                payload=payload,
            )
        )

    def open_attempt(self, row: JobRow, worker_id: str, at: datetime) -> None:
        key = (row.job_id, row.attempt)
        assert key not in self.attempts, f"attempt {key} opened twice"
        self.attempts[key] = AttemptRecord(worker_id, at)

    async def close_attempt(
        self, row: JobRow, outcome: AttemptOutcome, error: JobError | None = None
    ) -> None:
        attempt = self.attempts.get((row.job_id, row.attempt))
        if attempt is None or attempt.outcome is not AttemptOutcome.RUNNING:
            return
        attempt.outcome = outcome
        attempt.ended_at = self.clock()
        attempt.error = error

    def set_artifacts(self, row: JobRow, artifacts: Sequence[Artifact]) -> None:
        self.artifacts[row.job_id] = list(artifacts)

    def notify(self, notice: Notice) -> None:
        # Metrics notices are checked on their own (test_metrics_notices).
        if isinstance(notice, AttemptStarted | LeaseExpired):
            self.metric_notices.append(notice)
        else:
            self.notices.append(notice)

    # -- test helpers -------------------------------------------------------

    def events_of(self, job_id: str) -> list[StoredEvent]:
        return [e for e in self.events if e.job_id == job_id]

    def snapshot(self) -> tuple:
        return copy.deepcopy(
            (sorted(self.rows), self.pipelines, self.events, self.attempts, self.artifacts)
        ) + (list(self.notices),)


def row_values(row: JobRow) -> dict[str, object]:
    """Every column of `row` (deep copies, to compare before and after)."""
    return {a.key: copy.deepcopy(getattr(row, a.key)) for a in JobRow.__mapper__.column_attrs}


def new_row(**overrides: object) -> JobRow:
    values: dict[str, object] = dict(
        job_id=JOB_ID,
        tenant="default",
        request_id=None,
        pipeline="ocr",
        parameters={},
        state=JobState.QUEUED.value,
        attempt=1,
        max_attempts=3,
        file_name="in.mp4",
        input_key=f"jobs/{JOB_ID}/input/source.mp4",
        input_size_bytes=1000,
        input_sha256="0" * 64,
        input_format="mp4",
        output_key=None,
        summary=None,
        warnings=[],
        progress_fraction=0.0,
        progress_stage="",
        error_code=None,
        error_message=None,
        error_reason=None,
        error_metadata=None,
        worker_id=None,
        lease_token=None,
        lease_session=None,
        lease_expires_at=None,
        last_sequence=0,
        priority=0,
        dispatch_rank=0.0,
        available_at=None,
        execution_timeout_seconds=600.0,
        execution_deadline_at=None,
        queue_timeout_seconds=120.0,
        queue_deadline_at=None,
        failed_attempts=0,
        lease_losses=0,
        partial_result_bytes=0,
        created_at=T0,
        started_at=None,
        ended_at=None,
        updated_at=T0,
    )
    values.update(overrides)
    return JobRow(**values)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fixed = Clock(T0)
    monkeypatch.setattr(lifecycle, "utc_now", fixed)
    return fixed


@pytest.fixture
def store(clock: Clock) -> FakeJobStore:
    return FakeJobStore(clock)


def do_assign(store: FakeJobStore, row: JobRow, worker: str = "w-1") -> None:
    lifecycle.assign(
        store,
        row,
        worker_id=worker,
        session_id=f"session-{worker}-{row.attempt}",
        lease_token=f"token-{worker}-{row.attempt}",
        lease_expires_at=store.clock() + timedelta(seconds=30),
        now=store.clock(),
    )


async def job_in(store: FakeJobStore, state: JobState, **overrides: object) -> JobRow:
    """A job brought to `state` through the lifecycle itself."""
    row = new_row(**overrides)
    await lifecycle.accept(store, row, ["ocr", "scenes"])
    if state is JobState.CANCELLED:
        await lifecycle.cancel(store, row, "setup")
    elif state is JobState.FAILED:
        lifecycle.fail(store, row, ERROR)
    elif state in (JobState.RUNNING, JobState.SUCCEEDED):
        do_assign(store, row)
        if state is JobState.SUCCEEDED:
            await lifecycle.complete(
                store, row, output_key=OUTPUT_KEY, artifacts=(), summary={}, warnings=()
            )
    assert row.state == state.value
    return row


# -- the table ----------------------------------------------------------------

Op = Callable[[FakeJobStore, JobRow], Awaitable[object]]
# What an operation announces, from the row after it and the lease token before it.
NoticesFor = Callable[[JobRow, str | None], list[Notice]]


def _none(row: JobRow, token: str | None) -> list[Notice]:
    return []


def _lease_granted(row: JobRow, token: str | None) -> list[Notice]:
    # The reaper hears the new lease's earliest deadline with it.
    return [LeaseGranted(min(row.lease_expires_at, row.execution_deadline_at))]


def queued_notice(row: JobRow) -> JobsQueued:
    """The JobsQueued a row now QUEUED announces: its backoff end and queue deadline."""
    return JobsQueued(row.available_at, row.queue_deadline_at)


def _queued(row: JobRow, token: str | None) -> list[Notice]:
    return [queued_notice(row)]


def _stop(reason: StopReason, *, queued: bool) -> NoticesFor:
    def notices(row: JobRow, token: str | None) -> list[Notice]:
        assert token is not None
        return ([queued_notice(row)] if queued else []) + [StopLease(row.job_id, token, reason)]

    return notices


@dataclass(frozen=True)
class Allowed:
    """What an allowed operation leaves."""

    to_state: JobState
    payload: type | None  # the type of the one event recorded; None: no event
    closes: AttemptOutcome | None = None  # how the current attempt record ends
    opens: bool = False  # whether a new attempt record is opened
    attempt_delta: int = 0
    notices: NoticesFor = _none


@dataclass(frozen=True)
class Operation:
    name: str
    run: Op
    allowed: dict[JobState, Allowed]
    refusal: type[Exception]


async def _assign(store: FakeJobStore, row: JobRow) -> None:
    do_assign(store, row, "w-2")


async def _adopt(store: FakeJobStore, row: JobRow) -> None:
    lifecycle.adopt(
        row, worker_id="w-1", session_id="session-new", lease_expires_at=T0 + timedelta(hours=1)
    )


async def _progress(store: FakeJobStore, row: JobRow) -> bool:
    return lifecycle.record_progress(store, row, 0.25, "ocr")


async def _partial(store: FakeJobStore, row: JobRow) -> None:
    lifecycle.record_partial_result(store, row, "ocr", {"text": "hello"}, 17)


async def _complete(store: FakeJobStore, row: JobRow) -> None:
    await lifecycle.complete(
        store,
        row,
        output_key=OUTPUT_KEY,
        artifacts=ARTIFACTS,
        summary={"frames": 50},
        warnings=["low light"],
    )


async def _fail_retryable(store: FakeJobStore, row: JobRow) -> bool:
    return await lifecycle.fail_attempt(
        store, row, ERROR, retryable=True, policy=POLICY, jitter=0.0
    )


async def _fail_final(store: FakeJobStore, row: JobRow) -> bool:
    return await lifecycle.fail_attempt(store, row, ERROR, retryable=False, policy=POLICY)


async def _lose(store: FakeJobStore, row: JobRow) -> None:
    await lifecycle.lose_attempt(store, row, "stream closed", policy=POLICY)


async def _hand_back(store: FakeJobStore, row: JobRow) -> None:
    await lifecycle.hand_back(store, row, "w-1", POLICY)


async def _expire(store: FakeJobStore, row: JobRow) -> None:
    await lifecycle.expire_lease(store, row, POLICY)


async def _time_out(store: FakeJobStore, row: JobRow) -> None:
    await lifecycle.time_out_attempt(store, row, POLICY)


async def _time_out_in_queue(store: FakeJobStore, row: JobRow) -> None:
    lifecycle.time_out_in_queue(store, row)


async def _cancel(store: FakeJobStore, row: JobRow) -> None:
    await lifecycle.cancel(store, row, "client asked")


async def _fail(store: FakeJobStore, row: JobRow) -> None:
    lifecycle.fail(store, row, ERROR)


Q, R = JobState.QUEUED, JobState.RUNNING
S, F, C = JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED
REQUEUE = dict(to_state=Q, payload=StateChanged, attempt_delta=1, notices=_queued)

OPERATIONS = [
    Operation(
        "assign",
        _assign,
        {Q: Allowed(R, StateChanged, opens=True, notices=_lease_granted)},
        IllegalTransition,
    ),
    Operation("adopt", _adopt, {R: Allowed(R, None)}, IllegalState),
    Operation("record_progress", _progress, {R: Allowed(R, Progress)}, IllegalState),
    Operation("record_partial_result", _partial, {R: Allowed(R, PartialResult)}, IllegalState),
    Operation(
        "complete", _complete, {R: Allowed(S, Completed, AttemptOutcome.SUCCEEDED)}, IllegalState
    ),
    Operation(
        "fail_attempt_retryable",
        _fail_retryable,
        {R: Allowed(closes=AttemptOutcome.RETRIED, **REQUEUE)},
        IllegalState,
    ),
    Operation(
        "fail_attempt_final",
        _fail_final,
        {R: Allowed(F, Failed, AttemptOutcome.FAILED)},
        IllegalState,
    ),
    Operation(
        "lose_attempt",
        _lose,
        {R: Allowed(closes=AttemptOutcome.LEASE_LOST, **REQUEUE)},
        IllegalState,
    ),
    Operation(
        "hand_back",
        _hand_back,
        {R: Allowed(closes=AttemptOutcome.HANDED_BACK, **REQUEUE)},
        IllegalState,
    ),
    Operation(
        "expire_lease",
        _expire,
        {
            R: Allowed(
                closes=AttemptOutcome.LEASE_LOST,
                **{**REQUEUE, "notices": _stop(StopReason.LEASE_EXPIRED, queued=True)},
            )
        },
        IllegalState,
    ),
    Operation(
        "time_out_attempt",
        _time_out,
        {
            R: Allowed(
                closes=AttemptOutcome.TIMED_OUT,
                **{**REQUEUE, "notices": _stop(StopReason.TIMED_OUT, queued=True)},
            )
        },
        IllegalState,
    ),
    Operation("time_out_in_queue", _time_out_in_queue, {Q: Allowed(F, Failed)}, IllegalState),
    Operation(
        "cancel",
        _cancel,
        {
            Q: Allowed(C, Cancelled),
            R: Allowed(
                C,
                Cancelled,
                AttemptOutcome.CANCELLED,
                notices=_stop(StopReason.CANCELLED, queued=False),
            ),
        },
        IllegalTransition,
    ),
    Operation("fail", _fail, {Q: Allowed(F, Failed), R: Allowed(F, Failed)}, IllegalTransition),
]

CASES = [
    pytest.param(op, state, id=f"{op.name}-{state.value}")
    for op in OPERATIONS
    for state in JobState
]


def observed_transition(from_state: JobState, event: StoredEvent) -> tuple[JobState, JobState]:
    """The (from, to) pair an event reports."""
    if isinstance(event.payload, StateChanged):
        assert event.payload.from_state is not None
        return event.payload.from_state, event.payload.to_state
    return from_state, event.job_state


async def run_allowed(
    store: FakeJobStore, op: Operation, from_state: JobState
) -> tuple[JobRow, list[StoredEvent]]:
    """Runs `op` on a job in `from_state` and checks everything it leaves."""
    expected = op.allowed[from_state]
    row = await job_in(store, from_state)
    store.clock.advance(5)
    before = row_values(row)
    events_before = len(store.events)
    attempts_before = copy.deepcopy(store.attempts)
    notices_before = len(store.notices)

    await op.run(store, row)

    assert row.state == expected.to_state.value
    assert row.attempt == before["attempt"] + expected.attempt_delta
    new_events = store.events[events_before:]
    if expected.payload is None:
        assert new_events == []
        assert row.last_sequence == before["last_sequence"]
    else:
        assert len(new_events) == 1
        (event,) = new_events
        assert type(event.payload) is expected.payload
        assert event.sequence == before["last_sequence"] + 1 == row.last_sequence
        assert event.job_state is expected.to_state
        assert event.attempt == row.attempt
        assert event.created_at == store.clock()
        if expected.payload is StateChanged or expected.to_state.is_terminal:
            assert observed_transition(from_state, event) == (from_state, expected.to_state)
    if expected.to_state.is_terminal:
        assert row.ended_at == store.clock()
        assert row.lease_token is None and row.lease_session is None
        assert row.lease_expires_at is None and row.execution_deadline_at is None
    if expected.to_state is Q:
        assert row.worker_id is None and row.lease_token is None and row.lease_session is None

    # Attempt records: the current one closed and/or a new one opened, nothing else.
    old_key = (row.job_id, before["attempt"])
    expected_attempts = copy.deepcopy(attempts_before)
    if expected.closes is not None:
        closed = store.attempts[old_key]
        assert closed.outcome is expected.closes
        assert closed.ended_at == store.clock()
        expected_attempts[old_key] = closed
    if expected.opens:
        opened = store.attempts[(row.job_id, row.attempt)]
        assert opened == AttemptRecord(row.worker_id, store.clock())
        expected_attempts[(row.job_id, row.attempt)] = opened
    assert store.attempts == expected_attempts

    assert store.notices[notices_before:] == expected.notices(row, before["lease_token"])
    return row, new_events


@pytest.mark.parametrize(("op", "from_state"), CASES)
async def test_operation_from_state(
    store: FakeJobStore, op: Operation, from_state: JobState
) -> None:
    """Each operation either makes its transition, with its event, attempt
    records and notices, or is refused and changes nothing at all."""
    if from_state in op.allowed:
        await run_allowed(store, op, from_state)
        return
    row = await job_in(store, from_state)
    before = row_values(row)
    stored = store.snapshot()
    with pytest.raises(op.refusal):
        await op.run(store, row)
    assert row_values(row) == before
    assert store.snapshot() == stored


async def test_every_allowed_transition_is_made_by_some_operation(store: FakeJobStore) -> None:
    """The (from, to) pairs the events of all allowed operations report are
    exactly the state machine's allowed transitions: no transition lacks an
    operation, and no operation makes one the state machine forbids."""
    observed: set[tuple[JobState, JobState]] = set()
    for op in OPERATIONS:
        for from_state in op.allowed:
            fresh = FakeJobStore(store.clock)
            _, events = await run_allowed(fresh, op, from_state)
            for event in events:
                if isinstance(event.payload, Progress | PartialResult):
                    continue
                observed.add(observed_transition(from_state, event))
    allowed = {(f, t) for f, targets in ALLOWED_TRANSITIONS.items() for t in targets}
    assert observed == allowed


async def test_refusals_cover_terminal_states_and_misplaced_operations(
    store: FakeJobStore,
) -> None:
    """Spot checks of the table: nothing is allowed from a terminal state,
    assign needs QUEUED, complete needs RUNNING, time_out_in_queue needs QUEUED."""
    by_name = {op.name: op for op in OPERATIONS}
    for op in OPERATIONS:
        assert not any(state.is_terminal for state in op.allowed), op.name
    assert set(by_name["assign"].allowed) == {Q}
    assert set(by_name["complete"].allowed) == {R}
    assert set(by_name["time_out_in_queue"].allowed) == {Q}
    assert set(by_name["cancel"].allowed) == {Q, R}


# -- accepting ----------------------------------------------------------------


async def test_accept_inserts_the_job_with_its_first_event(store: FakeJobStore) -> None:
    row = new_row(last_sequence=7)
    await lifecycle.accept(store, row, ["ocr", "scenes"])
    assert store.rows == {JOB_ID: row}
    assert store.pipelines == {JOB_ID: ["ocr", "scenes"]}
    assert row.last_sequence == 1
    (event,) = store.events
    assert event.sequence == 1
    assert event.payload == StateChanged(None, JobState.QUEUED, "accepted")
    assert event.job_state is JobState.QUEUED
    assert store.notices == [queued_notice(row)]
    assert store.attempts == {}


async def test_accept_refuses_a_job_that_is_not_queued(store: FakeJobStore) -> None:
    row = new_row(state=JobState.RUNNING.value)
    with pytest.raises(ValueError, match="QUEUED"):
        await lifecycle.accept(store, row, ["ocr"])
    assert store.rows == {} and store.events == [] and store.notices == []


# -- retries ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "failures_before", "expected_delay"),
    [
        (RetryPolicy(backoff_base=2.0, backoff_max=60.0), 0, 1.0),  # min(60, 2*1)/2
        (RetryPolicy(backoff_base=2.0, backoff_max=60.0), 1, 2.0),  # min(60, 2*2)/2
        (RetryPolicy(backoff_base=2.0, backoff_max=60.0), 3, 8.0),  # min(60, 2*8)/2
        (RetryPolicy(backoff_base=10.0, backoff_max=15.0), 2, 7.5),  # capped: min(15, 40)/2
    ],
)
async def test_retryable_failure_with_attempts_left_requeues_after_the_backoff(
    store: FakeJobStore,
    clock: Clock,
    policy: RetryPolicy,
    failures_before: int,
    expected_delay: float,
) -> None:
    row = await job_in(store, JobState.RUNNING, max_attempts=10, failed_attempts=failures_before)
    clock.advance(42)

    retried = await lifecycle.fail_attempt(
        store, row, ERROR, retryable=True, policy=policy, jitter=0.0
    )

    assert retried is True
    assert row.state == JobState.QUEUED.value
    assert row.attempt == 2
    assert row.failed_attempts == failures_before + 1
    assert row.available_at == clock() + timedelta(seconds=expected_delay)
    assert row.progress_stage == "waiting to retry" and row.progress_fraction == 0.0
    assert row.worker_id is None and row.lease_token is None and row.lease_session is None
    assert row.lease_expires_at is None and row.execution_deadline_at is None
    assert row.started_at is None and row.ended_at is None
    assert row.error_code is None  # a retried failure is not the job's error
    attempt = store.attempts[(JOB_ID, 1)]
    assert (attempt.outcome, attempt.error) == (AttemptOutcome.RETRIED, ERROR)
    event = store.events[-1]
    assert event.payload.from_state is JobState.RUNNING
    assert event.payload.to_state is JobState.QUEUED
    assert ERROR.message in event.payload.reason
    assert store.notices[-1] == queued_notice(row)


async def test_the_retried_job_gets_a_new_attempt_record(store: FakeJobStore) -> None:
    row = await job_in(store, JobState.RUNNING)
    await lifecycle.fail_attempt(store, row, ERROR, retryable=True, policy=POLICY, jitter=0.0)
    do_assign(store, row, "w-2")
    assert store.attempts[(JOB_ID, 1)].outcome is AttemptOutcome.RETRIED
    assert store.attempts[(JOB_ID, 2)] == AttemptRecord("w-2", T0)
    assert row.available_at is None


async def test_retryable_failure_of_the_last_attempt_fails_the_job(store: FakeJobStore) -> None:
    row = await job_in(store, JobState.RUNNING, max_attempts=3, failed_attempts=2)
    notices_before = list(store.notices)

    retried = await lifecycle.fail_attempt(
        store, row, ERROR, retryable=True, policy=POLICY, jitter=0.0
    )

    assert retried is False
    assert row.state == JobState.FAILED.value
    assert row.attempt == 1 and row.failed_attempts == 3
    assert (row.error_code, row.error_message, row.error_reason, row.error_metadata) == (
        "INTERNAL",
        "decoder crashed",
        "PIPELINE_FAILED",
        {"frame": "12"},
    )
    assert store.attempts[(JOB_ID, 1)].outcome is AttemptOutcome.FAILED
    assert store.events[-1].payload == Failed(ERROR)
    assert store.notices == notices_before  # no JobsQueued


async def test_every_attempt_is_used_before_the_job_fails(store: FakeJobStore) -> None:
    row = await job_in(store, JobState.RUNNING, max_attempts=3)
    results = [
        await lifecycle.fail_attempt(store, row, ERROR, retryable=True, policy=POLICY, jitter=0.0)
    ]
    for _ in range(2):
        do_assign(store, row)
        results.append(
            await lifecycle.fail_attempt(
                store, row, ERROR, retryable=True, policy=POLICY, jitter=0.0
            )
        )
    assert results == [True, True, False]
    assert row.state == JobState.FAILED.value and row.attempt == 3
    assert [store.attempts[(JOB_ID, n)].outcome for n in (1, 2, 3)] == [
        AttemptOutcome.RETRIED,
        AttemptOutcome.RETRIED,
        AttemptOutcome.FAILED,
    ]


async def test_non_retryable_failure_fails_at_once(store: FakeJobStore) -> None:
    row = await job_in(store, JobState.RUNNING, max_attempts=5)
    retried = await lifecycle.fail_attempt(store, row, ERROR, retryable=False, policy=POLICY)
    assert retried is False
    assert row.state == JobState.FAILED.value
    assert row.error_code == "INTERNAL" and row.error_reason == "PIPELINE_FAILED"
    assert store.attempts[(JOB_ID, 1)].outcome is AttemptOutcome.FAILED
    assert store.events[-1].payload == Failed(ERROR)
    assert row.available_at is None


async def test_time_out_attempt_is_a_retryable_timed_out_failure(
    store: FakeJobStore, clock: Clock
) -> None:
    row = await job_in(store, JobState.RUNNING)
    token = row.lease_token
    await lifecycle.time_out_attempt(store, row, POLICY)

    assert row.state == JobState.QUEUED.value and row.attempt == 2 and row.failed_attempts == 1
    # Jitter is random here: of min(60, 2 * 2**0) = 2 s, half fixed, half jittered.
    assert clock() + timedelta(seconds=1) <= row.available_at < clock() + timedelta(seconds=2)
    attempt = store.attempts[(JOB_ID, 1)]
    assert attempt.outcome is AttemptOutcome.TIMED_OUT
    assert attempt.error is not None
    assert (attempt.error.code, attempt.error.reason) == ("DEADLINE_EXCEEDED", "EXECUTION_TIMEOUT")
    assert store.notices[-2:] == [
        queued_notice(row),
        StopLease(JOB_ID, token, StopReason.TIMED_OUT),
    ]


async def test_time_out_of_the_last_attempt_fails_the_job_timed_out(store: FakeJobStore) -> None:
    row = await job_in(store, JobState.RUNNING, max_attempts=1)
    token = row.lease_token
    await lifecycle.time_out_attempt(store, row, POLICY)

    assert row.state == JobState.FAILED.value
    assert (row.error_code, row.error_reason) == ("DEADLINE_EXCEEDED", "EXECUTION_TIMEOUT")
    assert "600s" in row.error_message
    assert store.attempts[(JOB_ID, 1)].outcome is AttemptOutcome.TIMED_OUT
    assert isinstance(store.events[-1].payload, Failed)
    assert store.notices[-1] == StopLease(JOB_ID, token, StopReason.TIMED_OUT)
    assert not any(isinstance(n, JobsQueued) for n in store.notices[1:])


async def test_time_out_in_queue_fails_with_the_queue_timeout(store: FakeJobStore) -> None:
    row = await job_in(store, JobState.QUEUED, queue_timeout_seconds=90.0)
    lifecycle.time_out_in_queue(store, row)
    assert row.state == JobState.FAILED.value
    assert (row.error_code, row.error_reason) == ("DEADLINE_EXCEEDED", "QUEUE_TIMEOUT")
    assert "90s" in row.error_message
    assert store.attempts == {}


# -- lost attempts ------------------------------------------------------------


async def test_lose_attempt_requeues_at_once_and_counts_the_loss(store: FakeJobStore) -> None:
    row = await job_in(store, JobState.RUNNING)
    await lifecycle.lose_attempt(store, row, "worker vanished", policy=POLICY)

    assert row.state == JobState.QUEUED.value
    assert row.attempt == 2 and row.lease_losses == 1 and row.failed_attempts == 0
    assert row.available_at is None and row.progress_stage == "queued"
    attempt = store.attempts[(JOB_ID, 1)]
    assert attempt.outcome is AttemptOutcome.LEASE_LOST
    assert attempt.error == JobError("UNAVAILABLE", "worker vanished", "WORKER_LOST")
    assert store.events[-1].payload == StateChanged(
        JobState.RUNNING, JobState.QUEUED, "worker vanished"
    )
    assert store.notices[-1] == queued_notice(row)


async def test_losing_more_leases_than_the_policy_allows_aborts_the_job(
    store: FakeJobStore,
) -> None:
    policy = RetryPolicy(max_lease_losses=2)
    row = await job_in(store, JobState.RUNNING)
    for expected_losses in (1, 2):
        await lifecycle.lose_attempt(store, row, "gone", policy=policy)
        assert row.state == JobState.QUEUED.value
        assert row.lease_losses == expected_losses
        do_assign(store, row)

    await lifecycle.lose_attempt(store, row, "gone", policy=policy)

    assert row.state == JobState.FAILED.value
    assert row.lease_losses == 3 and row.attempt == 3
    assert (row.error_code, row.error_reason) == ("ABORTED", "TOO_MANY_LOST_LEASES")
    assert store.attempts[(JOB_ID, 3)].outcome is AttemptOutcome.LEASE_LOST
    failed = store.events[-1].payload
    assert isinstance(failed, Failed) and failed.error.reason == "TOO_MANY_LOST_LEASES"


async def test_hand_back_is_not_a_lost_lease(store: FakeJobStore) -> None:
    policy = RetryPolicy(max_lease_losses=0)
    row = await job_in(store, JobState.RUNNING)
    await lifecycle.hand_back(store, row, "w-1", policy)

    assert row.state == JobState.QUEUED.value
    assert row.attempt == 2 and row.lease_losses == 0
    assert store.attempts[(JOB_ID, 1)].outcome is AttemptOutcome.HANDED_BACK
    assert "w-1" in store.events[-1].payload.reason
    assert store.notices[-1] == queued_notice(row)


async def test_expire_lease_tells_the_holder_to_stop(store: FakeJobStore) -> None:
    row = await job_in(store, JobState.RUNNING)
    token = row.lease_token
    await lifecycle.expire_lease(store, row, POLICY)
    assert row.state == JobState.QUEUED.value and row.lease_losses == 1
    assert store.attempts[(JOB_ID, 1)].outcome is AttemptOutcome.LEASE_LOST
    assert store.notices[-2:] == [
        queued_notice(row),
        StopLease(JOB_ID, token, StopReason.LEASE_EXPIRED),
    ]


# -- progress -----------------------------------------------------------------


async def test_progress_never_goes_backwards_and_reports_only_changes(
    store: FakeJobStore,
) -> None:
    row = await job_in(store, JobState.RUNNING)
    count = len(store.events)

    def progress(fraction: float, stage: str) -> bool:
        return lifecycle.record_progress(store, row, fraction, stage)

    assert progress(0.0, "assigned") is False  # what assign already set
    assert progress(0.5, "decoding") is True
    assert progress(0.5, "decoding") is False
    assert progress(0.3, "decoding") is False  # backwards: ignored
    assert (row.progress_fraction, row.progress_stage) == (0.5, "decoding")
    assert progress(0.2, "ocr") is True  # a new stage, the fraction kept
    assert progress(1.7, "ocr") is True  # capped at 1
    assert progress(1.0, "ocr") is False
    assert [e.payload for e in store.events[count:]] == [
        Progress(0.5, "decoding"),
        Progress(0.5, "ocr"),
        Progress(1.0, "ocr"),
    ]
    assert (row.progress_fraction, row.progress_stage) == (1.0, "ocr")


async def test_partial_results_count_their_bytes(store: FakeJobStore) -> None:
    row = await job_in(store, JobState.RUNNING)
    lifecycle.record_partial_result(store, row, "ocr", {"text": "a"}, 100)
    lifecycle.record_partial_result(store, row, "scenes", {"cut": 1.5}, 50)
    assert row.partial_result_bytes == 150
    assert [e.payload for e in store.events[-2:]] == [
        PartialResult("ocr", {"text": "a"}),
        PartialResult("scenes", {"cut": 1.5}),
    ]


# -- completing ---------------------------------------------------------------


async def test_complete_records_the_result(store: FakeJobStore, clock: Clock) -> None:
    row = await job_in(store, JobState.RUNNING)
    clock.advance(60)
    await _complete(store, row)

    assert row.state == JobState.SUCCEEDED.value
    assert row.output_key == OUTPUT_KEY.value
    assert row.summary == {"frames": 50}
    assert row.warnings == ["low light"]
    assert (row.progress_fraction, row.progress_stage) == (1.0, "done")
    assert row.ended_at == clock()
    assert row.lease_token is None and row.lease_session is None
    assert row.lease_expires_at is None and row.execution_deadline_at is None
    assert row.error_code is None
    assert store.artifacts == {JOB_ID: list(ARTIFACTS)}
    attempt = store.attempts[(JOB_ID, 1)]
    assert (attempt.outcome, attempt.ended_at, attempt.error) == (
        AttemptOutcome.SUCCEEDED,
        clock(),
        None,
    )
    event = store.events[-1]
    assert event.payload == Completed(OUTPUT_KEY, ARTIFACTS, {"frames": 50}, ("low light",))
    assert event.job_state is JobState.SUCCEEDED


async def test_cancel_of_a_queued_job_sends_no_stop(store: FakeJobStore) -> None:
    row = await job_in(store, JobState.QUEUED)
    await lifecycle.cancel(store, row, "client asked")
    assert row.state == JobState.CANCELLED.value
    assert (row.error_code, row.error_message, row.error_reason) == (
        "CANCELLED",
        "client asked",
        "JOB_CANCELLED",
    )
    assert store.notices == [queued_notice(row)]  # only accept's
    assert store.events[-1].payload == Cancelled("client asked")


# -- importing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "final"),
    [
        (Completed(OUTPUT_KEY, (), {"frames": 3}, ()), JobState.SUCCEEDED),
        (Failed(ERROR), JobState.FAILED),
        (Cancelled("operator"), JobState.CANCELLED),
    ],
    ids=["completed", "failed", "cancelled"],
)
async def test_import_ended_inserts_a_terminal_job_with_its_history(
    store: FakeJobStore, outcome: EventPayload, final: JobState
) -> None:
    accepted_at = datetime(2020, 5, 1, 12, 0, tzinfo=UTC)
    ended_at = accepted_at + timedelta(minutes=7)
    row = new_row(last_sequence=4)

    await lifecycle.import_ended(
        store,
        row,
        ["ocr"],
        outcome,
        system="oldvideo",
        accepted_at=accepted_at,
        ended_at=ended_at,
    )

    assert store.rows == {JOB_ID: row}
    assert store.pipelines == {JOB_ID: ["ocr"]}
    assert row.state == final.value
    assert row.last_sequence == 2
    first, second = store.events
    assert (first.sequence, first.created_at, first.job_state) == (1, accepted_at, JobState.QUEUED)
    assert first.payload == StateChanged(None, JobState.QUEUED, "imported from oldvideo")
    assert (second.sequence, second.created_at, second.job_state) == (2, ended_at, final)
    assert second.payload == outcome
    assert store.notices == []  # never queued live
    assert store.attempts == {}
    if final is JobState.SUCCEEDED:
        assert row.output_key == OUTPUT_KEY.value and row.error_code is None
    elif final is JobState.FAILED:
        assert (row.error_code, row.error_reason, row.error_metadata) == (
            "INTERNAL",
            "PIPELINE_FAILED",
            {"frame": "12"},
        )
    else:
        assert (row.error_code, row.error_message) == ("CANCELLED", "operator")


# -- adopting -----------------------------------------------------------------


async def test_adopt_moves_the_lease_to_the_new_session_without_an_event(
    store: FakeJobStore,
) -> None:
    row = await job_in(store, JobState.RUNNING)
    token = row.lease_token
    stored = store.snapshot()
    later = T0 + timedelta(minutes=5)

    lifecycle.adopt(row, worker_id="w-1b", session_id="session-b", lease_expires_at=later)

    assert (row.worker_id, row.lease_session, row.lease_expires_at) == (
        "w-1b",
        "session-b",
        later,
    )
    assert row.lease_token == token and row.state == JobState.RUNNING.value
    assert store.snapshot() == stored


# -- metrics notices ----------------------------------------------------------


async def test_metrics_notices_time_the_queue_and_the_dispatch(
    store: FakeJobStore, clock: Clock
) -> None:
    row = await job_in(store, JobState.QUEUED)
    clock.advance(5)
    do_assign(store, row)
    first = AttemptStarted(JOB_ID, 1, "ocr", dispatch_seconds=5.0, queue_wait_seconds=5.0)
    assert store.metric_notices == [first]

    # Its lease expires 40 s later: requeued at once, assigned again 3 s later.
    clock.advance(40)
    await lifecycle.expire_lease(store, row, POLICY)
    assert store.metric_notices[1] == LeaseExpired(JOB_ID, 1)
    assert row.state == JobState.QUEUED.value
    clock.advance(3)
    do_assign(store, row)
    # Dispatch latency counts from the requeue; no queue wait after the first attempt.
    assert store.metric_notices[2] == AttemptStarted(
        JOB_ID, 2, "ocr", dispatch_seconds=3.0, queue_wait_seconds=None
    )


async def test_dispatch_latency_of_a_retry_counts_from_the_end_of_its_backoff(
    store: FakeJobStore, clock: Clock
) -> None:
    row = await job_in(store, JobState.QUEUED)
    clock.advance(2)
    row.available_at = clock() + timedelta(seconds=10)  # backing off until then
    clock.advance(10 + 4)
    do_assign(store, row)
    assert store.metric_notices[-1].dispatch_seconds == 4.0
