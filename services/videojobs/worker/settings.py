"""Settings of worker-service, from flags and VIDEOJOBS_* environment variables."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from videojobs.common.config import (
    DEFAULT_ADDRESS,
    DEFAULT_DATA_DIR,
    DEFAULT_WORKER_LISTEN,
    add_flag,
    add_option,
    check_observability_options,
)
from videojobs.common.security import (
    ClientSecurity,
    SecurityConfigError,
    ServerTls,
    read_token,
    server_tls,
)
from videojobs.pipelines.media import DEFAULT_MAX_FRAME_PIXELS

MIB = 1024 * 1024
# Bounds of the automatic per-child memory limit. The floor is what real work
# needs with room to spare: ocr + detect (+ scenes + thumbnails) on a 1280x720
# clip peaks at 1.2 GiB of address space (0.5 GiB resident) on 2 cores, with
# malloc arenas bounded as worker.runner does. The ceiling keeps one hostile
# input from taking a big machine's memory.
AUTO_CHILD_MEMORY_MIN_MIB = 2048
# Jobs one warm pipeline process runs before it is replaced.
DEFAULT_CHILD_MAX_JOBS = 500
AUTO_CHILD_MEMORY_MAX_MIB = 8192
# Share of the machine's physical memory the children of one worker may use.
AUTO_CHILD_MEMORY_SHARE = 0.75


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker is configured with."""

    address: str
    listen: str
    # Empty: inputs and outputs go through job-service's BlobService (the
    # default; the worker needs nothing but job-service's address). A storage
    # URL: the same storage as job-service's, read and written directly.
    storage_url: str
    worker_id: str
    concurrency: int
    pipelines: tuple[str, ...]
    drain_grace: float = 60.0
    log_level: str = "INFO"
    log_format: str = "text"
    # Largest picture a pipeline child decodes (width x height).
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    # Address-space limit of each pipeline child in MiB; 0: none. The command
    # line always resolves to a limit (see `auto_child_memory_limit_mib`).
    child_memory_limit_mib: int = 0
    # A warm pipeline process is replaced after this many jobs, or when its
    # resident memory passed `child_max_rss_mib` (0: half the memory limit).
    child_max_jobs: int = DEFAULT_CHILD_MAX_JOBS
    child_max_rss_mib: int = 0
    # Where inputs read through BlobService are spooled for the decoders.
    spool_dir: str = ""
    # How it reaches job-service: its token and TLS (see common.security).
    client_security: ClientSecurity = field(default_factory=ClientSecurity)
    # HOST:PORT of the Prometheus /metrics endpoint; empty: off.
    metrics_listen: str = ""
    # Where OpenTelemetry spans go (see common.tracing); empty: off.
    tracing: str = ""
    # Its own server (WorkerService): who may call it and its TLS.
    auth_file: str = ""
    tls: ServerTls | None = None
    insecure: bool = False

    @property
    def child_memory_limit_bytes(self) -> int:
        """The per-child limit in bytes (0: none)."""
        return self.child_memory_limit_mib * MIB

    @property
    def child_max_rss_bytes(self) -> int:
        """Resident memory above which a warm child is recycled (0: never)."""
        if self.child_max_rss_mib:
            return self.child_max_rss_mib * MIB
        return self.child_memory_limit_bytes // 2


def default_worker_id() -> str:
    """host-pid: unique per process on a machine, readable in logs."""
    host = "".join(c if c.isalnum() or c in ".-" else "-" for c in socket.gethostname())
    return f"{host[:100]}-{os.getpid()}"


def physical_memory_bytes() -> int:
    """The machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def auto_child_memory_limit_mib(concurrency: int, physical_bytes: int | None = None) -> int:
    """The default memory limit of one pipeline child: 75 % of physical memory
    shared by `concurrency` children, but at least 2048 and at most 8192 MiB."""
    physical = physical_memory_bytes() if physical_bytes is None else physical_bytes
    share = int(AUTO_CHILD_MEMORY_SHARE * physical / concurrency) // MIB
    return max(AUTO_CHILD_MEMORY_MIN_MIB, min(AUTO_CHILD_MEMORY_MAX_MIB, share))


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
        "--tracing",
        "VIDEOJOBS_TRACING",
        "",
        "OpenTelemetry spans: otlp (OTEL_EXPORTER_OTLP_* say where), console, or "
        "jsonl:PATH (default: off)",
    )
    add_option(
        parser,
        "--metrics-listen",
        "VIDEOJOBS_WORKER_METRICS_LISTEN",
        "",
        "HOST:PORT of this worker's Prometheus /metrics HTTP endpoint (port 0 picks one; "
        "default: off)",
    )
    add_option(
        parser,
        "--data-dir",
        "VIDEOJOBS_DATA_DIR",
        DEFAULT_DATA_DIR,
        "local working directory: inputs fetched from job-service are spooled in <data dir>/spool",
    )
    add_option(
        parser,
        "--storage-url",
        "VIDEOJOBS_STORAGE_URL",
        "",
        "job-service's own storage (a directory, file:// or s3:// URL) to read and write "
        "directly; default: through job-service's BlobService, which needs only --address",
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
    add_option(
        parser,
        "--max-frame-pixels",
        "VIDEOJOBS_WORKER_MAX_FRAME_PIXELS",
        DEFAULT_MAX_FRAME_PIXELS,
        "largest picture (width x height) a job may decode; a video over it fails "
        "with FRAME_TOO_LARGE (33177600 is 7680x4320, 8K UHD)",
        int,
    )
    add_option(
        parser,
        "--child-memory-limit-mib",
        "VIDEOJOBS_WORKER_CHILD_MEMORY_LIMIT_MIB",
        0,
        "address space each job's process may use, in MiB; a job that needs more fails "
        "with RESOURCE_EXHAUSTED. 0 (the default) means auto: 75%% of physical memory "
        f"divided by --concurrency, at least {AUTO_CHILD_MEMORY_MIN_MIB} and at most "
        f"{AUTO_CHILD_MEMORY_MAX_MIB}",
        int,
    )
    add_option(
        parser,
        "--child-max-jobs",
        "VIDEOJOBS_WORKER_CHILD_MAX_JOBS",
        DEFAULT_CHILD_MAX_JOBS,
        "jobs one warm pipeline process runs before it is replaced by a fresh one",
        int,
    )
    add_option(
        parser,
        "--child-max-rss-mib",
        "VIDEOJOBS_WORKER_CHILD_MAX_RSS_MIB",
        0,
        "a warm pipeline process whose resident memory passed this many MiB after a job "
        "is replaced; 0 (the default) means half of --child-memory-limit-mib",
        int,
    )
    add_option(
        parser,
        "--token-file",
        "VIDEOJOBS_TOKEN_FILE",
        "",
        "file holding the worker's token for job-service (or set VIDEOJOBS_TOKEN)",
    )
    add_option(
        parser, "--tls-ca", "VIDEOJOBS_TLS_CA", "", "PEM CA that signed job-service's certificate"
    )
    add_option(
        parser,
        "--tls-client-cert",
        "VIDEOJOBS_TLS_CLIENT_CERT",
        "",
        "PEM certificate the worker presents to job-service (mutual TLS)",
    )
    add_option(
        parser, "--tls-client-key", "VIDEOJOBS_TLS_CLIENT_KEY", "", "PEM key of --tls-client-cert"
    )
    add_option(
        parser,
        "--auth-file",
        "VIDEOJOBS_AUTH_FILE",
        "",
        "who may call this worker's own WorkerService (admins); without one the worker "
        "listens on loopback only",
    )
    add_option(parser, "--tls-cert", "VIDEOJOBS_TLS_CERT", "", "PEM certificate: serve TLS")
    add_option(parser, "--tls-key", "VIDEOJOBS_TLS_KEY", "", "PEM private key of --tls-cert")
    add_option(
        parser,
        "--tls-client-ca",
        "VIDEOJOBS_TLS_CLIENT_CA",
        "",
        "PEM CA: require client certificates it signed on WorkerService (mutual TLS)",
    )
    add_flag(
        parser,
        "--insecure",
        "VIDEOJOBS_INSECURE",
        "listen beyond loopback without an auth file and TLS (a warning is printed)",
    )
    add_option(parser, "--log-level", "VIDEOJOBS_LOG_LEVEL", "INFO", "logging level")
    add_option(
        parser,
        "--log-format",
        "VIDEOJOBS_LOG_FORMAT",
        "text",
        "log lines: text, or json (one object per line, with job_id, attempt and "
        "worker_id where they apply)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be 1 to 64")
    if args.max_frame_pixels < 1:
        parser.error("--max-frame-pixels must be at least 1")
    check_observability_options(parser, args.log_format, args.tracing)
    if args.child_max_jobs < 1 or args.child_max_rss_mib < 0:
        parser.error("--child-max-jobs must be at least 1 and --child-max-rss-mib 0 or more")
    if args.child_memory_limit_mib < 0:
        parser.error("--child-memory-limit-mib must be 0 (auto) or a number of MiB")
    child_memory_limit_mib = args.child_memory_limit_mib or auto_child_memory_limit_mib(
        args.concurrency
    )
    try:
        client_security = ClientSecurity(
            token=read_token(os.environ.get("VIDEOJOBS_TOKEN", ""), args.token_file),
            ca=args.tls_ca,
            cert=args.tls_client_cert,
            key=args.tls_client_key,
        )
        tls = server_tls(args.tls_cert, args.tls_key, args.tls_client_ca)
    except SecurityConfigError as exc:
        parser.error(str(exc))
    spool_dir = Path(args.data_dir).expanduser().resolve() / "spool"
    spool_dir.mkdir(parents=True, exist_ok=True)
    pipelines = tuple(p.strip() for p in args.pipelines.split(",") if p.strip())
    return WorkerSettings(
        address=args.address,
        listen=args.listen,
        storage_url=args.storage_url,
        worker_id=args.worker_id or default_worker_id(),
        concurrency=args.concurrency,
        pipelines=pipelines,
        drain_grace=args.drain_grace,
        log_level=args.log_level,
        log_format=args.log_format,
        max_frame_pixels=args.max_frame_pixels,
        child_memory_limit_mib=child_memory_limit_mib,
        child_max_jobs=args.child_max_jobs,
        child_max_rss_mib=args.child_max_rss_mib,
        spool_dir=str(spool_dir),
        client_security=client_security,
        auth_file=args.auth_file,
        metrics_listen=args.metrics_listen,
        tracing=args.tracing,
        tls=tls,
        insecure=args.insecure,
    )
