"""Terminal events, the reconnect backoff and the follow cursor."""

from __future__ import annotations

import grpc
import pytest

from videojobs.client import ReconnectBackoff, VideoJobsError, is_terminal_event, is_terminal_state
from videojobs.client.events import FollowCursor
from videojobs.v1 import job_pb2, job_service_pb2


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeCallError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"{self._code.name.lower()} for test"

    def trailing_metadata(self):
        return ()


def response(sequence: int, **payload) -> job_service_pb2.StreamResultsResponse:
    return job_service_pb2.StreamResultsResponse(
        event=job_pb2.JobEvent(job_id="j", sequence=sequence, **payload)
    )


TERMINAL_EVENTS = {
    "completed": job_pb2.JobEvent(completed=job_pb2.JobCompleted(output_key="k")),
    "failed": job_pb2.JobEvent(failed=job_pb2.JobFailed()),
    "cancelled": job_pb2.JobEvent(cancelled=job_pb2.JobCancelled()),
}
NON_TERMINAL_EVENTS = {
    "state_changed": job_pb2.JobEvent(
        state_changed=job_pb2.StateChanged(to_state=job_pb2.JOB_STATE_SUCCEEDED)
    ),
    "progress": job_pb2.JobEvent(progress=job_pb2.Progress(fraction=1.0)),
    "partial_result": job_pb2.JobEvent(partial_result=job_pb2.PartialResult()),
    "no payload": job_pb2.JobEvent(job_state=job_pb2.JOB_STATE_SUCCEEDED),
}


@pytest.mark.parametrize("name", TERMINAL_EVENTS)
def test_completed_failed_and_cancelled_events_are_terminal(name: str) -> None:
    assert is_terminal_event(TERMINAL_EVENTS[name])


@pytest.mark.parametrize("name", NON_TERMINAL_EVENTS)
def test_other_events_are_not_terminal_even_in_a_terminal_state(name: str) -> None:
    # Only the payload ends the stream; a state_changed to SUCCEEDED is not the end.
    assert not is_terminal_event(NON_TERMINAL_EVENTS[name])


def test_terminal_states() -> None:
    assert [state for state in job_pb2.JobState.values() if is_terminal_state(state)] == [
        job_pb2.JOB_STATE_SUCCEEDED,
        job_pb2.JOB_STATE_FAILED,
        job_pb2.JOB_STATE_CANCELLED,
    ]


def test_backoff_doubles_from_a_tenth_to_five_seconds_then_gives_up() -> None:
    clock = FakeClock()
    backoff = ReconnectBackoff(timeout=20.0, clock=clock)
    delays = []
    while (delay := backoff.next_delay()) is not None:
        delays.append(delay)
        clock.now += delay
    assert delays[:8] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    # The last pause is cut short so the final attempt is at the deadline.
    assert sum(delays) == pytest.approx(20.0)
    assert delays[-1] < 5.0


def test_backoff_reset_starts_a_new_window() -> None:
    clock = FakeClock()
    backoff = ReconnectBackoff(timeout=1.0, clock=clock)
    assert backoff.next_delay() == pytest.approx(0.1)
    clock.now += 2.0
    assert backoff.next_delay() is None
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)


def test_cursor_resumes_after_the_last_event_and_drops_repeats() -> None:
    cursor = FollowCursor("j", after_sequence=2)
    assert cursor.request().after_sequence == 2
    assert cursor.accept(response(3, progress=job_pb2.Progress())).sequence == 3
    assert cursor.accept(response(3, progress=job_pb2.Progress())) is None
    assert cursor.accept(response(1)) is None
    assert cursor.request() == job_service_pb2.StreamResultsRequest(job_id="j", after_sequence=3)
    assert not cursor.finished
    cursor.accept(response(4, cancelled=job_pb2.JobCancelled()))
    assert cursor.finished


def test_cursor_retries_unavailable_within_the_window() -> None:
    clock = FakeClock()
    cursor = FollowCursor("j", reconnect_timeout=1.0, clock=clock)
    cursor.request()
    unavailable = FakeCallError(grpc.StatusCode.UNAVAILABLE)
    assert cursor.delay_after_error(unavailable) == pytest.approx(0.1)
    clock.now += 0.5
    cursor.request()
    assert cursor.delay_after_error(unavailable) == pytest.approx(0.2)
    clock.now += 0.6
    cursor.request()
    with pytest.raises(VideoJobsError) as caught:
        cursor.delay_after_error(unavailable)
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE
    assert caught.value.__cause__ is unavailable


def test_cursor_event_resets_the_window() -> None:
    clock = FakeClock()
    cursor = FollowCursor("j", reconnect_timeout=1.0, clock=clock)
    unavailable = FakeCallError(grpc.StatusCode.UNAVAILABLE)
    cursor.request()
    cursor.delay_after_error(unavailable)
    clock.now += 0.9
    cursor.request()
    cursor.accept(response(1, progress=job_pb2.Progress()))
    clock.now += 0.9
    assert cursor.delay_after_error(unavailable) == pytest.approx(0.1)


def test_cursor_long_quiet_stream_counts_as_connected() -> None:
    clock = FakeClock()
    cursor = FollowCursor("j", reconnect_timeout=1.0, clock=clock)
    unavailable = FakeCallError(grpc.StatusCode.UNAVAILABLE)
    cursor.request()
    cursor.delay_after_error(unavailable)
    cursor.request()
    clock.now += 5.0  # open for longer than the window, no events: it was connected
    assert cursor.delay_after_error(unavailable) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.CANCELLED]
)
def test_cursor_does_not_retry_other_codes(code: grpc.StatusCode) -> None:
    cursor = FollowCursor("j")
    with pytest.raises(VideoJobsError) as caught:
        cursor.delay_after_error(FakeCallError(code))
    assert caught.value.code is code


def test_cursor_without_reconnect_raises_unavailable_and_stops_on_early_end() -> None:
    cursor = FollowCursor("j", reconnect=False)
    with pytest.raises(VideoJobsError):
        cursor.delay_after_error(FakeCallError(grpc.StatusCode.UNAVAILABLE))
    assert cursor.delay_after_early_end() is None


def test_cursor_early_end_retries_then_gives_up() -> None:
    clock = FakeClock()
    cursor = FollowCursor("j", reconnect_timeout=1.0, clock=clock)
    cursor.request()
    assert cursor.delay_after_early_end() == pytest.approx(0.1)
    clock.now += 1.0
    cursor.request()
    with pytest.raises(VideoJobsError, match="kept ending before the job finished"):
        cursor.delay_after_early_end()


def test_cursor_announces_each_reconnect_but_not_the_last_failure() -> None:
    clock = FakeClock()
    heard: list[tuple[str, float]] = []
    cursor = FollowCursor(
        "j", reconnect_timeout=1.0, clock=clock, on_reconnect=lambda *said: heard.append(said)
    )
    cursor.request()
    unavailable = FakeCallError(grpc.StatusCode.UNAVAILABLE)
    cursor.delay_after_error(unavailable)
    clock.now += 0.5
    cursor.request()
    assert cursor.delay_after_early_end() == pytest.approx(0.2)
    clock.now += 0.6
    cursor.request()
    with pytest.raises(VideoJobsError):
        cursor.delay_after_error(unavailable)
    assert heard == [
        ("UNAVAILABLE: unavailable for test", pytest.approx(0.1)),
        ("the event stream ended before the job did", pytest.approx(0.2)),
    ]
    # Errors that are never retried are not announced either.
    with pytest.raises(VideoJobsError):
        cursor.delay_after_error(FakeCallError(grpc.StatusCode.NOT_FOUND))
    assert len(heard) == 2


def test_the_final_job_is_asked_for_and_kept_from_the_terminal_response_only():
    cursor = FollowCursor("j" * 32, include_final_job=True)
    assert cursor.request().include_final_job
    assert not FollowCursor("j" * 32).request().include_final_job
    early = response(1, progress=job_pb2.Progress(fraction=0.5))
    early.final_job.job_id = "not the end"  # a server's mistake: ignored
    cursor.accept(early)
    assert cursor.final_job is None
    last = response(2, completed=job_pb2.JobCompleted())
    last.final_job.job_id = "j" * 32
    cursor.accept(last)
    assert cursor.finished and cursor.final_job.job_id == "j" * 32


def test_a_terminal_response_without_the_final_job_leaves_it_unset():
    # An older server ignores include_final_job: the client then asks GetStatus.
    cursor = FollowCursor("j" * 32, include_final_job=True)
    cursor.accept(response(1, failed=job_pb2.JobFailed()))
    assert cursor.finished and cursor.final_job is None
