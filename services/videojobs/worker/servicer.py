"""WorkerService servicer: status and drain of this worker process."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from google.protobuf import duration_pb2, timestamp_pb2

from videojobs.common.grpc_errors import maps_service_errors
from videojobs.v1 import worker_service_pb2 as pb
from videojobs.v1 import worker_service_pb2_grpc
from videojobs.worker.agent import VERSION, WorkerAgent


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


class WorkerServicer(worker_service_pb2_grpc.WorkerServiceServicer):
    """Reports on the agent; DrainWorker starts a drain (the process exits when done)."""

    def __init__(self, agent: WorkerAgent, on_drain_requested: asyncio.Event) -> None:
        self._agent = agent
        self._on_drain_requested = on_drain_requested

    @maps_service_errors
    async def GetWorkerStatus(self, request, context) -> pb.GetWorkerStatusResponse:
        agent = self._agent
        uptime = duration_pb2.Duration()
        uptime.FromTimedelta(datetime.now(UTC) - agent.start_time)
        return pb.GetWorkerStatusResponse(
            worker_id=agent.settings.worker_id,
            pipelines=agent.pipelines,
            max_concurrent_jobs=agent.settings.concurrency,
            jobs=[
                pb.WorkerJob(
                    job_id=job.job_id,
                    attempt=job.attempt,
                    pipeline=job.pipeline,
                    progress_fraction=job.progress_fraction,
                    start_time=_timestamp(job.start_time),
                )
                for job in agent.jobs.values()
            ],
            uptime=uptime,
            connected=agent.connected,
            draining=agent.draining or self._on_drain_requested.is_set(),
            job_service_address=agent.settings.address,
            start_time=_timestamp(agent.start_time),
            version=VERSION,
        )

    @maps_service_errors
    async def DrainWorker(self, request, context) -> pb.DrainWorkerResponse:
        self._on_drain_requested.set()
        return pb.DrainWorkerResponse(jobs_remaining=len(self._agent.jobs))
