"""Every bound job-service puts on what clients and workers send it.

One place, so the README's security model, the .proto comments and the code
cannot drift apart. Fixed bounds are constants; the ones an operator may
tune are fields of `UploadLimits` and `ReportLimits`, whose defaults are the
single source of truth for the command-line flags (see `settings`).
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# -- requests from clients -----------------------------------------------------
MAX_FILE_NAME_BYTES = 255
MAX_REQUEST_ID_CHARS = 128
MAX_PIPELINE_NAME_CHARS = 64
MAX_PIPELINES_PER_JOB = 16
MAX_PARAMETERS_BYTES = 16 * KIB
MAX_PARAMETER_KEY_CHARS = 64
MAX_PARAMETER_STRING_CHARS = 1024
MAX_PARAMETER_DEPTH = 4
MAX_CANCEL_REASON_BYTES = 256
MAX_CHUNK_BYTES = 4 * MIB
# Received upload chunks are written to storage in batches of about this many
# bytes: one thread hand-off per batch, not per small chunk. The clients send
# 256 KiB chunks; 4 MiB batches measured slower (166 against 199 MiB/s in
# bench_upload) and grew job-service's memory by 81 MiB for 1 GiB.
WRITE_BATCH_BYTES = 256 * KIB
MAX_PAGE_TOKEN_CHARS = 512
# A ListJobs page stops growing here, so it always fits the default 4 MiB.
MAX_LIST_PAGE_BYTES = 3 * MIB

# -- errors --------------------------------------------------------------------
# Field violations in one error; the rest are counted, not listed.
MAX_FIELD_VIOLATIONS = 20
# Characters of a refused value an error may echo.
ECHO_CHARS = 32

# -- worker sessions -----------------------------------------------------------
MAX_LEASE_TOKEN_CHARS = 64
MAX_WORKER_VERSION_CHARS = 64
#: Longest WorkerHello.status_address (HOST:PORT of the worker's WorkerService).
MAX_STATUS_ADDRESS_CHARS = 256
MAX_ANNOUNCED_PIPELINES = 64
MAX_HELD_LEASES = 256
MAX_STAGE_CHARS = 64
MAX_MESSAGE_CHARS = 512
MAX_WARNINGS = 50
MAX_WARNING_CHARS = 512
MAX_ERROR_METADATA_ENTRIES = 8
MAX_ERROR_METADATA_KEY_CHARS = 64
MAX_ERROR_METADATA_VALUE_CHARS = 256
MAX_MEDIA_TYPE_CHARS = 128
MAX_SUMMARY_BYTES = 64 * KIB
# Nesting of a worker's structured values (summary, partial results): an event
# wraps them in a few more message levels, and protobuf refuses to parse
# messages nested past about 100 levels (some 30 JSON levels).
MAX_REPORT_DEPTH = 12
MAX_ARTIFACTS = 10_000
# The completed event (artifacts, summary, warnings) stays well under the
# clients' default 4 MiB message limit, with room for the Job around it.
MAX_COMPLETION_EVENT_BYTES = 2 * MIB
# A worker's messages are read ahead while earlier ones are applied, up to
# this many (and REPORT_READ_AHEAD_BYTES, one message always fits): the ones
# waiting are applied together in one transaction.
REPORT_RUN_MAX_MESSAGES = 64
REPORT_READ_AHEAD_BYTES = 1 * MIB
# The server records at most one progress event per job in this interval.
PROGRESS_EVENT_MIN_INTERVAL_SECONDS = 0.2
# StreamResults replays stored events in batches of at most this many bytes
# (and REPLAY_BATCH_EVENTS events), so a follower costs flat memory.
REPLAY_BATCH_BYTES = 1 * MIB
REPLAY_BATCH_EVENTS = 200


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on SubmitVideo uploads, in time, number and space."""

    max_upload_bytes: int = 4 * GIB
    # Longest wait for the next upload message before the stream is ended.
    idle_timeout_seconds: float = 30.0
    max_concurrent_uploads: int = 64
    max_uploads_per_peer: int = 32
    # Uploads in progress at once for one tenant (0: no limit of its own).
    max_uploads_per_tenant: int = 32
    # Uploads are refused when they would leave less free space than this.
    min_free_bytes: int = 256 * MIB
    # Most bytes of inputs stored at once (0: no quota).
    storage_quota_bytes: int = 0


@dataclass(frozen=True)
class ReportLimits:
    """Bounds on what one job's worker may report."""

    max_partial_result_bytes: int = 256 * KIB
    partial_results_per_second: float = 10.0
    partial_result_burst: int = 40
    max_partial_result_bytes_per_job: int = 64 * MIB
    max_events_per_job: int = 100_000
