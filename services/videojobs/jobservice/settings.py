"""Settings of job-service, from flags and VIDEOJOBS_* environment variables.

Each setting is declared once, as a field of `JobServiceSettings` whose
metadata names its flag, environment variable and help text; the parser is
built from those fields, so a default is written in exactly one place (here,
or in the limits it comes from).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from videojobs.common.config import (
    DEFAULT_ADDRESS,
    DEFAULT_DATA_DIR,
    add_flag,
    add_option,
    check_observability_options,
    storage_dirs,
)
from videojobs.jobservice.dispatch import DispatchSettings
from videojobs.jobservice.lifecycle import RetryPolicy
from videojobs.jobservice.limits import ReportLimits, UploadLimits
from videojobs.jobservice.retention import RetentionPolicy
from videojobs.jobservice.submit import SubmitLimits

# The defaults live with the parts that use them; settings read them from there.
_UPLOADS = UploadLimits()
_REPORTS = ReportLimits()
_DISPATCH = DispatchSettings()
_RETRY = RetryPolicy()
_SUBMIT = SubmitLimits()


def _setting(default: Any, env: str, help_text: str, flag: str | None = None) -> Any:
    return field(default=default, metadata={"env": env, "help": help_text, "flag": flag})


@dataclass(frozen=True)
class JobServiceSettings:
    """Everything job-service is configured with."""

    listen: str = _setting(
        DEFAULT_ADDRESS, "VIDEOJOBS_LISTEN", "address to bind; port 0 picks a free port"
    )
    database_url: str = _setting(
        "", "VIDEOJOBS_DATABASE_URL", "SQLAlchemy async URL (default: SQLite in the data dir)"
    )
    storage_url: str = _setting(
        "",
        "VIDEOJOBS_STORAGE_URL",
        "storage root: a directory or file:///dir (default: <data dir>/storage)",
    )
    max_upload_bytes: int = _setting(
        _UPLOADS.max_upload_bytes, "VIDEOJOBS_MAX_UPLOAD_BYTES", "largest accepted upload"
    )
    upload_idle_timeout: float = _setting(
        _UPLOADS.idle_timeout_seconds,
        "VIDEOJOBS_UPLOAD_IDLE_TIMEOUT",
        "seconds an upload may go without a message before it is dropped",
    )
    max_concurrent_uploads: int = _setting(
        _UPLOADS.max_concurrent_uploads,
        "VIDEOJOBS_MAX_CONCURRENT_UPLOADS",
        "uploads in progress at once, overall",
    )
    max_uploads_per_peer: int = _setting(
        _UPLOADS.max_uploads_per_peer,
        "VIDEOJOBS_MAX_UPLOADS_PER_PEER",
        "uploads in progress at once from one client address",
    )
    max_uploads_per_tenant: int = _setting(
        _UPLOADS.max_uploads_per_tenant,
        "VIDEOJOBS_MAX_UPLOADS_PER_TENANT",
        "uploads in progress at once for one tenant (0: no limit of its own)",
    )
    tenant_max_queued_jobs: int = _setting(
        _SUBMIT.tenant_max_queued_jobs,
        "VIDEOJOBS_TENANT_MAX_QUEUED_JOBS",
        "jobs one tenant may have waiting in the queue (0: no limit)",
    )
    min_free_bytes: int = _setting(
        _UPLOADS.min_free_bytes,
        "VIDEOJOBS_MIN_FREE_BYTES",
        "free storage space uploads must leave (refused below it)",
    )
    storage_quota_bytes: int = _setting(
        _UPLOADS.storage_quota_bytes,
        "VIDEOJOBS_STORAGE_QUOTA_BYTES",
        "most bytes of stored inputs (0: no quota)",
    )
    max_partial_result_bytes: int = _setting(
        _REPORTS.max_partial_result_bytes,
        "VIDEOJOBS_MAX_PARTIAL_RESULT_BYTES",
        "largest partial result a worker may report",
    )
    partial_results_per_second: float = _setting(
        _REPORTS.partial_results_per_second,
        "VIDEOJOBS_PARTIAL_RESULTS_PER_SECOND",
        "partial results per second one job may report (bursts of "
        f"{_REPORTS.partial_result_burst})",
    )
    max_partial_result_bytes_per_job: int = _setting(
        _REPORTS.max_partial_result_bytes_per_job,
        "VIDEOJOBS_MAX_PARTIAL_RESULT_BYTES_PER_JOB",
        "bytes of partial results one job may report in all",
    )
    max_events_per_job: int = _setting(
        _REPORTS.max_events_per_job,
        "VIDEOJOBS_MAX_EVENTS_PER_JOB",
        "events one job may record",
    )
    max_attempts: int = _setting(
        _SUBMIT.max_attempts,
        "VIDEOJOBS_MAX_ATTEMPTS",
        "attempts of a job whose failures are retryable",
    )
    heartbeat_interval: float = _setting(
        _DISPATCH.heartbeat_interval,
        "VIDEOJOBS_HEARTBEAT_INTERVAL",
        "seconds between worker heartbeats",
    )
    lease_duration: float = _setting(
        _DISPATCH.lease_duration,
        "VIDEOJOBS_LEASE_DURATION",
        "seconds a lease lives without a heartbeat",
    )
    shutdown_grace: float = _setting(
        5.0, "VIDEOJOBS_SHUTDOWN_GRACE", "seconds in-flight calls get to finish at shutdown"
    )
    retry_backoff_base: float = _setting(
        _RETRY.backoff_base,
        "VIDEOJOBS_RETRY_BACKOFF_BASE",
        "seconds before the first retry of a failed attempt (doubles each time)",
    )
    retry_backoff_max: float = _setting(
        _RETRY.backoff_max, "VIDEOJOBS_RETRY_BACKOFF_MAX", "longest wait between retries"
    )
    max_lease_losses: int = _setting(
        _RETRY.max_lease_losses,
        "VIDEOJOBS_MAX_LEASE_LOSSES",
        "times a job may lose its worker before it fails",
    )
    priority_step: float = _setting(
        _SUBMIT.priority_step,
        "VIDEOJOBS_PRIORITY_STEP",
        "seconds of queue head start one step of priority is worth",
    )
    default_queue_timeout: float = _setting(
        _SUBMIT.default_queue_timeout,
        "VIDEOJOBS_DEFAULT_QUEUE_TIMEOUT",
        "seconds a job may wait in the queue unless it says otherwise (0: no limit)",
    )
    resync_interval: float = _setting(
        _DISPATCH.resync_interval,
        "VIDEOJOBS_RESYNC_INTERVAL",
        "seconds between safety-net re-reads of the database by the dispatcher, the "
        "deadline reaper and result followers (notices wake them at once; this only "
        "bounds what a lost notice can delay)",
    )
    sweep_interval: float = _setting(
        600.0,
        "VIDEOJOBS_SWEEP_INTERVAL",
        "seconds between sweeps for orphaned blobs and dead temporary files",
    )
    orphan_grace: float = _setting(
        3600.0,
        "VIDEOJOBS_ORPHAN_GRACE",
        "age in seconds an unreferenced blob or temporary file must reach before a sweep "
        "removes it",
    )
    retention_days: float = _setting(
        30.0,
        "VIDEOJOBS_RETENTION_DAYS",
        "days ended jobs are kept, with everything they stored (0: forever)",
    )
    failed_input_retention_days: float = _setting(
        7.0,
        "VIDEOJOBS_FAILED_INPUT_RETENTION_DAYS",
        "days the inputs of FAILED and CANCELLED jobs are kept (0: as long as the job)",
    )
    retention_interval: float = _setting(
        3600.0,
        "VIDEOJOBS_RETENTION_INTERVAL",
        "seconds between passes of the retention policy",
    )
    staged_upload_ttl: float = _setting(
        86_400.0,
        "VIDEOJOBS_STAGED_UPLOAD_TTL",
        "seconds a finished staged upload (uploads/...) waits for a SubmitVideo before a "
        "sweep removes it",
    )
    tracing: str = _setting(
        "",
        "VIDEOJOBS_TRACING",
        "OpenTelemetry spans: otlp (OTEL_EXPORTER_OTLP_* say where), console, or "
        "jsonl:PATH (default: off)",
    )
    metrics_listen: str = _setting(
        "",
        "VIDEOJOBS_METRICS_LISTEN",
        "HOST:PORT of the Prometheus /metrics HTTP endpoint (port 0 picks one; default: off)",
    )
    auth_file: str = _setting(
        "",
        "VIDEOJOBS_AUTH_FILE",
        "the principals and their hashed tokens (see 'videojobs-server tokens'); without "
        "one, every caller is trusted and the server listens on loopback only",
    )
    tls_cert: str = _setting("", "VIDEOJOBS_TLS_CERT", "PEM certificate: serve TLS")
    tls_key: str = _setting("", "VIDEOJOBS_TLS_KEY", "PEM private key of --tls-cert")
    tls_client_ca: str = _setting(
        "",
        "VIDEOJOBS_TLS_CLIENT_CA",
        "PEM CA: require client certificates it signed (mutual TLS)",
    )
    insecure: bool = _setting(
        False,
        "VIDEOJOBS_INSECURE",
        "listen beyond loopback without an auth file and TLS (a warning is printed)",
    )
    log_level: str = _setting("INFO", "VIDEOJOBS_LOG_LEVEL", "logging level")
    log_format: str = _setting(
        "text",
        "VIDEOJOBS_LOG_FORMAT",
        "log lines: text, or json (one object per line, with job_id, attempt, worker_id "
        "and request_id where they apply)",
    )

    @property
    def upload_limits(self) -> UploadLimits:
        """The upload bounds these settings describe."""
        return UploadLimits(
            max_upload_bytes=self.max_upload_bytes,
            idle_timeout_seconds=self.upload_idle_timeout,
            max_concurrent_uploads=self.max_concurrent_uploads,
            max_uploads_per_peer=self.max_uploads_per_peer,
            max_uploads_per_tenant=self.max_uploads_per_tenant,
            min_free_bytes=self.min_free_bytes,
            storage_quota_bytes=self.storage_quota_bytes,
        )

    @property
    def dispatch_settings(self) -> DispatchSettings:
        """Lease timings, retry policy and safety-net sweep of dispatch."""
        return DispatchSettings(
            heartbeat_interval=self.heartbeat_interval,
            lease_duration=self.lease_duration,
            resync_interval=self.resync_interval,
            retry_policy=RetryPolicy(
                backoff_base=self.retry_backoff_base,
                backoff_max=self.retry_backoff_max,
                max_lease_losses=self.max_lease_losses,
            ),
        )

    @property
    def submit_limits(self) -> SubmitLimits:
        """Limits and defaults of a submit."""
        return SubmitLimits(
            uploads=self.upload_limits,
            tenant_max_queued_jobs=self.tenant_max_queued_jobs,
            max_attempts=self.max_attempts,
            priority_step=self.priority_step,
            default_queue_timeout=self.default_queue_timeout,
        )

    @property
    def retention_policy(self) -> RetentionPolicy:
        """How long ended jobs and failed inputs are kept."""
        return RetentionPolicy(self.retention_days, self.failed_input_retention_days)

    @property
    def report_limits(self) -> ReportLimits:
        """The worker-report bounds these settings describe."""
        return ReportLimits(
            max_partial_result_bytes=self.max_partial_result_bytes,
            partial_results_per_second=self.partial_results_per_second,
            partial_result_burst=_REPORTS.partial_result_burst,
            max_partial_result_bytes_per_job=self.max_partial_result_bytes_per_job,
            max_events_per_job=self.max_events_per_job,
        )


def _parser(prog: str = "videojobs-server") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run job-service (JobService, DispatchService, BlobService).",
        epilog="Subcommands: 'videojobs-server import-legacy --help' (import the jobs of the "
        "system videojobs replaces), 'videojobs-server retention [--dry-run]' (one pass of "
        "the retention policy).",
    )
    add_option(
        parser,
        "--data-dir",
        "VIDEOJOBS_DATA_DIR",
        DEFAULT_DATA_DIR,
        "directory for the SQLite database and local storage",
    )
    for setting in dataclasses.fields(JobServiceSettings):
        meta = setting.metadata
        flag = meta["flag"] or "--" + setting.name.replace("_", "-")
        if setting.type == "bool":
            add_flag(parser, flag, meta["env"], meta["help"])
            continue
        parse = setting.type if setting.type in ("int", "float") else "str"
        add_option(parser, flag, meta["env"], setting.default, meta["help"], _PARSERS[parse])
    return parser


_PARSERS = {"int": int, "float": float, "str": str}


def parse_settings(
    argv: list[str] | None = None, prog: str = "videojobs-server"
) -> JobServiceSettings:
    """Settings from the command line and the environment."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.heartbeat_interval <= 0 or args.lease_duration <= args.heartbeat_interval:
        parser.error("need 0 < heartbeat interval < lease duration")
    for name in ("max_concurrent_uploads", "max_uploads_per_peer", "max_events_per_job"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.upload_idle_timeout <= 0 or args.sweep_interval <= 0 or args.orphan_grace < 0:
        parser.error("timeouts and intervals must be positive")
    if args.resync_interval <= 0:
        parser.error("timeouts and intervals must be positive")
    check_observability_options(parser, args.log_format, args.tracing)
    if args.retention_days < 0 or args.failed_input_retention_days < 0:
        parser.error("retention periods must be 0 (keep) or positive")
    if args.retention_interval <= 0:
        parser.error("--retention-interval must be positive")
    database_url, storage_url = storage_dirs(args.data_dir, args.database_url, args.storage_url)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(JobServiceSettings)}
    values.update(database_url=database_url, storage_url=storage_url)
    return JobServiceSettings(**values)
