"""The line protocol between a worker and its warm pipeline child processes.

A child says `ready` (with its pid) once it imported the pipelines. The
worker then writes one JSON line (a task) at a time to its stdin; the child
runs it and writes JSON lines to its stdout, each an object with a `type`,
ending the task with its terminal line and then `idle`. Closing stdin ends an
idle child; the worker kills a child to stop its job, and a child dies with
its worker (PR_SET_PDEATHSIG).

- `ready`: pid (once, at start)
- `progress`: fraction, stage
- `partial`: pipeline, data
- `completed`: output_key, artifacts [{key, media_type, size_bytes}], summary
- `failed`: code, message, reason, retryable (a job that outgrows the memory
  limit: RESOURCE_EXHAUSTED / MEMORY_LIMIT_EXCEEDED, not retryable)
- `idle`: rss_bytes, near_memory_limit (after each task's terminal line: the
  worker recycles a child that grew too large or came near its limit)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChildTask:
    """What a child process is asked to do, and the limits it runs under.

    `input_format` is the container format recorded for the job's input (a
    name in `containers.ALLOWED_FORMATS`), or empty for a job accepted before
    formats were recorded: the child then identifies it from the input's
    first bytes. `max_frame_pixels` is the largest picture decoded.
    `memory_limit_bytes` caps the child's address space (RLIMIT_AS); 0 means
    no limit. An empty `storage_url` means storage is reached through
    job-service's BlobService at `job_service_address`, proving the job with
    `lease_token`, with inputs spooled in `spool_dir`.
    """

    storage_url: str
    job_id: str
    attempt: int
    input_key: str
    pipeline: str
    parameters: dict[str, Any]
    output_prefix: str
    input_format: str
    max_frame_pixels: int
    memory_limit_bytes: int
    job_service_address: str = ""
    lease_token: str = ""
    spool_dir: str = ""
    # How to reach job-service: token and TLS files (common.security.ClientSecurity).
    credentials: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)
