"""`AsyncJobClient`: the asyncio client of job-service, over a `grpc.aio.Channel`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from videojobs.client.blobs import (
    AtomicFile,
    DownloadItem,
    DownloadProgressCallback,
    DownloadTally,
    download_target,
    parse_result_document,
    plan_download,
    require_result,
    size_mismatch,
)
from videojobs.client.credentials import ClientCredentials
from videojobs.client.defaults import DEFAULT_ADDRESS, DEFAULT_CHUNK_SIZE, RECONNECT_TIMEOUT
from videojobs.client.errors import VideoJobsError, rpc_errors_raised_as_videojobs_errors
from videojobs.client.events import EventCallback, FollowCursor, ReconnectCallback
from videojobs.client.readers import AsyncBlobReader
from videojobs.client.requests import (
    JobOptions,
    UploadFile,
    UploadProgressCallback,
    UploadRequestStream,
    build_list_request,
    build_upload_header,
    check_chunk_size,
)
from videojobs.client.retry import (
    RetryBackoff,
    RetryPolicy,
    is_stall,
    is_transient,
    stalled_error,
    write_may_resume,
)
from videojobs.client.uploads import (
    FRESH_CONNECTION_OPTIONS,
    ResumableUpload,
    new_request_id,
    new_upload_key,
    staged_upload_lost,
    watch_interval,
)
from videojobs.v1 import (
    blob_service_pb2,
    blob_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
)


class AsyncJobClient:
    """Asyncio client of job-service, the same API as `JobClient` with
    coroutines and async iterators. Use it as an async context manager, or
    await `close()`; a channel passed in is left open for its owner.

    Every failed call raises `VideoJobsError`. `timeout` (seconds) bounds the
    unary calls (get_status, cancel, list_jobs, blob info); uploads, reads
    and event streams take as long as they take. `retry` says how broken
    uploads and reads are resumed (see `RetryPolicy`). The client may be
    created outside the event loop; its own channel is opened on first use,
    inside the loop.

    Credentials as for `JobClient`: `token` (default `$VIDEOJOBS_TOKEN`) on
    every call; TLS from `credentials` or the PEM files `tls_ca`, `tls_cert`,
    `tls_key`; a `channel` passed in is used as it is.

    Raises:
        CredentialsError: a token or PEM file cannot be used (raised here,
            before any call).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
    ) -> None:
        self._address = address
        self._credentials = ClientCredentials.resolve(
            token=token,
            credentials=credentials,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            channel_given=channel is not None,
        )
        self._owns_channel = channel is None
        self._channel: grpc.aio.Channel | None = channel
        self._stub: job_service_pb2_grpc.JobServiceStub | None = None
        self._blobs: blob_service_pb2_grpc.BlobServiceStub | None = None
        if channel is not None:
            self._stub = self._credentials.stub(job_service_pb2_grpc.JobServiceStub, channel)
            self._blobs = self._credentials.stub(blob_service_pb2_grpc.BlobServiceStub, channel)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    def _service(self) -> job_service_pb2_grpc.JobServiceStub:
        """The stub, creating the client's own channel on first use: a grpc.aio
        channel belongs to the event loop it is created in, so it is made
        inside the running loop rather than in `__init__`."""
        if self._stub is None:
            self._channel = self._credentials.aio_channel(self._address)
            self._stub = self._credentials.stub(job_service_pb2_grpc.JobServiceStub, self._channel)
            self._blobs = self._credentials.stub(
                blob_service_pb2_grpc.BlobServiceStub, self._channel
            )
        return self._stub

    def _blob_service(self) -> blob_service_pb2_grpc.BlobServiceStub:
        """The BlobService stub, on the same channel as `_service`."""
        self._service()
        assert self._blobs is not None
        return self._blobs

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
            self._channel = self._stub = self._blobs = None

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

        As `JobClient.submit` (resumable staged upload for a file larger than
        `chunk_size`, one SubmitVideo stream otherwise, a generated
        `request_id` when none is given), with file reads in a worker thread.
        `on_upload_progress(bytes, total)` is called on the event loop.

        Raises:
            OSError: the file cannot be read (or changed while uploading).
            ValueError: bad `parameters` or `chunk_size`.
            VideoJobsError: the server refused the upload, or retries ran out.
        """
        check_chunk_size(chunk_size)
        # A file of more than one chunk is hashed as it is sent, not before.
        upload = await asyncio.to_thread(UploadFile.measure, path)
        if upload.size <= chunk_size:
            upload = await asyncio.to_thread(UploadFile.describe, path)
        request_id = request_id or new_request_id()
        # Built before any byte goes: bad parameters fail here, not mid-upload.
        header = build_upload_header(
            upload, pipeline=pipeline, parameters=parameters, request_id=request_id, options=options
        )
        connection = _AsyncUploadConnection(self)
        try:
            if upload.size <= chunk_size:
                return await self._submit_in_one_stream(
                    connection,
                    UploadRequestStream(
                        upload,
                        pipeline=pipeline,
                        parameters=parameters,
                        request_id=request_id,
                        options=options,
                        chunk_size=chunk_size,
                        on_progress=on_upload_progress,
                    ),
                )
            return await self._submit_staged(
                connection, upload, header, chunk_size=chunk_size, on_progress=on_upload_progress
            )
        finally:
            await connection.close()

    async def _submit_in_one_stream(
        self, connection: _AsyncUploadConnection, upload: UploadRequestStream
    ) -> job_pb2.Job:
        backoff = self.retry.backoff()
        while True:
            try:
                # At most one chunk: an attempt that outlasts the stall timeout
                # is stuck on a dead connection.
                response = await connection.jobs().SubmitVideo(
                    aiter(upload), timeout=self.retry.stall_timeout
                )
                return response.job
            except (grpc.RpcError, asyncio.CancelledError) as failure:
                # grpc.aio cancels the call when the request iterator raises, so a
                # read error surfaces as a cancellation; report the read error.
                if upload.read_error is not None:
                    raise upload.read_error from failure
                if not isinstance(failure, grpc.RpcError):
                    raise
                error = VideoJobsError.from_rpc_error(failure)
                if not is_transient(error):
                    raise error from failure
            await self._pause(error, backoff, connection)

    async def _submit_staged(
        self,
        connection: _AsyncUploadConnection,
        upload: UploadFile,
        header: job_service_pb2.UploadHeader,
        *,
        chunk_size: int,
        on_progress: UploadProgressCallback | None,
    ) -> job_pb2.Job:
        backoff = self.retry.backoff()
        session = ResumableUpload(
            upload, new_upload_key(), chunk_size=chunk_size, on_progress=on_progress
        )
        await self._write_resumably(connection, session, backoff)
        header.upload_key = session.key
        header.expected_sha256 = await asyncio.to_thread(session.verified_sha256)
        request = job_service_pb2.SubmitVideoRequest(header=header)
        retried = uploaded_again = False
        while True:
            try:
                # No deadline: a server without a running hash of the staged
                # upload (written partly to another replica) reads it whole.
                return (await connection.jobs().SubmitVideo(iter([request]))).job
            except grpc.RpcError as rpc_error:
                error = VideoJobsError.from_rpc_error(rpc_error)
                if retried and not uploaded_again and staged_upload_lost(error):
                    # See `staged_upload_lost`: upload again, once, under a new key.
                    uploaded_again, retried = True, False
                    session = ResumableUpload(
                        upload, new_upload_key(), chunk_size=chunk_size, on_progress=on_progress
                    )
                    await self._write_resumably(connection, session, self.retry.backoff())
                    request.header.upload_key = session.key
                    request.header.expected_sha256 = await asyncio.to_thread(
                        session.verified_sha256
                    )
                    continue
                if not is_transient(error):
                    raise error from rpc_error
            await self._pause(error, backoff, connection)
            retried = True

    async def _write_resumably(
        self, connection: _AsyncUploadConnection, session: ResumableUpload, backoff: RetryBackoff
    ) -> None:
        """Writes the file to its staged-upload key, resuming after breaks."""
        session.start()
        while True:
            try:
                if session.streams:
                    # A retry: the server says where the write stands.
                    with rpc_errors_raised_as_videojobs_errors():
                        status = await connection.blobs().QueryWriteStatus(
                            blob_service_pb2.QueryWriteStatusRequest(key=session.key),
                            timeout=self.retry.stall_timeout,
                        )
                    if session.record_status(status.committed_size, status.complete):
                        backoff.progressed()
                    if session.complete:
                        return
                response = await self._write_stream(connection, session)
                if session.record_status(response.committed_size, response.complete):
                    backoff.progressed()
                if session.complete:
                    return
                if session.stream_answered():
                    continue  # the head was accepted: the rest follows at once
                error = VideoJobsError(
                    grpc.StatusCode.UNAVAILABLE, "the write stream ended before the upload finished"
                )
            except VideoJobsError as failure:
                if not write_may_resume(failure):
                    raise
                error = failure
            await self._pause(error, backoff, connection)

    async def _write_stream(
        self, connection: _AsyncUploadConnection, session: ResumableUpload
    ) -> blob_service_pb2.WriteResponse:
        """One Write stream from the committed size, cancelled when it stalls."""
        call = connection.blobs().Write(session.arequests())

        async def response() -> blob_service_pb2.WriteResponse:
            return await call

        waiter = asyncio.ensure_future(response())
        stall_timeout = self.retry.stall_timeout
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=watch_interval(stall_timeout))
                if done:
                    break
                if stall_timeout is not None and session.idle_seconds() > stall_timeout:
                    call.cancel()
                    raise stalled_error(stall_timeout, "the upload stream")
            try:
                return waiter.result()
            except asyncio.CancelledError as cancelled:
                # gRPC cancels the call when the request iterator fails.
                if session.read_error is not None:
                    raise session.read_error from cancelled
                raise VideoJobsError(
                    grpc.StatusCode.CANCELLED, "the upload was cancelled"
                ) from None
            except grpc.RpcError as rpc_error:
                if session.read_error is not None:
                    raise session.read_error from rpc_error
                raise VideoJobsError.from_rpc_error(rpc_error) from rpc_error
        finally:
            if not waiter.done():
                call.cancel()
                waiter.cancel()

    async def _pause(
        self, error: VideoJobsError, backoff: RetryBackoff, connection: _AsyncUploadConnection
    ) -> None:
        """Waits before the next attempt; raises `error` when retries ran out."""
        delay = backoff.next_delay(at_least=error.retry_delay)
        if delay is None:
            raise error
        if is_stall(error):
            await connection.renew()
        await asyncio.sleep(delay)

    def open_blob(self, key: str, *, offset: int = 0, limit: int = 0) -> AsyncBlobReader:
        """A stored object as an async iterator of its bytes, chunk by chunk
        (see `AsyncBlobReader`): a job's input, or the result document and
        artifacts of a job that SUCCEEDED. `offset` and `limit` (0: to the
        end) select a range. A broken stream resumes from the byte it reached::

            async with client.open_blob(key) as blob:   # NOT_FOUND raises here
                async for chunk in blob:
                    ...

        Raises (when opened or iterated):
            VideoJobsError: NOT_FOUND for a key that holds nothing this caller
                may read, INVALID_ARGUMENT for a malformed key or range.
        """
        return AsyncBlobReader(
            self._blob_service, key, offset=offset, limit=limit, retry=self.retry
        )

    async def read_result(self, job_id: str) -> dict[str, Any]:
        """The job's result document, parsed; see `JobClient.read_result`.

        Raises:
            VideoJobsError: FAILED_PRECONDITION, reason `JOB_NOT_SUCCEEDED`,
                when the job has not SUCCEEDED; NOT_FOUND for an unknown job;
                DATA_LOSS when the document is not a JSON object.
        """
        key = require_result(await self.get_status(job_id))
        async with self.open_blob(key) as reader:
            data = await reader.read_all()
        return parse_result_document(data, key)

    async def download(
        self,
        job_id: str,
        directory: str | os.PathLike[str],
        *,
        on_progress: DownloadProgressCallback | None = None,
    ) -> list[Path]:
        """Writes the result document and every artifact of a SUCCEEDED job
        under `directory`; see `JobClient.download`. File writes run in a
        worker thread; `on_progress(bytes_done, bytes_total)` on the loop.

        Raises:
            VideoJobsError: as `JobClient.download`.
            OSError: `directory` or a file in it cannot be written.
        """
        items = plan_download(await self.get_status(job_id))
        with rpc_errors_raised_as_videojobs_errors():
            info = await self._blob_service().GetBlobInfo(
                blob_service_pb2.GetBlobInfoRequest(key=items[0].key), timeout=self.timeout
            )
        items[0] = dataclasses.replace(items[0], expected_size=info.size_bytes)
        root = Path(directory)
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        tally = DownloadTally(sum(item.expected_size or 0 for item in items), on_progress)
        tally.start()
        written = []
        for item in items:
            target = await asyncio.to_thread(download_target, root, item.relative_path)
            written.append(await self._download_one(item, target, tally))
        return written

    async def _download_one(self, item: DownloadItem, target: Path, tally: DownloadTally) -> Path:
        file = await asyncio.to_thread(AtomicFile, target)
        try:
            async with self.open_blob(item.key) as reader:
                async for chunk in reader:
                    await asyncio.to_thread(file.write, chunk)
                    tally.add(len(chunk))
                size = reader.size or 0
            expected = item.expected_size if item.expected_size is not None else size
            if file.size != expected or size != expected:
                raise size_mismatch(item.key, expected, file.size)
            return await asyncio.to_thread(file.commit)
        except BaseException:
            await asyncio.to_thread(file.discard)
            raise

    async def get_status(self, job_id: str) -> job_pb2.Job:
        """Returns the job."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.GetStatusRequest(job_id=job_id)
            return (await self._service().GetStatus(request, timeout=self.timeout)).job

    async def list_pipelines(self) -> job_service_pb2.ListPipelinesResponse:
        """Every pipeline job-service accepts, with its parameters' JSON Schema
        (`pipelines`), and the shared sampling parameters' schema."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.ListPipelinesRequest()
            return await self._service().ListPipelines(request, timeout=self.timeout)

    async def list_workers(self) -> list[job_service_pb2.WorkerInfo]:
        """The workers connected to job-service: pipelines, slots, draining,
        last heartbeat and the jobs they hold (of your tenant)."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.ListWorkersRequest()
            return list((await self._service().ListWorkers(request, timeout=self.timeout)).workers)

    async def get_stats(
        self, window: float | None = None, tenant: str = ""
    ) -> job_service_pb2.GetStatsResponse:
        """Counts and timings of the jobs created in the last `window` seconds
        (default: one hour), in total and per pipeline set."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.GetStatsRequest(tenant=tenant)
            if window is not None:
                request.window.FromNanoseconds(int(window * 1e9))
            return await self._service().GetStats(request, timeout=self.timeout)

    async def cancel(self, job_id: str, reason: str = "") -> job_pb2.Job:
        """Cancels the job and returns it (FAILED_PRECONDITION if it already ended)."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.CancelJobRequest(job_id=job_id, reason=reason)
            return (await self._service().CancelJob(request, timeout=self.timeout)).job

    async def delete(self, job_id: str) -> int:
        """Deletes an ended job with everything it stored; returns how many
        stored objects went (FAILED_PRECONDITION for a queued or running job)."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.DeleteJobRequest(job_id=job_id)
            response = await self._service().DeleteJob(request, timeout=self.timeout)
            return response.deleted_blobs

    async def list_jobs(
        self,
        *,
        states: Iterable[str | int] = (),
        pipeline: str = "",
        page_size: int = 0,
        page_token: str = "",
        tenant: str = "",
    ) -> tuple[list[job_pb2.Job], str]:
        """Returns one page of jobs, newest first, and the next page's token
        ("" on the last page). `states` are names (`queued`) or JobState values.
        `tenant` narrows an administrator's list to one tenant (a client
        only ever sees its own tenant's jobs)."""
        request = build_list_request(
            states=states,
            pipeline=pipeline,
            page_size=page_size,
            page_token=page_token,
            tenant=tenant,
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
        tenant: str = "",
    ) -> AsyncIterator[job_pb2.Job]:
        """Yields every matching job, newest first, fetching page after page."""
        states = tuple(states)
        page_token = ""
        while True:
            jobs, page_token = await self.list_jobs(
                states=states,
                pipeline=pipeline,
                page_size=page_size,
                page_token=page_token,
                tenant=tenant,
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
        on_reconnect: ReconnectCallback | None = None,
    ) -> AsyncIterator[job_pb2.JobEvent]:
        """Yields the job's events after `after_sequence`, stored ones first,
        then live ones, ending after the terminal event.

        When the stream breaks with UNAVAILABLE (say, the server restarted)
        and `reconnect` is true, it reconnects with exponential backoff
        (0.1 s doubling to 5 s, for up to `reconnect_timeout` seconds) and
        resumes after the last event seen, so no event is lost or repeated.
        `on_reconnect`, if given, hears each reconnect first (why, and the
        seconds until the next try), so a caller can say it is waiting.
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
            on_reconnect=on_reconnect,
        )
        events = self._follow(cursor)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    async def _follow(self, cursor: FollowCursor) -> AsyncIterator[job_pb2.JobEvent]:
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
        cursor = FollowCursor(job_id, include_final_job=True)
        events = self._follow(cursor)
        try:
            async for event in events:
                if on_event is not None:
                    on_event(event)
        finally:
            await events.aclose()
        # The job as it ended came with the terminal event (a server that
        # does not send it is asked).
        return cursor.final_job or await self.get_status(job_id)


class _AsyncUploadConnection:
    """The stubs one upload's calls go through; see the sync client's
    `_UploadConnection` for why a stalled upload moves to a private channel."""

    def __init__(self, client: AsyncJobClient) -> None:
        self._client = client
        self._private: grpc.aio.Channel | None = None
        self._jobs: job_service_pb2_grpc.JobServiceStub | None = None
        self._blobs: blob_service_pb2_grpc.BlobServiceStub | None = None

    def jobs(self) -> job_service_pb2_grpc.JobServiceStub:
        """The JobService stub to use now."""
        return self._jobs or self._client._service()

    def blobs(self) -> blob_service_pb2_grpc.BlobServiceStub:
        """The BlobService stub to use now."""
        return self._blobs or self._client._blob_service()

    async def renew(self) -> None:
        """Moves the upload to a fresh connection (when the client owns its channel)."""
        if not self._client._owns_channel:
            return
        previous = self._private
        credentials = self._client._credentials
        self._private = credentials.aio_channel(
            self._client._address, options=FRESH_CONNECTION_OPTIONS
        )
        self._jobs = credentials.stub(job_service_pb2_grpc.JobServiceStub, self._private)
        self._blobs = credentials.stub(blob_service_pb2_grpc.BlobServiceStub, self._private)
        if previous is not None:
            await previous.close()

    async def close(self) -> None:
        """Closes the private channel, if one was opened."""
        if self._private is not None:
            await self._private.close()
            self._private = None
