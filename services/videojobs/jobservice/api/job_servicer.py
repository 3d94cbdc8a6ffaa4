"""JobService servicer: the client-facing API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from videojobs.common import errors
from videojobs.common.auth import current_principal
from videojobs.common.grpc_errors import maps_service_errors
from videojobs.common.logs import bind_log_fields
from videojobs.jobservice.api import convert
from videojobs.jobservice.cancel import CancelService
from videojobs.jobservice.discovery import Discovery
from videojobs.jobservice.domain import is_job_id
from videojobs.jobservice.events import EventFeed
from videojobs.jobservice.limits import MAX_LIST_PAGE_BYTES
from videojobs.jobservice.queries import JobQueries
from videojobs.jobservice.retention import JobDeletion
from videojobs.jobservice.submit import SubmitService, UploadHeader
from videojobs.jobservice.upload_admission import with_idle_timeout
from videojobs.v1 import job_service_pb2, job_service_pb2_grpc


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    """Translates JobService calls to the application services."""

    def __init__(
        self,
        submit: SubmitService,
        queries: JobQueries,
        feed: EventFeed,
        cancel: CancelService,
        deletion: JobDeletion,
        discovery: Discovery,
    ) -> None:
        self._submit = submit
        self._queries = queries
        self._feed = feed
        self._cancel = cancel
        self._deletion = deletion
        self._discovery = discovery
        self.accepting_submits = True

    @maps_service_errors
    async def SubmitVideo(self, request_iterator, context) -> job_service_pb2.SubmitVideoResponse:
        if not self.accepting_submits:
            raise errors.unavailable("the server is shutting down", "SHUTTING_DOWN")
        # Every message, the header included, must come within the idle timeout.
        request_iterator = with_idle_timeout(request_iterator, self._submit.idle_timeout_seconds)
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise errors.invalid_argument(
                "the first SubmitVideo message must carry the header",
                [("header", "is required in the first message")],
                reason="HEADER_MISSING",
            )
        header = first.header
        upload = UploadHeader(
            file_name=header.file_name,
            pipeline=header.pipeline,
            parameters=convert.struct_to_dict(header.parameters, "header.parameters"),
            request_id=header.request_id,
            expected_size_bytes=header.expected_size_bytes,
            expected_sha256=header.expected_sha256,
            max_attempts=header.max_attempts,
            priority=header.priority,
            execution_timeout_seconds=convert.seconds_or_none(
                header, "execution_timeout", "header.execution_timeout"
            ),
            queue_timeout_seconds=convert.seconds_or_none(
                header, "queue_timeout", "header.queue_timeout"
            ),
            pipelines=tuple(header.pipelines),
            upload_key=header.upload_key,
        )
        principal = current_principal()
        job = await self._submit.submit(
            upload, _chunks(request_iterator), context.peer(), principal.tenant
        )
        return job_service_pb2.SubmitVideoResponse(job=convert.job(job))

    @maps_service_errors
    async def GetStatus(self, request, context) -> job_service_pb2.GetStatusResponse:
        _bind_job(request.job_id)
        job = await self._queries.get(request.job_id, current_principal())
        return job_service_pb2.GetStatusResponse(job=convert.job(job))

    @maps_service_errors
    async def StreamResults(self, request, context) -> AsyncIterator:
        _bind_job(request.job_id)
        if request.after_sequence < 0:
            raise errors.invalid_argument(
                "after_sequence must not be negative", [("after_sequence", "must be 0 or more")]
            )
        principal = current_principal()
        async for event in self._feed.follow(request.job_id, request.after_sequence, principal):
            response = job_service_pb2.StreamResultsResponse(event=convert.event(event))
            if request.include_final_job and event.kind.is_terminal:
                # Deleted meanwhile, or unreadable now: the client asks GetStatus.
                with contextlib.suppress(errors.ServiceError):
                    final = await self._queries.get(request.job_id, principal)
                    response.final_job.CopyFrom(convert.job(final))
            yield response

    @maps_service_errors
    async def ListJobs(self, request, context) -> job_service_pb2.ListJobsResponse:
        states = []
        for index, value in enumerate(request.states):
            if value not in convert.STATE_FROM_PROTO:
                raise errors.invalid_argument(
                    "states holds an invalid value",
                    [(f"states[{index}]", "must be a JobState other than UNSPECIFIED")],
                )
            states.append(convert.STATE_FROM_PROTO[value])
        page = await self._queries.list(
            page_size=request.page_size,
            page_token=request.page_token,
            states=states,
            pipeline=request.pipeline,
            render=convert.job,
            size_of=lambda message: message.ByteSize(),
            max_page_bytes=MAX_LIST_PAGE_BYTES,
            principal=current_principal(),
            tenant=request.tenant,
        )
        return job_service_pb2.ListJobsResponse(
            jobs=page.jobs, next_page_token=page.next_page_token
        )

    @maps_service_errors
    async def CancelJob(self, request, context) -> job_service_pb2.CancelJobResponse:
        _bind_job(request.job_id)
        job = await self._cancel.cancel(request.job_id, request.reason, current_principal())
        return job_service_pb2.CancelJobResponse(job=convert.job(job))

    @maps_service_errors
    async def DeleteJob(self, request, context) -> job_service_pb2.DeleteJobResponse:
        _bind_job(request.job_id)
        removed = await self._deletion.delete(request.job_id, current_principal())
        return job_service_pb2.DeleteJobResponse(deleted_blobs=removed)

    @maps_service_errors
    async def ListPipelines(self, request, context) -> job_service_pb2.ListPipelinesResponse:
        return job_service_pb2.ListPipelinesResponse(
            pipelines=[convert.pipeline_info(p) for p in self._discovery.pipelines()],
            sampling_parameters_schema=convert.struct(
                self._discovery.sampling_spec().parameters_schema()
            ),
        )

    @maps_service_errors
    async def ListWorkers(self, request, context) -> job_service_pb2.ListWorkersResponse:
        workers = await self._discovery.workers(current_principal())
        return job_service_pb2.ListWorkersResponse(
            workers=[convert.worker_info(w) for w in workers]
        )

    @maps_service_errors
    async def GetStats(self, request, context) -> job_service_pb2.GetStatsResponse:
        seconds = convert.seconds_or_none(request, "window", "window")
        statistics = await self._discovery.statistics(
            None if seconds is None else timedelta(seconds=seconds),
            request.tenant,
            current_principal(),
        )
        return job_service_pb2.GetStatsResponse(
            window_start=convert.timestamp(statistics.window_start),
            total=convert.job_stats(statistics.total),
            pipelines=[convert.job_stats(figures) for figures in statistics.pipelines],
        )


def _bind_job(job_id: str) -> None:
    """Log lines of this call name the job (a well-formed id only)."""
    if is_job_id(job_id):
        bind_log_fields(job_id=job_id)


async def _chunks(request_iterator) -> AsyncIterator[bytes]:
    """The bytes of every message after the header; a second header is refused."""
    async for message in request_iterator:
        if message.WhichOneof("payload") == "header":
            raise errors.invalid_argument(
                "SubmitVideo got a second header",
                [("header", "only the first message may carry the header")],
                reason="HEADER_REPEATED",
            )
        yield message.chunk
