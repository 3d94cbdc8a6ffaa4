"""When the client retries a transfer that broke, and how long it waits.

Uploads (BlobService.Write, SubmitVideo) and blob reads are retried after
transient failures: a dropped connection (UNAVAILABLE, or gRPC's own INTERNAL
for a stream that broke mid-write), a deadline that ran out
(DEADLINE_EXCEEDED, the server's upload idle timeout included) or a stream
that stopped moving (a stall, detected by the client). Everything else is the
caller's problem and is raised at once. `follow` keeps its own reconnect
rules (see `events.ReconnectBackoff`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from videojobs.client.defaults import (
    RETRY_INITIAL_DELAY,
    RETRY_MAX_DELAY,
    RETRY_MULTIPLIER,
    RETRY_STALL_TIMEOUT,
    RETRY_TIMEOUT,
)
from videojobs.client.errors import VideoJobsError

#: Codes after which a call is worth repeating as it was: the request may not
#: have reached the server, or the server asked for a retry.
TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

#: The ErrorInfo reason of the error the client makes up for a stalled stream.
STALLED_REASON = "STALLED"


@dataclass(frozen=True)
class RetryPolicy:
    """How transfers are retried after a transient failure.

    Delays start at `initial_delay` seconds and grow by `multiplier` up to
    `max_delay`, with "equal jitter" (half of each delay fixed, half random)
    so that many clients cut off together do not come back together; a
    server's `RetryInfo` delay is honoured as a minimum. The client gives up
    once it has retried for `timeout` seconds without progress: every time a
    retry moves the transfer on (more bytes committed or read), the window
    starts again, so a long upload over a flaky link finishes while a dead
    server is given up on after `timeout`.

    `stall_timeout` (seconds; None disables it) treats a stream that moved no
    byte for that long as broken: the client cancels it and resumes over a
    new connection, where the dead one would otherwise hang until the
    operating system noticed. It must exceed the time one chunk takes to send.
    """

    initial_delay: float = RETRY_INITIAL_DELAY
    max_delay: float = RETRY_MAX_DELAY
    multiplier: float = RETRY_MULTIPLIER
    timeout: float = RETRY_TIMEOUT
    stall_timeout: float | None = RETRY_STALL_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("initial_delay", "max_delay", "timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError(f"multiplier must be >= 1, not {self.multiplier!r}")
        if self.max_delay < self.initial_delay:
            raise ValueError("max_delay must not be less than initial_delay")
        if self.stall_timeout is not None and not (
            math.isfinite(self.stall_timeout) and self.stall_timeout > 0
        ):
            raise ValueError(f"stall_timeout must be > 0 or None, not {self.stall_timeout!r}")

    def backoff(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        random_fraction: Callable[[], float] = random.random,
    ) -> RetryBackoff:
        """A fresh backoff following this policy (clock and randomness injectable)."""
        return RetryBackoff(self, clock=clock, random_fraction=random_fraction)


class RetryBackoff:
    """The delays of one transfer's retries under a `RetryPolicy`.

    `next_delay()` after each failure; `progressed()` whenever the transfer
    moved on, which resets both the delay and the give-up window.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        random_fraction: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._random_fraction = random_fraction
        self._base = policy.initial_delay
        self._deadline: float | None = None
        self.retries = 0

    def progressed(self) -> None:
        """The transfer moved on: the next failure starts a fresh window."""
        self._base = self.policy.initial_delay
        self._deadline = None

    def next_delay(self, *, at_least: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up (the
        window of `policy.timeout` seconds since the first failure without
        progress is used up). `at_least` is the server's RetryInfo delay."""
        now = self._clock()
        if self._deadline is None:
            self._deadline = now + self.policy.timeout
        remaining = self._deadline - now
        if remaining <= 0:
            return None
        half = self._base / 2
        delay = half + half * self._random_fraction()
        if at_least is not None:
            delay = max(delay, at_least)
        self._base = min(self._base * self.policy.multiplier, self.policy.max_delay)
        self.retries += 1
        # The last wait ends at the deadline, so the final attempt still happens.
        return min(delay, remaining)


def is_transient(error: VideoJobsError) -> bool:
    """Whether repeating the same call may well succeed: UNAVAILABLE,
    DEADLINE_EXCEEDED (a stall included), or a broken transport that gRPC
    reports as INTERNAL (see `is_transport_failure`)."""
    return error.code in TRANSIENT_CODES or is_transport_failure(error)


def is_transport_failure(error: VideoJobsError) -> bool:
    """Whether an INTERNAL error came from the gRPC library rather than from
    job-service. job-service gives every error an ErrorInfo reason; gRPC's
    own INTERNAL errors have none (grpc.aio reports "Internal error from
    Core" when a stream breaks while it writes, grpc/grpc#36066)."""
    return error.code == grpc.StatusCode.INTERNAL and not error.reason and not error.details


def write_may_resume(error: VideoJobsError) -> bool:
    """Whether a broken BlobService.Write should be resumed from the
    committed size (after asking QueryWriteStatus) rather than given up.

    Besides transient errors these are the answers a resumed write can get
    through no fault of its own: ABORTED (the server still holds the broken
    stream for the key and lets it go when it notices), INVALID_ARGUMENT on
    `write_offset` alone (the broken stream committed more after the client
    asked where it stood), and ALREADY_EXISTS `UPLOAD_COMPLETE` (the broken
    stream finished the object, its answer was lost).
    """
    if is_transient(error) or error.code == grpc.StatusCode.ABORTED:
        return True
    if error.code == grpc.StatusCode.INVALID_ARGUMENT:
        fields = {field for field, _ in error.field_violations}
        return fields == {"write_offset"}
    return error.code == grpc.StatusCode.ALREADY_EXISTS and error.reason == "UPLOAD_COMPLETE"


def stalled_error(seconds: float, what: str) -> VideoJobsError:
    """The error for a stream that moved no byte for `seconds` (DEADLINE_EXCEEDED,
    reason STALLED): made by the client, as the server may never have noticed."""
    return VideoJobsError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"{what} moved no byte for {seconds:g}s; the connection looks dead",
        reason=STALLED_REASON,
        domain="videojobs.dev",
    )


def is_stall(error: VideoJobsError) -> bool:
    """Whether the error says the connection may be dead (a stall the client
    detected, or a deadline that ran out), so the next attempt should use a
    new connection."""
    return error.code == grpc.StatusCode.DEADLINE_EXCEEDED
