"""Request building shared by the sync and asyncio clients: Struct conversion,
job-state names, ListJobs requests and the SubmitVideo upload stream."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from google.protobuf import json_format, struct_pb2

from videojobs.client.defaults import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE
from videojobs.v1 import job_pb2, job_service_pb2

#: Called as `on_upload_progress(bytes_sent, total_bytes)` while uploading.
UploadProgressCallback = Callable[[int, int], None]

_STATE_PREFIX = "JOB_STATE_"


@dataclass(frozen=True)
class JobOptions:
    """How a job is run, beyond its pipeline and parameters (all optional).

    `max_attempts`: attempts whose failures are retried (0: the server's default);
    `priority`: -10 to 10, higher first; `execution_timeout` and `queue_timeout`:
    seconds (None: the pipeline's / server's default).
    """

    max_attempts: int = 0
    priority: int = 0
    execution_timeout: float | None = None
    queue_timeout: float | None = None

    def apply(self, header: job_service_pb2.UploadHeader) -> None:
        """Writes these options into an upload header."""
        header.max_attempts = self.max_attempts
        header.priority = self.priority
        if self.execution_timeout is not None:
            header.execution_timeout.FromNanoseconds(int(self.execution_timeout * 1e9))
        if self.queue_timeout is not None:
            header.queue_timeout.FromNanoseconds(int(self.queue_timeout * 1e9))


def to_struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct:
    """Converts a JSON-like dict (str keys; str, number, bool, None, list and
    dict values) to a `google.protobuf.Struct`. Numbers become doubles, as
    Struct has no integer type.

    Raises:
        TypeError: a key is not a string.
        ValueError: a value has a type Struct cannot hold.
    """
    struct = struct_pb2.Struct()
    if values:
        for key in values:
            if not isinstance(key, str):
                raise TypeError(f"parameter names must be strings, not {type(key).__name__}")
        struct.update(values)
    return struct


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Converts a `google.protobuf.Struct` back to a plain dict (numbers are floats)."""
    return json_format.MessageToDict(struct)


def parse_job_state(value: str | int) -> job_pb2.JobState.ValueType:
    """Returns the JobState for `queued`, `QUEUED` or `JOB_STATE_QUEUED`
    (any case), or for its number. JOB_STATE_UNSPECIFIED is refused, as the
    server refuses it in filters.

    Raises:
        ValueError: not a known, specified state.
    """
    valid = ", ".join(job_state_name(state).lower() for state in _SPECIFIED_STATES)
    if isinstance(value, int):
        if value not in _SPECIFIED_STATES:
            raise ValueError(f"unknown job state {value}; expected one of {valid}")
        return job_pb2.JobState.ValueType(value)
    name = value.strip().upper()
    if not name.startswith(_STATE_PREFIX):
        name = _STATE_PREFIX + name
    try:
        state = job_pb2.JobState.Value(name)
    except ValueError:
        state = job_pb2.JOB_STATE_UNSPECIFIED
    if state == job_pb2.JOB_STATE_UNSPECIFIED:
        raise ValueError(f"unknown job state {value!r}; expected one of {valid}")
    return state


def job_state_name(state: int) -> str:
    """Short display name of a JobState: `QUEUED`, `RUNNING`, ...; the number
    for a state newer than this client."""
    try:
        return job_pb2.JobState.Name(state).removeprefix(_STATE_PREFIX)
    except ValueError:
        return str(state)


_SPECIFIED_STATES = tuple(
    state for state in job_pb2.JobState.values() if state != job_pb2.JOB_STATE_UNSPECIFIED
)


def build_list_request(
    *,
    states: Iterable[str | int] = (),
    pipeline: str = "",
    page_size: int = 0,
    page_token: str = "",
    tenant: str = "",
) -> job_service_pb2.ListJobsRequest:
    """Builds a ListJobsRequest; `states` may be names or numbers (see
    `parse_job_state`); `tenant` filters an administrator's list."""
    return job_service_pb2.ListJobsRequest(
        states=[parse_job_state(state) for state in states],
        pipeline=pipeline,
        page_size=page_size,
        page_token=page_token,
        tenant=tenant,
    )


@dataclass(frozen=True)
class UploadFile:
    """A local file about to be uploaded, with the size and SHA-256 the server
    checks the upload against. `sha256` is empty for one only measured: a
    resumable upload hashes the bytes as it reads them to send them."""

    path: Path
    size: int
    sha256: str
    # st_mtime_ns when measured, to see whether the file changed meanwhile.
    modified_ns: int = 0

    @classmethod
    def measure(cls, path: str | os.PathLike[str]) -> UploadFile:
        """The file's size and modification time, without reading it.

        Raises:
            OSError: the file cannot be read (missing, a directory, no permission).
        """
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
        return cls(Path(path), info.st_size, "", info.st_mtime_ns)

    def check_unchanged(self) -> None:
        """Raises OSError when the file's size or modification time is no
        longer what `measure` saw: what was uploaded may mix two versions."""
        info = os.stat(self.path)
        if (info.st_size, info.st_mtime_ns) != (self.size, self.modified_ns):
            raise OSError(f"{self.path} changed while it was uploaded")

    @classmethod
    def describe(cls, path: str | os.PathLike[str], *, block_size: int = 1024 * 1024) -> UploadFile:
        """Reads the file once, a block at a time, to get its size and SHA-256.

        Raises:
            OSError: the file cannot be read (missing, a directory, no permission).
        """
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as file:
            while block := file.read(block_size):
                digest.update(block)
                size += len(block)
        return cls(Path(path), size, digest.hexdigest())


def check_chunk_size(chunk_size: int) -> None:
    """Raises ValueError unless 1 <= chunk_size <= 4 MiB (the server's limit)."""
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be 1 to {MAX_CHUNK_SIZE} bytes, not {chunk_size}")


def build_upload_header(
    upload: UploadFile,
    *,
    pipeline: str | Sequence[str],
    parameters: Mapping[str, Any] | None = None,
    request_id: str | None = None,
    options: JobOptions | None = None,
    upload_key: str = "",
) -> job_service_pb2.UploadHeader:
    """The SubmitVideo header for `upload`: its name, size and SHA-256 (which
    the server checks the bytes against), the pipelines, parameters and job
    options, and, for a staged upload, the key it was written to.

    Raises:
        TypeError, ValueError: `parameters` that a Struct cannot hold.
    """
    header = job_service_pb2.UploadHeader(
        file_name=upload.path.name,
        # Several pipelines (one decode) go in `pipelines`.
        pipeline=pipeline if isinstance(pipeline, str) else "",
        pipelines=[] if isinstance(pipeline, str) else list(pipeline),
        parameters=to_struct(parameters),
        request_id=request_id or "",
        expected_size_bytes=upload.size,
        expected_sha256=upload.sha256,
        upload_key=upload_key,
    )
    (options or JobOptions()).apply(header)
    return header


class UploadRequestStream:
    """The SubmitVideo request stream for one file: the header, then the file's
    bytes in chunks. Iterate it (sync) or async-iterate it (asyncio; file reads
    then run in a worker thread so the event loop never blocks on disk).

    The file is read again while streaming; the server compares what arrives
    with the size and SHA-256 in the header, so a file that changed in between
    is refused rather than silently uploaded.

    `on_progress(bytes_sent, total)` is called with 0 first, then after each
    chunk gRPC has taken. With the sync client it runs on gRPC's sending thread.

    gRPC swallows exceptions raised by a request iterator and just cancels the
    call, so a read error is kept in `read_error` for the caller to re-raise.
    """

    def __init__(
        self,
        upload: UploadFile,
        *,
        pipeline: str | Sequence[str],
        parameters: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        options: JobOptions | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        on_progress: UploadProgressCallback | None = None,
    ) -> None:
        check_chunk_size(chunk_size)
        self.upload = upload
        self.chunk_size = chunk_size
        self.header = job_service_pb2.SubmitVideoRequest(
            header=build_upload_header(
                upload,
                pipeline=pipeline,
                parameters=parameters,
                request_id=request_id,
                options=options,
            )
        )
        self.bytes_sent = 0
        self.read_error: OSError | None = None
        self._on_progress = on_progress

    def __iter__(self) -> Iterator[job_service_pb2.SubmitVideoRequest]:
        """Header, then chunks, reading the file synchronously."""
        self._start()
        yield self.header
        with self._open() as file:
            while chunk := self._read(file):
                yield job_service_pb2.SubmitVideoRequest(chunk=chunk)
                # Back here only once gRPC took the chunk and asks for the next.
                self._sent(len(chunk))

    async def __aiter__(self) -> AsyncIterator[job_service_pb2.SubmitVideoRequest]:
        """Header, then chunks, reading the file in a worker thread."""
        self._start()
        yield self.header
        file = await asyncio.to_thread(self._open)
        try:
            while chunk := await asyncio.to_thread(self._read, file):
                yield job_service_pb2.SubmitVideoRequest(chunk=chunk)
                self._sent(len(chunk))
        finally:
            file.close()

    def _start(self) -> None:
        self.bytes_sent = 0
        self.read_error = None
        if self._on_progress is not None:
            self._on_progress(0, self.upload.size)

    def _open(self) -> BinaryIO:
        try:
            return open(self.upload.path, "rb")
        except OSError as error:
            self.read_error = error
            raise

    def _read(self, file: BinaryIO) -> bytes:
        try:
            return file.read(self.chunk_size)
        except OSError as error:
            self.read_error = error
            raise

    def _sent(self, count: int) -> None:
        self.bytes_sent += count
        if self._on_progress is not None:
            self._on_progress(self.bytes_sent, self.upload.size)
