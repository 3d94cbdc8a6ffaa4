"""Settings of job-service, from flags and VIDEOJOBS_* environment variables."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from videojobs.common.config import DEFAULT_ADDRESS, DEFAULT_DATA_DIR, add_option, storage_dirs


@dataclass(frozen=True)
class JobServiceSettings:
    """Everything job-service is configured with."""

    listen: str = DEFAULT_ADDRESS
    database_url: str = ""
    storage_url: str = ""
    max_upload_bytes: int = 4 * 1024**3
    max_attempts: int = 3
    heartbeat_interval: float = 2.0
    lease_duration: float = 10.0
    shutdown_grace: float = 5.0
    retry_backoff_base: float = 1.0
    retry_backoff_max: float = 60.0
    max_lease_losses: int = 10
    priority_step: float = 300.0
    default_queue_timeout: float = 0.0
    log_level: str = "INFO"


def parse_settings(argv: list[str] | None = None) -> JobServiceSettings:
    """Settings from the command line and the environment."""
    parser = argparse.ArgumentParser(
        prog="videojobs-server", description="Run job-service (JobService + DispatchService)."
    )
    add_option(
        parser,
        "--listen",
        "VIDEOJOBS_LISTEN",
        DEFAULT_ADDRESS,
        "address to bind; port 0 picks a free port",
    )
    add_option(
        parser,
        "--data-dir",
        "VIDEOJOBS_DATA_DIR",
        DEFAULT_DATA_DIR,
        "directory for the SQLite database and local storage",
    )
    add_option(
        parser,
        "--database-url",
        "VIDEOJOBS_DATABASE_URL",
        "",
        "SQLAlchemy async URL (default: SQLite in the data dir)",
    )
    add_option(
        parser,
        "--storage-url",
        "VIDEOJOBS_STORAGE_URL",
        "",
        "storage root: a directory or file:///dir (default: <data dir>/storage)",
    )
    add_option(
        parser,
        "--max-upload-bytes",
        "VIDEOJOBS_MAX_UPLOAD_BYTES",
        4 * 1024**3,
        "largest accepted upload",
        int,
    )
    add_option(
        parser,
        "--max-attempts",
        "VIDEOJOBS_MAX_ATTEMPTS",
        3,
        "attempts of a job whose failures are retryable",
        int,
    )
    add_option(
        parser,
        "--heartbeat-interval",
        "VIDEOJOBS_HEARTBEAT_INTERVAL",
        2.0,
        "seconds between worker heartbeats",
        float,
    )
    add_option(
        parser,
        "--lease-duration",
        "VIDEOJOBS_LEASE_DURATION",
        10.0,
        "seconds a lease lives without a heartbeat",
        float,
    )
    add_option(
        parser,
        "--shutdown-grace",
        "VIDEOJOBS_SHUTDOWN_GRACE",
        5.0,
        "seconds in-flight calls get to finish at shutdown",
        float,
    )
    add_option(
        parser,
        "--retry-backoff-base",
        "VIDEOJOBS_RETRY_BACKOFF_BASE",
        1.0,
        "seconds before the first retry of a failed attempt (doubles each time)",
        float,
    )
    add_option(
        parser,
        "--retry-backoff-max",
        "VIDEOJOBS_RETRY_BACKOFF_MAX",
        60.0,
        "longest wait between retries",
        float,
    )
    add_option(
        parser,
        "--max-lease-losses",
        "VIDEOJOBS_MAX_LEASE_LOSSES",
        10,
        "times a job may lose its worker before it fails",
        int,
    )
    add_option(
        parser,
        "--priority-step",
        "VIDEOJOBS_PRIORITY_STEP",
        300.0,
        "seconds of queue head start one step of priority is worth",
        float,
    )
    add_option(
        parser,
        "--default-queue-timeout",
        "VIDEOJOBS_DEFAULT_QUEUE_TIMEOUT",
        0.0,
        "seconds a job may wait in the queue unless it says otherwise (0: no limit)",
        float,
    )
    add_option(parser, "--log-level", "VIDEOJOBS_LOG_LEVEL", "INFO", "logging level")
    args = parser.parse_args(argv)
    if args.heartbeat_interval <= 0 or args.lease_duration <= args.heartbeat_interval:
        parser.error("need 0 < heartbeat interval < lease duration")
    database_url, storage_url = storage_dirs(args.data_dir, args.database_url, args.storage_url)
    return JobServiceSettings(
        listen=args.listen,
        database_url=database_url,
        storage_url=storage_url,
        max_upload_bytes=args.max_upload_bytes,
        max_attempts=args.max_attempts,
        heartbeat_interval=args.heartbeat_interval,
        lease_duration=args.lease_duration,
        shutdown_grace=args.shutdown_grace,
        retry_backoff_base=args.retry_backoff_base,
        retry_backoff_max=args.retry_backoff_max,
        max_lease_losses=args.max_lease_losses,
        priority_step=args.priority_step,
        default_queue_timeout=args.default_queue_timeout,
        log_level=args.log_level,
    )
