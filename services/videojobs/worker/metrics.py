"""A worker's Prometheus metrics (besides the RPC metrics of its own
WorkerService, see `common/metrics.py`), served when `--metrics-listen` /
`VIDEOJOBS_WORKER_METRICS_LISTEN` is set."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

WORKER_JOBS = Counter(
    "videojobs_worker_jobs",
    "Jobs this worker ran to an end, by pipeline set and outcome (completed, failed, stopped).",
    ["pipeline", "outcome"],
)
WORKER_JOB_DURATION = Histogram(
    "videojobs_worker_job_duration_seconds",
    "From taking an assignment to reporting its end, by pipeline set.",
    ["pipeline"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
WORKER_SLOTS = Gauge("videojobs_worker_slots", "This worker's job slots: busy or free.", ["state"])
WORKER_CONNECTED = Gauge(
    "videojobs_worker_connected", "1 while the dispatch stream to job-service is open."
)


def watch_agent(busy: Callable[[], int], slots: int, connected: Callable[[], bool]) -> None:
    """Makes the gauges read the agent at scrape time."""
    WORKER_SLOTS.labels("busy").set_function(busy)
    WORKER_SLOTS.labels("free").set_function(lambda: max(0, slots - busy()))
    WORKER_CONNECTED.set_function(lambda: 1.0 if connected() else 0.0)
