"""Settings of worker-service, from flags and VIDEOJOBS_* environment variables."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass

from videojobs.common.config import (
    DEFAULT_ADDRESS,
    DEFAULT_DATA_DIR,
    DEFAULT_WORKER_LISTEN,
    add_option,
    storage_dirs,
)


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker is configured with."""

    address: str
    listen: str
    storage_url: str
    worker_id: str
    concurrency: int
    pipelines: tuple[str, ...]
    drain_grace: float = 60.0
    log_level: str = "INFO"


def default_worker_id() -> str:
    """host-pid: unique per process on a machine, readable in logs."""
    host = "".join(c if c.isalnum() or c in ".-" else "-" for c in socket.gethostname())
    return f"{host[:100]}-{os.getpid()}"


def parse_settings(argv: list[str] | None = None) -> WorkerSettings:
    """Settings from the command line and the environment."""
    parser = argparse.ArgumentParser(
        prog="videojobs-worker", description="Run a worker: pull jobs from job-service, run them."
    )
    add_option(
        parser,
        "--address",
        "VIDEOJOBS_ADDRESS",
        DEFAULT_ADDRESS,
        "job-service address to connect to",
    )
    add_option(
        parser,
        "--listen",
        "VIDEOJOBS_WORKER_LISTEN",
        DEFAULT_WORKER_LISTEN,
        "address of this worker's own gRPC server; port 0 picks a free port",
    )
    add_option(
        parser,
        "--data-dir",
        "VIDEOJOBS_DATA_DIR",
        DEFAULT_DATA_DIR,
        "data directory shared with job-service (storage lives inside)",
    )
    add_option(
        parser,
        "--storage-url",
        "VIDEOJOBS_STORAGE_URL",
        "",
        "storage root, the same as job-service's (default: <data dir>/storage)",
    )
    add_option(
        parser, "--worker-id", "VIDEOJOBS_WORKER_ID", "", "unique worker name (default: host-pid)"
    )
    add_option(
        parser, "--concurrency", "VIDEOJOBS_WORKER_CONCURRENCY", 1, "jobs run at once (1-64)", int
    )
    add_option(
        parser,
        "--pipelines",
        "VIDEOJOBS_WORKER_PIPELINES",
        "",
        "comma-separated pipelines to run (default: every installed pipeline)",
    )
    add_option(
        parser,
        "--drain-grace",
        "VIDEOJOBS_WORKER_DRAIN_GRACE",
        60.0,
        "seconds jobs get to finish on SIGTERM/drain before they are handed back",
        float,
    )
    add_option(parser, "--log-level", "VIDEOJOBS_LOG_LEVEL", "INFO", "logging level")
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be 1 to 64")
    _, storage_url = storage_dirs(args.data_dir, "unused", args.storage_url)
    pipelines = tuple(p.strip() for p in args.pipelines.split(",") if p.strip())
    return WorkerSettings(
        address=args.address,
        listen=args.listen,
        storage_url=storage_url,
        worker_id=args.worker_id or default_worker_id(),
        concurrency=args.concurrency,
        pipelines=pipelines,
        drain_grace=args.drain_grace,
        log_level=args.log_level,
    )
