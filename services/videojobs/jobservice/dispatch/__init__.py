"""Dispatch: leases on job attempts, pushed to connected workers.

- `sessions`: the live worker streams of this replica (in memory);
- `dispatcher`: hands queued jobs to sessions with free slots;
- `reaper`: lease expiry, execution and queue timeouts;
- `outputs`: checks what completions claim is stored;
- `worker_reports`: what a worker says on its stream, once checked;
- `coordinator`: the application service behind DispatchService.Connect
  (it applies a run of one worker's reports in one transaction).

Every job transition they make goes through `jobservice.lifecycle`; everything
about jobs lives in the database, so any replica (or a restarted one) carries
on from there. Replicas learn of each other's changes through notices.
"""

from videojobs.jobservice.dispatch.coordinator import DispatchCoordinator, DispatchSettings
from videojobs.jobservice.dispatch.sessions import (
    MAX_CONCURRENT_JOBS,
    SESSION_REPLACED,
    StopOrder,
    WorkerHello,
    WorkerSession,
    check_worker_identity,
    validate_hello,
)

__all__ = [
    "MAX_CONCURRENT_JOBS",
    "SESSION_REPLACED",
    "DispatchCoordinator",
    "DispatchSettings",
    "StopOrder",
    "WorkerHello",
    "WorkerSession",
    "check_worker_identity",
    "validate_hello",
]
