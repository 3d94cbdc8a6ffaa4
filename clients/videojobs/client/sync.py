"""`JobClient`: the blocking client of job-service, over a sync `grpc.Channel`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc

from videojobs.client.defaults import DEFAULT_ADDRESS, DEFAULT_CHUNK_SIZE, RECONNECT_TIMEOUT
from videojobs.client.errors import VideoJobsError, rpc_errors_raised_as_videojobs_errors
from videojobs.client.events import EventCallback, FollowCursor
from videojobs.client.requests import (
    JobOptions,
    UploadFile,
    UploadProgressCallback,
    UploadRequestStream,
    build_list_request,
)
from videojobs.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc


class JobClient:
    """Blocking client of job-service. Use it as a context manager, or call
    `close()`; a channel passed in is left open for its owner.

    Every failed call raises `VideoJobsError`. `timeout` (seconds) bounds the
    unary calls (get_status, cancel, list_jobs); uploads and event streams
    take as long as they take.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        channel: grpc.Channel | None = None,
        timeout: float | None = None,
    ) -> None:
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else grpc.insecure_channel(address)
        self._stub = job_service_pb2_grpc.JobServiceStub(self._channel)
        self.timeout = timeout

    def __enter__(self) -> JobClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel if this client created it."""
        if self._owns_channel:
            self._channel.close()

    def submit(
        self,
        path: str | os.PathLike[str],
        *,
        pipeline: str | Sequence[str] = "probe",
        parameters: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        options: JobOptions | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        on_upload_progress: UploadProgressCallback | None = None,
    ) -> job_pb2.Job:
        """Uploads the video at `path` and creates a job for it.

        The file is read twice, a chunk at a time: once for its size and
        SHA-256 (sent in the header for the server to check), once to upload.
        `on_upload_progress(bytes_sent, total)` is called as chunks go, on
        gRPC's sending thread. Returns the created job (or, for a repeated
        `request_id`, the existing one).

        Raises:
            OSError: the file cannot be read.
            ValueError: bad `parameters` or `chunk_size`.
            VideoJobsError: the server refused the upload.
        """
        upload = UploadRequestStream(
            UploadFile.describe(path),
            pipeline=pipeline,
            parameters=parameters,
            request_id=request_id,
            options=options,
            chunk_size=chunk_size,
            on_progress=on_upload_progress,
        )
        try:
            response = self._stub.SubmitVideo(iter(upload))
        except grpc.RpcError as error:
            if upload.read_error is not None:
                raise upload.read_error from error
            raise VideoJobsError.from_rpc_error(error) from error
        return response.job

    def get_status(self, job_id: str) -> job_pb2.Job:
        """Returns the job."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.GetStatusRequest(job_id=job_id)
            return self._stub.GetStatus(request, timeout=self.timeout).job

    def cancel(self, job_id: str, reason: str = "") -> job_pb2.Job:
        """Cancels the job and returns it (FAILED_PRECONDITION if it already ended)."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.CancelJobRequest(job_id=job_id, reason=reason)
            return self._stub.CancelJob(request, timeout=self.timeout).job

    def list_jobs(
        self,
        *,
        states: Iterable[str | int] = (),
        pipeline: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[job_pb2.Job], str]:
        """Returns one page of jobs, newest first, and the next page's token
        ("" on the last page). `states` are names (`queued`) or JobState values."""
        request = build_list_request(
            states=states, pipeline=pipeline, page_size=page_size, page_token=page_token
        )
        with rpc_errors_raised_as_videojobs_errors():
            response = self._stub.ListJobs(request, timeout=self.timeout)
        return list(response.jobs), response.next_page_token

    def iter_jobs(
        self,
        *,
        states: Iterable[str | int] = (),
        pipeline: str = "",
        page_size: int = 0,
    ) -> Iterator[job_pb2.Job]:
        """Yields every matching job, newest first, fetching page after page."""
        states = tuple(states)
        page_token = ""
        while True:
            jobs, page_token = self.list_jobs(
                states=states, pipeline=pipeline, page_size=page_size, page_token=page_token
            )
            yield from jobs
            if not page_token:
                return

    def follow(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        reconnect: bool = True,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
    ) -> Iterator[job_pb2.JobEvent]:
        """Yields the job's events after `after_sequence`, stored ones first,
        then live ones, ending after the terminal event.

        When the stream breaks with UNAVAILABLE (say, the server restarted)
        and `reconnect` is true, it reconnects with exponential backoff
        (0.1 s doubling to 5 s, for up to `reconnect_timeout` seconds) and
        resumes after the last event seen, so no event is lost or repeated.
        Stopping the iteration early cancels the stream.

        Raises:
            VideoJobsError: the call failed and is not (or no longer) retried.
        """
        cursor = FollowCursor(
            job_id,
            after_sequence=after_sequence,
            reconnect=reconnect,
            reconnect_timeout=reconnect_timeout,
        )
        while not cursor.finished:
            call = self._stub.StreamResults(cursor.request())
            try:
                for response in call:
                    event = cursor.accept(response)
                    if event is not None:
                        yield event
                    if cursor.finished:
                        return
                delay = cursor.delay_after_early_end()
                if delay is None:
                    return
            except grpc.RpcError as error:
                delay = cursor.delay_after_error(error)
            finally:
                call.cancel()
            time.sleep(delay)

    def wait(self, job_id: str, *, on_event: EventCallback | None = None) -> job_pb2.Job:
        """Follows the job to its end, calling `on_event` with each event,
        then returns the final job."""
        for event in self.follow(job_id):
            if on_event is not None:
                on_event(event)
        return self.get_status(job_id)
