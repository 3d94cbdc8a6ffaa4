"""Python client of job-service (videojobs.v1.JobService).

`JobClient` blocks; `AsyncJobClient` is the same API for asyncio. Both raise
`VideoJobsError` for failed calls::

    from videojobs.client import JobClient

    with JobClient("127.0.0.1:50051") as client:
        job = client.submit("clip.mp4", pipeline="probe")
        final = client.wait(job.job_id)
"""

from videojobs.client.aio import AsyncJobClient
from videojobs.client.defaults import DEFAULT_ADDRESS, DEFAULT_CHUNK_SIZE
from videojobs.client.errors import VideoJobsError
from videojobs.client.events import (
    TERMINAL_STATES,
    ReconnectBackoff,
    is_terminal_event,
    is_terminal_state,
)
from videojobs.client.requests import (
    JobOptions,
    UploadFile,
    UploadRequestStream,
    job_state_name,
    parse_job_state,
    struct_to_dict,
    to_struct,
)
from videojobs.client.sync import JobClient

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_CHUNK_SIZE",
    "TERMINAL_STATES",
    "AsyncJobClient",
    "JobClient",
    "JobOptions",
    "ReconnectBackoff",
    "UploadFile",
    "UploadRequestStream",
    "VideoJobsError",
    "is_terminal_event",
    "is_terminal_state",
    "job_state_name",
    "parse_job_state",
    "struct_to_dict",
    "to_struct",
]
