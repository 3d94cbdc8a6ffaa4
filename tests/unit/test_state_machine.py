"""The job state machine and job id checks (`videojobs.jobservice.domain`)."""

from __future__ import annotations

import itertools

import pytest

from videojobs.common.errors import ServiceError
from videojobs.jobservice.domain import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    EventKind,
    IllegalTransition,
    JobState,
    check_job_id,
    check_transition,
    new_job_id,
)

# The design's state machine, written out independently of ALLOWED_TRANSITIONS.
EXPECTED_ALLOWED = {
    ("QUEUED", "RUNNING"),
    ("QUEUED", "CANCELLED"),
    ("QUEUED", "FAILED"),
    ("RUNNING", "SUCCEEDED"),
    ("RUNNING", "FAILED"),
    ("RUNNING", "CANCELLED"),
    ("RUNNING", "QUEUED"),  # lost lease or retryable failure, with attempt + 1
}

ALL_PAIRS = list(itertools.product(JobState, repeat=2))


def test_states_are_the_five_stored_values() -> None:
    """The states (stored in the database by value) are exactly the five of the
    design, so the 25 pairs below are every possible transition."""
    assert {s.value for s in JobState} == {"QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"}
    assert len(ALL_PAIRS) == 25


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=lambda s: str(s))
def test_transition(current: JobState, target: JobState) -> None:
    """Allowed pairs pass check_transition; every other pair (self-loops included)
    raises IllegalTransition naming both states."""
    if (current.value, target.value) in EXPECTED_ALLOWED:
        check_transition(current, target)
        assert target in ALLOWED_TRANSITIONS[current]
    else:
        with pytest.raises(IllegalTransition) as caught:
            check_transition(current, target)
        assert current.value in str(caught.value)
        assert target.value in str(caught.value)


def test_terminal_states_have_no_exits() -> None:
    """SUCCEEDED, FAILED and CANCELLED are terminal, have no allowed exit and
    every transition out of them is refused."""
    assert {s.value for s in TERMINAL_STATES} == {"SUCCEEDED", "FAILED", "CANCELLED"}
    for state in JobState:
        assert state.is_terminal == (state.value in {"SUCCEEDED", "FAILED", "CANCELLED"})
    for state in TERMINAL_STATES:
        assert ALLOWED_TRANSITIONS[state] == frozenset()
        for target in JobState:
            with pytest.raises(IllegalTransition):
                check_transition(state, target)


def test_every_terminal_state_is_reachable() -> None:
    """Each terminal state can be reached from QUEUED by allowed steps."""
    reachable = {JobState.QUEUED}
    frontier = [JobState.QUEUED]
    while frontier:
        state = frontier.pop()
        for target in ALLOWED_TRANSITIONS[state]:
            if target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(JobState)


def test_event_kind_terminality() -> None:
    """Only completed, failed and cancelled events end a stream."""
    terminal = {k for k in EventKind if k.is_terminal}
    assert {k.value for k in terminal} == {"completed", "failed", "cancelled"}


def test_check_job_id_accepts_32_lowercase_hex() -> None:
    """Well-formed ids are returned unchanged, including freshly made ones."""
    for job_id in ("0" * 32, "f" * 32, "0123456789abcdef" * 2, new_job_id(), new_job_id()):
        assert check_job_id(job_id) == job_id


BAD_JOB_IDS = [
    "",
    "0" * 31,
    "0" * 33,
    "A" * 32,
    "0123456789ABCDEF" * 2,
    "g" * 32,
    "0" * 31 + " ",
    " " + "0" * 31,
    "0" * 32 + "\n",
    "\n" + "0" * 32,
    "0" * 16 + "-" + "0" * 15,
    "12345678-1234-1234-1234-123456789abc",
    "../" + "0" * 29,
    "0" * 31 + "\u0660",  # ARABIC-INDIC DIGIT ZERO
    "0" * 31 + "\uff10",  # FULLWIDTH DIGIT ZERO
    None,
]


@pytest.mark.parametrize("job_id", BAD_JOB_IDS, ids=repr)
def test_check_job_id_rejects_malformed(job_id: str) -> None:
    """Anything but 32 lowercase hex characters is INVALID_ARGUMENT, with a field
    violation under the default field name `job_id`."""
    with pytest.raises(ServiceError) as caught:
        check_job_id(job_id)
    error = caught.value
    assert error.code == "INVALID_ARGUMENT"
    assert [f for f, _ in error.field_violations] == ["job_id"]
    assert all(description for _, description in error.field_violations)


def test_check_job_id_names_the_given_field() -> None:
    """The field violation names the field the caller says the id came from."""
    with pytest.raises(ServiceError) as caught:
        check_job_id("nope", field_name="jobs[3].job_id")
    assert caught.value.code == "INVALID_ARGUMENT"
    assert [f for f, _ in caught.value.field_violations] == ["jobs[3].job_id"]
