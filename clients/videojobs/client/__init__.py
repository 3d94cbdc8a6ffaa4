"""Python client of job-service (videojobs.v1.JobService).

`JobClient` blocks; `AsyncJobClient` is the same API for asyncio. Both raise
`VideoJobsError` for failed calls::

    from videojobs.client import JobClient

    with JobClient("127.0.0.1:50051") as client:
        job = client.submit("clip.mp4", pipeline="probe")  # resumable upload
        final = client.wait(job.job_id)
        document = client.read_result(job.job_id)         # the result JSON, parsed
        paths = client.download(job.job_id, "out")        # result + artifacts as files
"""

from videojobs.client.aio import AsyncJobClient
from videojobs.client.blobs import UnsafeKeyError
from videojobs.client.defaults import DEFAULT_ADDRESS, DEFAULT_CHUNK_SIZE
from videojobs.client.errors import VideoJobsError
from videojobs.client.events import (
    TERMINAL_STATES,
    ReconnectBackoff,
    is_terminal_event,
    is_terminal_state,
)
from videojobs.client.readers import AsyncBlobReader, BlobReader
from videojobs.client.requests import (
    JobOptions,
    UploadFile,
    UploadRequestStream,
    job_state_name,
    parse_job_state,
    struct_to_dict,
    to_struct,
)
from videojobs.client.retry import RetryPolicy
from videojobs.client.sync import JobClient

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_CHUNK_SIZE",
    "TERMINAL_STATES",
    "AsyncBlobReader",
    "AsyncJobClient",
    "BlobReader",
    "JobClient",
    "JobOptions",
    "ReconnectBackoff",
    "RetryPolicy",
    "UnsafeKeyError",
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
