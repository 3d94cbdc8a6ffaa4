"""Logging a failure that repeats without flooding the log.

At 3 a.m. a full disk makes every loop iteration and every request fail the
same way. The operator needs the first failure with its traceback, then a
count now and then, then the moment it recovered: not a traceback a second.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

# After the first report, a still-failing operation is reported this often.
REPEAT_REPORT_SECONDS = 60.0


@dataclass
class RepeatedFailureLog:
    """Reports failures of one named operation: the first in full, then a count
    at most every `repeat_seconds`, and a recovery line once it works again."""

    logger: logging.Logger
    what: str
    repeat_seconds: float = REPEAT_REPORT_SECONDS
    failures: int = 0
    _unreported: int = 0
    _last_report: float = field(default=0.0)

    def failed(self, exc: BaseException, *, traceback: bool = True) -> None:
        """Records one failure of the operation."""
        self.failures += 1
        now = time.monotonic()
        if self.failures == 1:
            self.logger.error(
                "%s failed: %s", self.what, _describe(exc), exc_info=exc if traceback else None
            )
            self._last_report = now
            return
        self._unreported += 1
        if now - self._last_report >= self.repeat_seconds:
            self.logger.error(
                "%s still failing: %d more time(s) in the last %.0fs (last: %s)",
                self.what,
                self._unreported,
                now - self._last_report,
                _describe(exc),
            )
            self._unreported = 0
            self._last_report = now

    def succeeded(self) -> None:
        """The operation worked: log the recovery if it had been failing."""
        if self.failures:
            self.logger.warning("%s recovered after %d failure(s)", self.what, self.failures)
        self.failures = 0
        self._unreported = 0


class FailureLogs:
    """A `RepeatedFailureLog` per key (for example per RPC method and reason)."""

    def __init__(self, logger: logging.Logger, repeat_seconds: float = REPEAT_REPORT_SECONDS):
        self._logger = logger
        self._repeat_seconds = repeat_seconds
        self._logs: dict[str, RepeatedFailureLog] = {}

    def failed(self, key: str, exc: BaseException, *, traceback: bool = True) -> None:
        """Records a failure under `key`."""
        log = self._logs.get(key)
        if log is None:
            if len(self._logs) > 1000:
                self._logs.clear()  # keys are bounded in practice; never grow without end
            log = self._logs[key] = RepeatedFailureLog(self._logger, key, self._repeat_seconds)
        log.failed(exc, traceback=traceback)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
