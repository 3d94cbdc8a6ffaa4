"""Job events: which ones end a job, and the bookkeeping `follow` needs to
resume a broken StreamResults stream without losing or repeating events."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from videojobs.client.defaults import (
    RECONNECT_INITIAL_DELAY,
    RECONNECT_MAX_DELAY,
    RECONNECT_TIMEOUT,
)
from videojobs.client.errors import VideoJobsError
from videojobs.v1 import job_pb2, job_service_pb2

#: JobEvent payloads after which a job's stream ends.
TERMINAL_PAYLOADS = frozenset({"completed", "failed", "cancelled"})

#: Job states that never change again.
TERMINAL_STATES = frozenset(
    {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
)

#: Called with each event while following or waiting for a job.
EventCallback = Callable[[job_pb2.JobEvent], None]

#: Called before `follow` reconnects: why the stream broke (a short text) and
#: the seconds it waits before the next try.
ReconnectCallback = Callable[[str, float], None]


def is_terminal_event(event: job_pb2.JobEvent) -> bool:
    """Whether the event ends the job (payload `completed`, `failed` or `cancelled`)."""
    return event.WhichOneof("payload") in TERMINAL_PAYLOADS


def is_terminal_state(state: int) -> bool:
    """Whether a job in this state is done for good (SUCCEEDED, FAILED, CANCELLED)."""
    return state in TERMINAL_STATES


class ReconnectBackoff:
    """Delays between reconnect attempts: `initial_delay`, doubling up to
    `max_delay`, for at most `timeout` seconds from the first failure since the
    last `reset`. The last delay is shortened so the final attempt happens at
    the deadline, not after it."""

    def __init__(
        self,
        *,
        initial_delay: float = RECONNECT_INITIAL_DELAY,
        max_delay: float = RECONNECT_MAX_DELAY,
        timeout: float = RECONNECT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.initial_delay = initial_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self._clock = clock
        self._next_delay = initial_delay
        self._deadline: float | None = None

    def reset(self) -> None:
        """Forgets earlier failures: the next failure starts a fresh window."""
        self._next_delay = self.initial_delay
        self._deadline = None

    def next_delay(self) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        now = self._clock()
        if self._deadline is None:
            self._deadline = now + self.timeout
        remaining = self._deadline - now
        if remaining <= 0:
            return None
        delay = min(self._next_delay, remaining)
        self._next_delay = min(self._next_delay * 2, self.max_delay)
        return delay


class FollowCursor:
    """Where a `follow` of one job stands, shared by the sync and asyncio loops.

    It remembers the last sequence seen, so a reconnect asks for exactly the
    events after it, drops any event at or below it (so nothing is yielded
    twice), and decides after a broken stream whether to reconnect and when.
    """

    def __init__(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        reconnect: bool = True,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
        on_reconnect: ReconnectCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        include_final_job: bool = False,
    ) -> None:
        self.job_id = job_id
        # Ask for the job as it ended with the terminal event; `final_job`
        # holds it once received (None: not asked, or the server sent none).
        self.include_final_job = include_final_job
        self.final_job: job_pb2.Job | None = None
        self._on_reconnect = on_reconnect
        self.last_sequence = after_sequence
        self.reconnect = reconnect
        self.finished = False
        self._clock = clock
        self._backoff = ReconnectBackoff(timeout=reconnect_timeout, clock=clock)
        self._attempt_started = clock()

    def request(self) -> job_service_pb2.StreamResultsRequest:
        """The StreamResults request for the next (or first) attempt."""
        self._attempt_started = self._clock()
        return job_service_pb2.StreamResultsRequest(
            job_id=self.job_id,
            after_sequence=self.last_sequence,
            include_final_job=self.include_final_job,
        )

    def accept(self, response: job_service_pb2.StreamResultsResponse) -> job_pb2.JobEvent | None:
        """Records a received event; returns it, or None for an event already
        seen (a server resending after a reconnect)."""
        event = response.event
        if event.sequence <= self.last_sequence:
            return None
        self.last_sequence = event.sequence
        self.finished = is_terminal_event(event)
        if self.finished and response.HasField("final_job"):
            self.final_job = response.final_job
        # A delivered event proves the stream works: a later break starts a new window.
        self._backoff.reset()
        return event

    def delay_after_error(self, error: grpc.RpcError) -> float:
        """Seconds to wait before reconnecting after the stream failed with `error`.

        Raises:
            VideoJobsError: the error is not UNAVAILABLE, reconnecting is off,
                or the reconnect window is used up.
        """
        code = error.code() if callable(getattr(error, "code", None)) else None
        if code != grpc.StatusCode.UNAVAILABLE or not self.reconnect:
            raise VideoJobsError.from_rpc_error(error) from error
        delay = self._delay_after_break()
        if delay is None:
            raise VideoJobsError.from_rpc_error(error) from error
        details = error.details() if callable(getattr(error, "details", None)) else ""
        self._announce(f"UNAVAILABLE: {details}" if details else "UNAVAILABLE", delay)
        return delay

    def delay_after_early_end(self) -> float | None:
        """Seconds to wait before reconnecting after the stream ended without a
        terminal event (the server closed it early), or None when reconnecting
        is off and following should just stop.

        Raises:
            VideoJobsError: UNAVAILABLE, the reconnect window is used up.
        """
        if not self.reconnect:
            return None
        delay = self._delay_after_break()
        if delay is None:
            raise VideoJobsError(
                grpc.StatusCode.UNAVAILABLE,
                f"the event stream of job {self.job_id} kept ending before the job finished",
            )
        self._announce("the event stream ended before the job did", delay)
        return delay

    def _announce(self, reason: str, delay: float) -> None:
        if self._on_reconnect is not None:
            self._on_reconnect(reason, delay)

    def _delay_after_break(self) -> float | None:
        # A stream that stayed open for the whole window was connected, even if
        # the job was quiet: its break is a new outage, not the old one going on.
        if self._clock() - self._attempt_started >= self._backoff.timeout:
            self._backoff.reset()
        return self._backoff.next_delay()
