"""What a worker's reports may carry: a worker's report is a claim, and its
text ends up on a client's screen.

`ReportPolicy` turns the limits into decisions the dispatch coordinator
applies: which text is kept (cleaned and cut), which report is over a limit
(and fails its attempt), how often a job's partial results may arrive.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from videojobs.common.text import clean_text, redact_host_paths
from videojobs.jobservice.domain import JobError
from videojobs.jobservice.limits import (
    MAX_ARTIFACTS,
    MAX_COMPLETION_EVENT_BYTES,
    MAX_ERROR_METADATA_ENTRIES,
    MAX_ERROR_METADATA_KEY_CHARS,
    MAX_ERROR_METADATA_VALUE_CHARS,
    MAX_MESSAGE_CHARS,
    MAX_REPORT_DEPTH,
    MAX_STAGE_CHARS,
    MAX_SUMMARY_BYTES,
    MAX_WARNING_CHARS,
    MAX_WARNINGS,
    ReportLimits,
)

_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_METADATA_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "', "\n  at ")
GENERIC_FAILURE = "the pipeline failed (the worker's log has the details)"


def clean_stage(stage: str) -> str:
    """A progress stage fit for display (one line, no host paths)."""
    return clean_text(redact_host_paths(stage), MAX_STAGE_CHARS)


def json_depth(value: object) -> int:
    """How deeply objects and lists nest in a JSON-shaped value (a scalar: 0)."""
    depth, level = 0, [value]
    while level:
        nested = []
        for item in level:
            if isinstance(item, dict):
                nested.extend(item.values())
            elif isinstance(item, list):
                nested.extend(item)
        if not any(isinstance(item, dict | list) for item in level):
            break
        depth += 1
        level = nested
    return depth


def too_deep(what: str, depth: int) -> JobError | None:
    """The error of a structured value nested past MAX_REPORT_DEPTH, or None."""
    if depth <= MAX_REPORT_DEPTH:
        return None
    return over_limit(
        f"{what} nests {depth} levels deep; at most {MAX_REPORT_DEPTH}",
        "REPORT_TOO_DEEP",
        limit=str(MAX_REPORT_DEPTH),
    )


def clean_warnings(warnings: list[str]) -> list[str]:
    """At most MAX_WARNINGS warnings, each cleaned and cut; the rest counted."""
    kept = [clean_text(redact_host_paths(w), MAX_WARNING_CHARS) for w in warnings[:MAX_WARNINGS]]
    if len(warnings) > MAX_WARNINGS:
        kept[-1] = f"... and {len(warnings) - MAX_WARNINGS + 1} more warning(s)"
    return [w for w in kept if w]


def clean_failure(code: str, message: str, reason: str, metadata: dict[str, str]) -> JobError:
    """A worker's failure as a client may see it: the first line of the
    message, cleaned, cut and without host paths; a stack trace is replaced;
    the reason must look like a reason; metadata is bounded."""
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    if not first_line or any(marker in message for marker in _TRACEBACK_MARKERS):
        text = GENERIC_FAILURE
    else:
        text = clean_text(redact_host_paths(first_line), MAX_MESSAGE_CHARS) or GENERIC_FAILURE
    clean_metadata = {}
    for key, value in list(metadata.items())[:MAX_ERROR_METADATA_ENTRIES]:
        if len(key) <= MAX_ERROR_METADATA_KEY_CHARS and _METADATA_KEY.fullmatch(key):
            clean_metadata[key] = clean_text(
                redact_host_paths(value), MAX_ERROR_METADATA_VALUE_CHARS
            )
    return JobError(
        code=code,
        message=text,
        reason=reason if _REASON.fullmatch(reason) else "PIPELINE_FAILED",
        metadata=clean_metadata,
    )


def over_limit(message: str, reason: str, **metadata: str) -> JobError:
    """The error that fails an attempt whose report broke a limit."""
    return JobError("RESOURCE_EXHAUSTED", message, reason, dict(metadata))


def completion_problem(
    artifact_count: int, summary_bytes: int, event_bytes: int, summary_depth: int = 0
) -> JobError | None:
    """Why a completion is too large (or too deep) to record, or None."""
    deep = too_deep("the result summary", summary_depth)
    if deep is not None:
        return deep
    if artifact_count > MAX_ARTIFACTS:
        return over_limit(
            f"the worker reported {artifact_count} artifacts; at most {MAX_ARTIFACTS}",
            "TOO_MANY_ARTIFACTS",
            limit=str(MAX_ARTIFACTS),
        )
    if summary_bytes > MAX_SUMMARY_BYTES:
        return over_limit(
            f"the result summary is {summary_bytes} bytes; at most {MAX_SUMMARY_BYTES}",
            "SUMMARY_TOO_LARGE",
            limit=str(MAX_SUMMARY_BYTES),
        )
    if event_bytes > MAX_COMPLETION_EVENT_BYTES:
        return over_limit(
            f"the completion report is {event_bytes} bytes; at most {MAX_COMPLETION_EVENT_BYTES}",
            "REPORT_TOO_LARGE",
            limit=str(MAX_COMPLETION_EVENT_BYTES),
        )
    return None


@dataclass
class TokenBucket:
    """At most `rate` events a second on average, in bursts of `burst`."""

    rate: float
    burst: int
    tokens: float = field(default=-1.0)
    updated: float = field(default_factory=time.monotonic)

    def take(self) -> bool:
        """Takes one token; False when the bucket is empty."""
        now = time.monotonic()
        if self.tokens < 0:
            self.tokens = float(self.burst)
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class ReportPolicy:
    """Applies ReportLimits to the reports about one job."""

    def __init__(self, limits: ReportLimits) -> None:
        self.limits = limits

    def new_bucket(self) -> TokenBucket:
        """The partial-result rate limiter of one lease."""
        return TokenBucket(self.limits.partial_results_per_second, self.limits.partial_result_burst)

    def partial_result_problem(
        self,
        size_bytes: int,
        job_bytes_so_far: int,
        events_so_far: int,
        bucket: TokenBucket,
        depth: int = 0,
    ) -> JobError | None:
        """Why a partial result must not be recorded, or None."""
        limits = self.limits
        deep = too_deep("a partial result", depth)
        if deep is not None:
            return deep
        if size_bytes > limits.max_partial_result_bytes:
            return over_limit(
                f"a partial result of {size_bytes} bytes; at most "
                f"{limits.max_partial_result_bytes}",
                "PARTIAL_RESULT_TOO_LARGE",
                limit=str(limits.max_partial_result_bytes),
            )
        if job_bytes_so_far + size_bytes > limits.max_partial_result_bytes_per_job:
            return over_limit(
                f"partial results of more than {limits.max_partial_result_bytes_per_job} "
                "bytes for one job",
                "PARTIAL_RESULTS_TOO_LARGE",
                limit=str(limits.max_partial_result_bytes_per_job),
            )
        if events_so_far >= limits.max_events_per_job:
            return self.too_many_events()
        if not bucket.take():
            return over_limit(
                f"more than {limits.partial_results_per_second:g} partial results a second "
                f"(bursts of {limits.partial_result_burst})",
                "EVENT_RATE_EXCEEDED",
                limit=f"{limits.partial_results_per_second:g}",
            )
        return None

    def too_many_events(self) -> JobError:
        """The error of a job that reached max_events_per_job."""
        return over_limit(
            f"the job reached {self.limits.max_events_per_job} events",
            "TOO_MANY_EVENTS",
            limit=str(self.limits.max_events_per_job),
        )
