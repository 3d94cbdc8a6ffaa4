"""`AsyncJobClient`: the asyncio client of job-service, over a `grpc.aio.Channel`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
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


class AsyncJobClient:
    """Asyncio client of job-service, the same API as `JobClient` with
    coroutines and async iterators. Use it as an async context manager, or
    await `close()`; a channel passed in is left open for its owner.

    Every failed call raises `VideoJobsError`. `timeout` (seconds) bounds the
    unary calls (get_status, cancel, list_jobs); uploads and event streams
    take as long as they take. The client may be created outside the event
    loop; its own channel is opened on first use, inside the loop.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float | None = None,
    ) -> None:
        self._address = address
        self._owns_channel = channel is None
        self._channel: grpc.aio.Channel | None = channel
        self._stub: job_service_pb2_grpc.JobServiceStub | None = (
            None if channel is None else job_service_pb2_grpc.JobServiceStub(channel)
        )
        self.timeout = timeout

    def _service(self) -> job_service_pb2_grpc.JobServiceStub:
        """The stub, creating the client's own channel on first use: a grpc.aio
        channel belongs to the event loop it is created in, so it is made
        inside the running loop rather than in `__init__`."""
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self._address)
            self._stub = job_service_pb2_grpc.JobServiceStub(self._channel)
        return self._stub

    async def __aenter__(self) -> AsyncJobClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel if this client created it (a later call opens a new one)."""
        if self._owns_channel and self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def submit(
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

        The file is read twice, a chunk at a time and in a worker thread: once
        for its size and SHA-256 (sent in the header for the server to check),
        once to upload. `on_upload_progress(bytes_sent, total)` is called on
        the event loop as chunks go. Returns the created job (or, for a
        repeated `request_id`, the existing one).

        Raises:
            OSError: the file cannot be read.
            ValueError: bad `parameters` or `chunk_size`.
            VideoJobsError: the server refused the upload.
        """
        upload = UploadRequestStream(
            await asyncio.to_thread(UploadFile.describe, path),
            pipeline=pipeline,
            parameters=parameters,
            request_id=request_id,
            options=options,
            chunk_size=chunk_size,
            on_progress=on_upload_progress,
        )
        try:
            response = await self._service().SubmitVideo(aiter(upload))
        except (grpc.RpcError, asyncio.CancelledError) as error:
            # grpc.aio cancels the call when the request iterator raises, so a
            # read error surfaces as a cancellation; report the read error.
            if upload.read_error is not None:
                raise upload.read_error from error
            if isinstance(error, grpc.RpcError):
                raise VideoJobsError.from_rpc_error(error) from error
            raise
        return response.job

    async def get_status(self, job_id: str) -> job_pb2.Job:
        """Returns the job."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.GetStatusRequest(job_id=job_id)
            return (await self._service().GetStatus(request, timeout=self.timeout)).job

    async def cancel(self, job_id: str, reason: str = "") -> job_pb2.Job:
        """Cancels the job and returns it (FAILED_PRECONDITION if it already ended)."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.CancelJobRequest(job_id=job_id, reason=reason)
            return (await self._service().CancelJob(request, timeout=self.timeout)).job

    async def list_jobs(
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
            response = await self._service().ListJobs(request, timeout=self.timeout)
        return list(response.jobs), response.next_page_token

    async def iter_jobs(
        self,
        *,
        states: Iterable[str | int] = (),
        pipeline: str = "",
        page_size: int = 0,
    ) -> AsyncIterator[job_pb2.Job]:
        """Yields every matching job, newest first, fetching page after page."""
        states = tuple(states)
        page_token = ""
        while True:
            jobs, page_token = await self.list_jobs(
                states=states, pipeline=pipeline, page_size=page_size, page_token=page_token
            )
            for job in jobs:
                yield job
            if not page_token:
                return

    async def follow(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        reconnect: bool = True,
        reconnect_timeout: float = RECONNECT_TIMEOUT,
    ) -> AsyncIterator[job_pb2.JobEvent]:
        """Yields the job's events after `after_sequence`, stored ones first,
        then live ones, ending after the terminal event.

        When the stream breaks with UNAVAILABLE (say, the server restarted)
        and `reconnect` is true, it reconnects with exponential backoff
        (0.1 s doubling to 5 s, for up to `reconnect_timeout` seconds) and
        resumes after the last event seen, so no event is lost or repeated.
        Stopping the iteration early (`aclose()`, or leaving an `async for`
        with `break` inside `contextlib.aclosing`) cancels the stream.

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
            call = self._service().StreamResults(cursor.request())
            try:
                async for response in call:
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
            await asyncio.sleep(delay)

    async def wait(self, job_id: str, *, on_event: EventCallback | None = None) -> job_pb2.Job:
        """Follows the job to its end, calling `on_event` with each event,
        then returns the final job."""
        events = self.follow(job_id)
        try:
            async for event in events:
                if on_event is not None:
                    on_event(event)
        finally:
            await events.aclose()
        return await self.get_status(job_id)
