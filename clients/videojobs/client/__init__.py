"""Python client of job-service (videojobs.v1.JobService).

`JobClient` blocks; `AsyncJobClient` is the same API for asyncio. Both raise
`VideoJobsError` for failed calls::

    from videojobs.client import JobClient

    with JobClient("127.0.0.1:50051") as client:
        job = client.submit("clip.mp4", pipeline="probe")  # resumable upload
        final = client.wait(job.job_id)
        document = client.read_result(job.job_id)         # the result JSON, parsed
        paths = client.download(job.job_id, "out")        # result + artifacts as files

On a network, job-service wants a token and TLS::

    JobClient("jobs.example:50051", token=token, tls_ca="ca.pem")
    JobClient(address, tls_ca="ca.pem", tls_cert="me.pem", tls_key="me.key")  # mutual TLS

Without `token`, `$VIDEOJOBS_TOKEN` is used when set (see `credentials`).
"""

from videojobs.client.aio import AsyncJobClient
from videojobs.client.blobs import UnsafeKeyError
from videojobs.client.credentials import (
    TOKEN_ENV_VAR,
    ClientCredentials,
    CredentialsError,
    read_token_file,
    tls_credentials,
)
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
from videojobs.client.typed import JobState, JobView, plain

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_CHUNK_SIZE",
    "TERMINAL_STATES",
    "TOKEN_ENV_VAR",
    "AsyncBlobReader",
    "AsyncJobClient",
    "BlobReader",
    "ClientCredentials",
    "CredentialsError",
    "JobClient",
    "JobOptions",
    "JobState",
    "JobView",
    "ReconnectBackoff",
    "RetryPolicy",
    "UnsafeKeyError",
    "UploadFile",
    "UploadRequestStream",
    "VideoJobsError",
    "is_terminal_event",
    "plain",
    "is_terminal_state",
    "job_state_name",
    "parse_job_state",
    "read_token_file",
    "struct_to_dict",
    "tls_credentials",
    "to_struct",
]
