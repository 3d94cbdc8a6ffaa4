"""`JobClient`: the blocking client of job-service, over a sync `grpc.Channel`."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
from videojobs.client.readers import BlobReader
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


class JobClient:
    """Blocking client of job-service. Use it as a context manager, or call
    `close()`; a channel passed in is left open for its owner.

    Every failed call raises `VideoJobsError`. `timeout` (seconds) bounds the
    unary calls (get_status, cancel, list_jobs, blob info); uploads, reads
    and event streams take as long as they take. `retry` says how broken
    uploads and reads are resumed (see `RetryPolicy`).

    Credentials: `token` is sent as `authorization: Bearer <token>` with
    every call; without it the client uses `$VIDEOJOBS_TOKEN` when set
    (`token=""`: no token at all). The client's channel uses TLS when given
    `credentials` (any `grpc.ChannelCredentials`) or the PEM files `tls_ca`
    (the CA that signed the server's certificate; default the system roots)
    and, for mutual TLS, `tls_cert` and `tls_key`. A `channel` passed in is
    used as it is: only an explicit `token` is added to its calls, and TLS
    arguments are refused (make the channel with them instead).

    Raises:
        CredentialsError: a token or PEM file cannot be used (raised here,
            before any call).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        channel: grpc.Channel | None = None,
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
        self._channel = channel if channel is not None else self._credentials.sync_channel(address)
        self._stub = self._credentials.stub(job_service_pb2_grpc.JobServiceStub, self._channel)
        self._blobs = self._credentials.stub(blob_service_pb2_grpc.BlobServiceStub, self._channel)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

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

        The file is read a chunk at a time, first for its size and SHA-256
        (sent for the server to check), then to upload. A file larger than
        `chunk_size` is written resumably to a staged upload
        (`uploads/<32 hex digits>`, BlobService.Write): when the connection
        drops (UNAVAILABLE), a deadline runs out or the stream stalls, the
        client asks QueryWriteStatus how much the server committed and goes on
        from there, never sending committed bytes again; then SubmitVideo
        names the staged upload (`upload_key`). A file of at most one chunk
        goes in one SubmitVideo stream, repeated whole after such failures.
        Retries follow the client's `retry` policy.

        Without `request_id` one is generated, so a SubmitVideo repeated after
        its answer was lost returns the job the first one created, never a
        second job (AIP-155); the job shows it as its `request_id`.

        `on_upload_progress(bytes, total)` is called with the bytes committed
        plus those sent since (after a resumption it steps back to what the
        server kept), on gRPC's sending thread. Returns the created job (or,
        for a repeated `request_id`, the existing one).

        Raises:
            OSError: the file cannot be read (or changed while uploading).
            ValueError: bad `parameters` or `chunk_size`.
            VideoJobsError: the server refused the upload, or retries ran out.
        """
        check_chunk_size(chunk_size)
        # A file of more than one chunk is hashed as it is sent, not before.
        upload = UploadFile.measure(path)
        if upload.size <= chunk_size:
            upload = UploadFile.describe(path)
        request_id = request_id or new_request_id()
        # Built before any byte goes: bad parameters fail here, not mid-upload.
        header = build_upload_header(
            upload, pipeline=pipeline, parameters=parameters, request_id=request_id, options=options
        )
        with _UploadConnection(self) as connection:
            if upload.size <= chunk_size:
                return self._submit_in_one_stream(
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
            return self._submit_staged(
                connection, upload, header, chunk_size=chunk_size, on_progress=on_upload_progress
            )

    def _submit_in_one_stream(
        self, connection: _UploadConnection, upload: UploadRequestStream
    ) -> job_pb2.Job:
        backoff = self.retry.backoff()
        while True:
            try:
                # At most one chunk: an attempt that outlasts the stall timeout
                # is stuck on a dead connection.
                return connection.jobs.SubmitVideo(
                    iter(upload), timeout=self.retry.stall_timeout
                ).job
            except grpc.RpcError as rpc_error:
                if upload.read_error is not None:
                    raise upload.read_error from rpc_error
                error = VideoJobsError.from_rpc_error(rpc_error)
                if not is_transient(error):
                    raise error from rpc_error
            self._pause(error, backoff, connection)

    def _submit_staged(
        self,
        connection: _UploadConnection,
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
        self._write_resumably(connection, session, backoff)
        header.upload_key = session.key
        header.expected_sha256 = session.verified_sha256()
        request = job_service_pb2.SubmitVideoRequest(header=header)
        retried = uploaded_again = False
        while True:
            try:
                # No deadline: a server without a running hash of the staged
                # upload (written partly to another replica) reads it whole.
                return connection.jobs.SubmitVideo(iter([request])).job
            except grpc.RpcError as rpc_error:
                error = VideoJobsError.from_rpc_error(rpc_error)
                if retried and not uploaded_again and staged_upload_lost(error):
                    # See `staged_upload_lost`: upload again, once, under a new key.
                    uploaded_again, retried = True, False
                    session = ResumableUpload(
                        upload, new_upload_key(), chunk_size=chunk_size, on_progress=on_progress
                    )
                    self._write_resumably(connection, session, self.retry.backoff())
                    request.header.upload_key = session.key
                    request.header.expected_sha256 = session.verified_sha256()
                    continue
                if not is_transient(error):
                    raise error from rpc_error
            self._pause(error, backoff, connection)
            retried = True

    def _write_resumably(
        self, connection: _UploadConnection, session: ResumableUpload, backoff: RetryBackoff
    ) -> None:
        """Writes the file to its staged-upload key, resuming after breaks."""
        session.start()
        while True:
            try:
                if session.streams:
                    # A retry: the server says where the write stands.
                    with rpc_errors_raised_as_videojobs_errors():
                        status = connection.blobs.QueryWriteStatus(
                            blob_service_pb2.QueryWriteStatusRequest(key=session.key),
                            timeout=self.retry.stall_timeout,
                        )
                    if session.record_status(status.committed_size, status.complete):
                        backoff.progressed()
                    if session.complete:
                        return
                response = self._write_stream(connection, session)
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
            self._pause(error, backoff, connection)

    def _write_stream(
        self, connection: _UploadConnection, session: ResumableUpload
    ) -> blob_service_pb2.WriteResponse:
        """One Write stream from the committed size, cancelled when it stalls."""
        future = connection.blobs.Write.future(session.requests())
        stall_timeout = self.retry.stall_timeout
        try:
            while True:
                try:
                    return future.result(timeout=watch_interval(stall_timeout))
                except grpc.FutureTimeoutError:
                    if stall_timeout is not None and session.idle_seconds() > stall_timeout:
                        future.cancel()
                        raise stalled_error(stall_timeout, "the upload stream") from None
        except grpc.FutureCancelledError as cancelled:
            if session.read_error is not None:
                raise session.read_error from cancelled
            raise VideoJobsError(grpc.StatusCode.CANCELLED, "the upload was cancelled") from None
        except grpc.RpcError as rpc_error:
            if session.read_error is not None:
                raise session.read_error from rpc_error
            raise VideoJobsError.from_rpc_error(rpc_error) from rpc_error
        finally:
            if not future.done():
                future.cancel()

    def _pause(
        self, error: VideoJobsError, backoff: RetryBackoff, connection: _UploadConnection
    ) -> None:
        """Waits before the next attempt; raises `error` when retries ran out."""
        delay = backoff.next_delay(at_least=error.retry_delay)
        if delay is None:
            raise error
        if is_stall(error):
            connection.renew()
        time.sleep(delay)

    def open_blob(self, key: str, *, offset: int = 0, limit: int = 0) -> BlobReader:
        """Opens a stored object for reading, as a binary file streamed chunk by
        chunk (see `BlobReader`): a job's input, or the result document and
        artifacts of a job that SUCCEEDED. `offset` and `limit` (0: to the
        end) select a range. A broken stream resumes from the byte it reached.

        Raises:
            VideoJobsError: NOT_FOUND for a key that holds nothing this caller
                may read, INVALID_ARGUMENT for a malformed key or range.
        """
        return BlobReader(self._blobs, key, offset=offset, limit=limit, retry=self.retry)

    def read_result(self, job_id: str) -> dict[str, Any]:
        """The job's result document (the JSON object at its `output_key`),
        parsed, keys in their stored order.

        Raises:
            VideoJobsError: FAILED_PRECONDITION, reason `JOB_NOT_SUCCEEDED`,
                when the job has not SUCCEEDED (metadata `state` says where it
                is; for a failed job the message says why); NOT_FOUND for an
                unknown job; DATA_LOSS when the document is not a JSON object.
        """
        key = require_result(self.get_status(job_id))
        with self.open_blob(key) as reader:
            data = reader.readall()
        return parse_result_document(data, key)

    def download(
        self,
        job_id: str,
        directory: str | os.PathLike[str],
        *,
        on_progress: DownloadProgressCallback | None = None,
    ) -> list[Path]:
        """Writes the result document and every artifact of a SUCCEEDED job
        under `directory` (created if needed), each at its key's path below
        the winning attempt's prefix: `results.json`, `thumbnails/0000.jpg`.

        Each file is streamed to a temporary file beside its target and
        renamed into place once its size checks out, so no half file is ever
        seen; an existing file of the same name is replaced. Nothing is
        written outside `directory` (keys that would are refused).
        `on_progress(bytes_done, bytes_total)` follows the whole download.
        Returns the written paths, the result document first.

        Raises:
            VideoJobsError: as `read_result` when the job has no result;
                DATA_LOSS (`SIZE_MISMATCH`) when an object's size is not the
                one stated; INTERNAL (`UNSAFE_KEY`) for a key outside the job.
            OSError: `directory` or a file in it cannot be written.
        """
        items = plan_download(self.get_status(job_id))
        with rpc_errors_raised_as_videojobs_errors():
            info = self._blobs.GetBlobInfo(
                blob_service_pb2.GetBlobInfoRequest(key=items[0].key), timeout=self.timeout
            )
        items[0] = dataclasses.replace(items[0], expected_size=info.size_bytes)
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        tally = DownloadTally(sum(item.expected_size or 0 for item in items), on_progress)
        tally.start()
        return [
            self._download_one(item, download_target(root, item.relative_path), tally)
            for item in items
        ]

    def _download_one(self, item: DownloadItem, target: Path, tally: DownloadTally) -> Path:
        file = AtomicFile(target)
        try:
            with self.open_blob(item.key) as reader:
                for chunk in reader.iter_chunks():
                    file.write(chunk)
                    tally.add(len(chunk))
                expected = item.expected_size if item.expected_size is not None else reader.size
                if file.size != expected or reader.size != expected:
                    raise size_mismatch(item.key, expected, file.size)
            return file.commit()
        except BaseException:
            file.discard()
            raise

    def get_status(self, job_id: str) -> job_pb2.Job:
        """Returns the job."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.GetStatusRequest(job_id=job_id)
            return self._stub.GetStatus(request, timeout=self.timeout).job

    def list_pipelines(self) -> job_service_pb2.ListPipelinesResponse:
        """Every pipeline job-service accepts, with its parameters' JSON Schema
        (`pipelines`), and the shared sampling parameters' schema."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.ListPipelinesRequest()
            return self._stub.ListPipelines(request, timeout=self.timeout)

    def list_workers(self) -> list[job_service_pb2.WorkerInfo]:
        """The workers connected to job-service: pipelines, slots, draining,
        last heartbeat and the jobs they hold (of your tenant)."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.ListWorkersRequest()
            return list((self._stub.ListWorkers(request, timeout=self.timeout)).workers)

    def get_stats(
        self, window: float | None = None, tenant: str = ""
    ) -> job_service_pb2.GetStatsResponse:
        """Counts and timings of the jobs created in the last `window` seconds
        (default: one hour), in total and per pipeline set."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.GetStatsRequest(tenant=tenant)
            if window is not None:
                request.window.FromNanoseconds(int(window * 1e9))
            return self._stub.GetStats(request, timeout=self.timeout)

    def cancel(self, job_id: str, reason: str = "") -> job_pb2.Job:
        """Cancels the job and returns it (FAILED_PRECONDITION if it already ended)."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.CancelJobRequest(job_id=job_id, reason=reason)
            return self._stub.CancelJob(request, timeout=self.timeout).job

    def delete(self, job_id: str) -> int:
        """Deletes an ended job with everything it stored; returns how many
        stored objects went (FAILED_PRECONDITION for a queued or running job)."""
        with rpc_errors_raised_as_videojobs_errors():
            request = job_service_pb2.DeleteJobRequest(job_id=job_id)
            return self._stub.DeleteJob(request, timeout=self.timeout).deleted_blobs

    def list_jobs(
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
            response = self._stub.ListJobs(request, timeout=self.timeout)
        return list(response.jobs), response.next_page_token

    def iter_jobs(
        self,
        *,
        states: Iterable[str | int] = (),
        pipeline: str = "",
        page_size: int = 0,
        tenant: str = "",
    ) -> Iterator[job_pb2.Job]:
        """Yields every matching job, newest first, fetching page after page."""
        states = tuple(states)
        page_token = ""
        while True:
            jobs, page_token = self.list_jobs(
                states=states,
                pipeline=pipeline,
                page_size=page_size,
                page_token=page_token,
                tenant=tenant,
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
        on_reconnect: ReconnectCallback | None = None,
    ) -> Iterator[job_pb2.JobEvent]:
        """Yields the job's events after `after_sequence`, stored ones first,
        then live ones, ending after the terminal event.

        When the stream breaks with UNAVAILABLE (say, the server restarted)
        and `reconnect` is true, it reconnects with exponential backoff
        (0.1 s doubling to 5 s, for up to `reconnect_timeout` seconds) and
        resumes after the last event seen, so no event is lost or repeated.
        `on_reconnect`, if given, hears each reconnect first (why, and the
        seconds until the next try), so a caller can say it is waiting.
        Stopping the iteration early cancels the stream.

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
        yield from self._follow(cursor)

    def _follow(self, cursor: FollowCursor) -> Iterator[job_pb2.JobEvent]:
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
        cursor = FollowCursor(job_id, include_final_job=True)
        for event in self._follow(cursor):
            if on_event is not None:
                on_event(event)
        # The job as it ended came with the terminal event (a server that
        # does not send it is asked).
        return cursor.final_job or self.get_status(job_id)


class _UploadConnection:
    """The stubs one upload's calls go through: the client's own, until a
    stall or a deadline suggests its connection is dead. Then, if the client
    made its channel (it knows the address), the upload moves to a private
    channel with its own connection: a new call on the old channel would
    only queue behind the dead one. A channel passed in by the caller is
    kept; its keepalive settings decide when gRPC notices a dead connection.
    """

    def __init__(self, client: JobClient) -> None:
        self._client = client
        self._private: grpc.Channel | None = None
        self.blobs = client._blobs
        self.jobs = client._stub

    def __enter__(self) -> _UploadConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._private is not None:
            self._private.close()

    def renew(self) -> None:
        """Moves the upload to a fresh connection (when the client owns its channel)."""
        if not self._client._owns_channel:
            return
        previous = self._private
        credentials = self._client._credentials
        self._private = credentials.sync_channel(
            self._client._address, options=FRESH_CONNECTION_OPTIONS
        )
        self.blobs = credentials.stub(blob_service_pb2_grpc.BlobServiceStub, self._private)
        self.jobs = credentials.stub(job_service_pb2_grpc.JobServiceStub, self._private)
        if previous is not None:
            previous.close()
