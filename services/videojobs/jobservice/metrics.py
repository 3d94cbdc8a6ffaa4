"""job-service's Prometheus metrics (besides the RPC metrics every service
has, see `common/metrics.py`).

What happens to jobs is counted from the notices a unit of work delivers
after it committed (`AttemptStarted`, `AttemptEnded`, `LeaseExpired`), so a
rolled-back transaction counts nothing. Queue depth is read from the
database every `refresh_seconds` (only while the endpoint is on); connected
workers and slots come from this replica's sessions at scrape time.
Counters are per replica: sum them across replicas in Prometheus.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from prometheus_client import Counter, Gauge, Histogram

from videojobs.common.aio import wait_event
from videojobs.common.failures import RepeatedFailureLog
from videojobs.jobservice.dispatch.sessions import WorkerSession
from videojobs.jobservice.domain import JobState
from videojobs.jobservice.notices import AttemptEnded, AttemptStarted, LeaseExpired, Notice
from videojobs.jobservice.store import Database

log = logging.getLogger(__name__)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

JOBS = Gauge(
    "videojobs_jobs",
    "Jobs in the database by state and pipeline set (queue depth: state QUEUED).",
    ["state", "pipeline"],
)
DISPATCH_LATENCY = Histogram(
    "videojobs_dispatch_latency_seconds",
    "From when a job could be given to a worker (queued, or its retry backoff over) "
    "to its assignment.",
    buckets=_SECONDS,
)
QUEUE_WAIT = Histogram(
    "videojobs_job_queue_wait_seconds",
    "From submit to the start of a job's first attempt, by pipeline set.",
    ["pipeline"],
    buckets=_SECONDS,
)
ATTEMPT_DURATION = Histogram(
    "videojobs_attempt_duration_seconds",
    "How long attempts ran, by pipeline set and outcome.",
    ["pipeline", "outcome"],
    buckets=_SECONDS,
)
ATTEMPTS = Counter(
    "videojobs_attempts",
    "Attempts that ended, by pipeline set and outcome (succeeded, failed, retried, "
    "lease_lost, timed_out, cancelled, handed_back).",
    ["pipeline", "outcome"],
)
LEASE_EXPIRIES = Counter(
    "videojobs_lease_expiries", "Leases that ran out without a heartbeat (hung or lost workers)."
)
UPLOAD_BYTES = Counter(
    "videojobs_upload_bytes", "Bytes received: video uploads and BlobService writes."
)
SERVED_BYTES = Counter("videojobs_served_bytes", "Bytes sent by BlobService reads.")
CONNECTED_WORKERS = Gauge(
    "videojobs_connected_workers", "Worker dispatch streams open on this replica."
)
WORKER_SLOTS = Gauge(
    "videojobs_connected_worker_slots",
    "Job slots of the workers connected to this replica: used, or free to take a job.",
    ["state"],
)


def record(notice: Notice) -> None:
    """Counts what a committed unit of work did (a notifier subscriber)."""
    match notice:
        case AttemptStarted(pipeline=pipeline) as started:
            DISPATCH_LATENCY.observe(started.dispatch_seconds)
            if started.queue_wait_seconds is not None:
                QUEUE_WAIT.labels(pipeline).observe(started.queue_wait_seconds)
        case AttemptEnded(pipeline=pipeline, outcome=outcome, run_seconds=seconds):
            ATTEMPTS.labels(pipeline, outcome.lower()).inc()
            ATTEMPT_DURATION.labels(pipeline, outcome.lower()).observe(seconds)
        case LeaseExpired():
            LEASE_EXPIRIES.inc()


def watch_sessions(sessions: Callable[[], Iterable[WorkerSession]]) -> None:
    """Makes the worker gauges read `sessions` (this replica's) at scrape time."""

    def used() -> float:
        return sum(len(s.leases) + len(s.stopping) for s in sessions())

    CONNECTED_WORKERS.set_function(lambda: sum(1 for _ in sessions()))
    WORKER_SLOTS.labels("used").set_function(used)
    WORKER_SLOTS.labels("free").set_function(
        lambda: sum(max(0, s.free_capacity) for s in sessions())
    )


class QueueDepthRefresher:
    """Keeps `videojobs_jobs` current: one grouped count every `refresh_seconds`."""

    def __init__(self, database: Database, refresh_seconds: float = 5.0) -> None:
        self._database = database
        self._refresh_seconds = refresh_seconds
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._failures = RepeatedFailureLog(log, "refreshing the job counts")
        self._known: set[tuple[str, str]] = set()

    def start(self) -> None:
        """Starts refreshing in the background."""
        self._task = asyncio.create_task(self._run(), name="metrics-job-counts")

    async def stop(self) -> None:
        """Stops refreshing."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def refresh(self) -> None:
        """Reads the counts once."""
        async with self._database.reading() as repository:
            counts = await repository.count_by_state_and_pipeline()
        seen = set()
        for (state, pipeline), count in counts.items():
            JOBS.labels(JobState(state).name, pipeline).set(count)
            seen.add((JobState(state).name, pipeline))
        # A combination that emptied reads 0, not its last count.
        for state, pipeline in self._known - seen:
            JOBS.labels(state, pipeline).set(0)
        self._known |= seen

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.refresh()
                self._failures.succeeded()
            except Exception as exc:  # noqa: BLE001 - metrics must never stop the service
                self._failures.failed(exc)
            await wait_event(self._stop, self._refresh_seconds)
