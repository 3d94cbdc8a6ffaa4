"""The worker's side of DispatchService.Connect.

Keeps one stream to job-service open (reconnecting with exponential backoff
and jitter), announces what it runs, starts assignments, relays their reports,
sends heartbeats, and stops jobs when told.

Results are delivered at least once: the terminal report of a job is kept for
a while after it is sent, announced as a held lease in the next hello and sent
again after a reconnect. job-service records it once (fencing) and answers a
duplicate with a StopJob, which ends the retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime

import grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from videojobs.common.aio import wait_event
from videojobs.common.errors import ERROR_DOMAIN
from videojobs.common.logs import bind_log_fields
from videojobs.common.tracing import job_span
from videojobs.storage import InvalidStorageKey, StorageKey
from videojobs.v1 import dispatch_service_pb2 as pb
from videojobs.v1 import dispatch_service_pb2_grpc, job_pb2
from videojobs.worker.metrics import WORKER_JOB_DURATION, WORKER_JOBS
from videojobs.worker.pool import ChildPool
from videojobs.worker.protocol import ChildTask
from videojobs.worker.runner import RunningJob, run_child
from videojobs.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

# Never heartbeat more often than this, whatever a Welcome says.
MIN_HEARTBEAT_SECONDS = 0.05

VERSION = "0.1.0"
BACKOFF_INITIAL_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0
UNCONFIRMED_RETENTION_SECONDS = 120.0
MAX_BACKLOG = 10_000
# A job's progress and partial results wait at most this long and go with
# what follows them; its end (completion, failure, stop) sends them at once.
# A short job's reports then reach job-service back to back and are applied
# in one transaction instead of one each. Followers see them this much later
# at most.
REPORT_WINDOW_SECONDS = 0.02
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
]
_CLOSE = object()


def _struct(value: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def _failure_status(line: dict) -> status_pb2.Status:
    code = line.get("code", "INTERNAL")
    status = status_pb2.Status(
        code=code_pb2.Code.Value(code) if code in code_pb2.Code.keys() else code_pb2.INTERNAL,
        message=line.get("message", "the pipeline failed"),
    )
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(
            reason=line.get("reason", "PIPELINE_FAILED"), domain=ERROR_DOMAIN
        )
    )
    return status


class WorkerAgent:
    """Runs the dispatch session and the jobs of one worker process."""

    def __init__(
        self,
        settings: WorkerSettings,
        pipelines: list[str],
        on_replaced: Callable[[], None] | None = None,
        report_window: float = REPORT_WINDOW_SECONDS,
    ) -> None:
        self.settings = settings
        self.replaced = False
        self._on_replaced = on_replaced
        self.pipelines = sorted(pipelines)
        # Keyed by lease token: a job whose old attempt is still stopping may
        # already be assigned again.
        self.jobs: dict[str, RunningJob] = {}
        self.connected = False
        self.draining = False
        # Where this worker serves WorkerService (set once bound), announced in
        # the hello so job-service's ListWorkers can say where to reach it.
        self.status_address = ""
        self.start_time = datetime.now(UTC)
        self._queue: asyncio.Queue | None = None
        self._backlog: list[pb.ConnectRequest] = []
        self._unconfirmed: dict[str, tuple[str, pb.ConnectRequest, float]] = {}
        self._job_tasks: set[asyncio.Task] = set()
        # Job reports waiting for the report window (see REPORT_WINDOW_SECONDS).
        self._held_reports: list[pb.ConnectRequest] = []
        self._report_flush: asyncio.TimerHandle | None = None
        self._report_window = report_window
        self._closing = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # Job-service's setting is the one source of truth: each Welcome says
        # it, and heartbeats start only after one.
        self._heartbeat_interval = 0.0
        # One warm pipeline process per slot, started by `start_pool()`.
        self.pool = ChildPool(
            settings.concurrency,
            memory_limit_bytes=settings.child_memory_limit_bytes,
            max_jobs_per_child=settings.child_max_jobs,
            max_rss_bytes=settings.child_max_rss_bytes,
        )
        memory = settings.child_memory_limit_mib
        log.info(
            "job processes: memory limit %s, pictures up to %d pixels",
            f"{memory} MiB" if memory else "none",
            settings.max_frame_pixels,
        )

    # -- public --------------------------------------------------------------

    async def start_pool(self) -> None:
        """Starts the warm pipeline processes and waits until they are ready:
        a worker says hello only when it can run a job at once."""
        if not self.pool.started:
            await self.pool.start()

    async def run(self) -> None:
        """Keeps a session with job-service until `close()` (starting the warm
        pipeline processes first, if `start_pool()` did not)."""
        await self.start_pool()
        backoff = BACKOFF_INITIAL_SECONDS
        while not self._closing.is_set():
            welcomed = False
            try:
                welcomed = await self._session()
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    log.error("job-service refused this worker: %s", exc.details())
                elif exc.code() == grpc.StatusCode.ABORTED and "replaced" in (exc.details() or ""):
                    # Another process connected with this worker's identity: two
                    # workers must never share one. This one stops.
                    log.error("%s; this worker stops", exc.details())
                    self.replaced = True
                    if self._on_replaced is not None:
                        self._on_replaced()
                    break
                elif exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    log.error(
                        "job-service does not accept this worker's credentials (%s: %s); retrying",
                        exc.code().name,
                        exc.details(),
                    )
                else:
                    log.warning("job-service unreachable (%s); retrying", exc.code().name)
            except Exception:  # noqa: BLE001 - the session loop must outlive any one session
                log.exception("dispatch session failed; reconnecting")
            if self._closing.is_set():
                break
            if welcomed:
                backoff = BACKOFF_INITIAL_SECONDS
            delay = backoff * random.uniform(0.8, 1.2)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
            await wait_event(self._closing, delay)

    async def drain(self, grace: float) -> None:
        """Takes no new jobs, lets running ones finish for `grace` seconds, stops
        (hands back) the rest, then closes the session."""
        if not self.draining:
            self.draining = True
            log.info("draining: %d job(s) in hand", len(self.jobs))
            self._send(self._heartbeat_message())
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        except TimeoutError:
            log.warning("drain grace over: handing back %d job(s)", len(self.jobs))
            await asyncio.gather(*(job.stop("drain") for job in list(self.jobs.values())))
            await self._idle.wait()
        await self.close()

    async def close(self) -> None:
        """Ends the session; jobs still held go back to job-service's queue."""
        self._closing.set()
        for job in list(self.jobs.values()):
            await job.stop("worker stopping")
        self._send_held_reports()
        if self._queue is not None:
            self._queue.put_nowait(_CLOSE)
        for task in list(self._job_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.pool.close()

    # -- session -------------------------------------------------------------

    async def _session(self) -> bool:
        """One Connect stream; returns whether job-service welcomed us."""
        queue: asyncio.Queue = asyncio.Queue()
        welcomed = False
        heartbeats: asyncio.Task | None = None
        async with self.settings.client_security.aio_channel(
            self.settings.address, CHANNEL_OPTIONS
        ) as channel:
            stub = dispatch_service_pb2_grpc.DispatchServiceStub(channel)
            call = stub.Connect(self._requests(queue))
            try:
                async for response in call:
                    kind = response.WhichOneof("payload")
                    if kind == "welcome":
                        welcomed = True
                        self.connected = True
                        self._heartbeat_interval = max(
                            MIN_HEARTBEAT_SECONDS,
                            response.welcome.heartbeat_interval.ToTimedelta().total_seconds(),
                        )
                        self._queue = queue
                        for message in self._backlog:
                            queue.put_nowait(message)
                        self._backlog.clear()
                        for _, message, _ in self._unconfirmed.values():
                            queue.put_nowait(message)
                        heartbeats = asyncio.create_task(self._heartbeats())
                        log.info("connected to job-service at %s", self.settings.address)
                    elif kind == "assignment":
                        self._start(response.assignment)
                    elif kind == "stop_job":
                        await self._stop(response.stop_job)
            finally:
                self.connected = False
                self._queue = None
                if heartbeats is not None:
                    heartbeats.cancel()
                call.cancel()
        return welcomed

    async def _requests(self, queue: asyncio.Queue):
        held = [
            pb.HeldLease(job_id=j.job_id, lease_token=j.lease_token) for j in self.jobs.values()
        ]
        held += [
            pb.HeldLease(job_id=job_id, lease_token=token)
            for job_id, (token, _, _) in self._unconfirmed.items()
            if token not in self.jobs
        ]
        yield pb.ConnectRequest(
            hello=pb.WorkerHello(
                worker_id=self.settings.worker_id,
                pipelines=self.pipelines,
                max_concurrent_jobs=self.settings.concurrency,
                held_leases=held,
                version=VERSION,
                draining=self.draining,
                status_address=self.status_address,
            )
        )
        while True:
            message = await queue.get()
            if message is _CLOSE:
                return
            yield message

    def _hold_report(self, message: pb.ConnectRequest) -> None:
        """Queues a job's progress or partial result for the report window."""
        self._held_reports.append(message)
        if self._report_window <= 0:
            self._send_held_reports()
        elif self._report_flush is None:
            self._report_flush = asyncio.get_running_loop().call_later(
                self._report_window, self._send_held_reports
            )

    def _send_held_reports(self) -> None:
        """Sends what waits for the report window, in order."""
        if self._report_flush is not None:
            self._report_flush.cancel()
            self._report_flush = None
        held, self._held_reports = self._held_reports, []
        for message in held:
            self._send(message)

    def _send(self, message: pb.ConnectRequest) -> None:
        if self._queue is not None:
            self._queue.put_nowait(message)
        elif len(self._backlog) < MAX_BACKLOG:
            self._backlog.append(message)

    def _heartbeat_message(self) -> pb.ConnectRequest:
        return pb.ConnectRequest(
            heartbeat=pb.Heartbeat(
                running=[
                    pb.HeldLease(job_id=j.job_id, lease_token=j.lease_token)
                    for j in self.jobs.values()
                ],
                draining=self.draining,
            )
        )

    async def _heartbeats(self) -> None:
        while True:
            self._send(self._heartbeat_message())
            cutoff = time.monotonic() - UNCONFIRMED_RETENTION_SECONDS
            for job_id, (_, _, sent_at) in list(self._unconfirmed.items()):
                if sent_at < cutoff:
                    del self._unconfirmed[job_id]
            await asyncio.sleep(self._heartbeat_interval)

    # -- jobs ----------------------------------------------------------------

    def _start(self, assignment: pb.Assignment) -> None:
        job = RunningJob(
            job_id=assignment.job_id,
            attempt=assignment.attempt,
            lease_token=assignment.lease_token,
            pipeline=assignment.pipeline,
        )
        if assignment.lease_token in self.jobs:
            log.warning("lease of job %s announced twice; ignoring", assignment.job_id)
            return
        self.jobs[job.lease_token] = job
        self._idle.clear()
        task = asyncio.create_task(self._run_job(job, assignment), name=f"job-{job.job_id}")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    async def _run_job(self, job: RunningJob, assignment: pb.Assignment) -> None:
        # A task of its own: every line about this job names it, and its span
        # joins the job's trace (when tracing is on).
        bind_log_fields(job_id=job.job_id, attempt=job.attempt)
        with job_span(
            "run job",
            assignment.trace_parent,
            {
                "videojobs.job_id": job.job_id,
                "videojobs.attempt": job.attempt,
                "videojobs.worker_id": self.settings.worker_id,
                "videojobs.pipeline": job.pipeline,
            },
        ):
            await self._run_attempt(job, assignment)

    async def _run_attempt(self, job: RunningJob, assignment: pb.Assignment) -> None:
        token = job.lease_token
        log.info("job %s attempt %d: running %s", job.job_id, job.attempt, job.pipeline)
        started = time.monotonic()
        try:
            try:
                input_key = StorageKey(assignment.input_key)
                output_prefix = StorageKey(assignment.output_prefix)
            except InvalidStorageKey as exc:
                line = {
                    "type": "failed",
                    "code": "INVALID_ARGUMENT",
                    "reason": "INVALID_STORAGE_KEY",
                    "message": f"assignment carries an invalid storage key ({exc.reason})",
                    "retryable": False,
                }
            else:
                task = ChildTask(
                    storage_url=self.settings.storage_url,
                    job_id=job.job_id,
                    attempt=job.attempt,
                    input_key=input_key.value,
                    pipeline=assignment.pipeline,
                    parameters=dict(_struct_to_dict(assignment.parameters)),
                    output_prefix=output_prefix.value,
                    # Empty for jobs accepted before formats were recorded:
                    # the child then identifies the format from the bytes.
                    input_format=assignment.input_format,
                    max_frame_pixels=self.settings.max_frame_pixels,
                    memory_limit_bytes=self.settings.child_memory_limit_bytes,
                    job_service_address=self.settings.address,
                    lease_token=job.lease_token,
                    spool_dir=self.settings.spool_dir,
                    credentials=asdict(self.settings.client_security),
                )

                async def relay(line: dict) -> None:
                    self._hold_report(self._report(job, line))

                line = await run_child(job, task, relay, self.pool)
            message = self._report(job, line)
            if line["type"] in ("completed", "failed"):
                self._unconfirmed[job.job_id] = (token, message, time.monotonic())
            self._send_held_reports()  # this job's last ones go first
            self._send(message)
            log.info("job %s attempt %d: %s", job.job_id, job.attempt, line["type"])
            WORKER_JOBS.labels(job.pipeline, line["type"]).inc()
            WORKER_JOB_DURATION.labels(job.pipeline).observe(time.monotonic() - started)
        finally:
            self.jobs.pop(job.lease_token, None)
            if not self.jobs:
                self._idle.set()

    def _report(self, job: RunningJob, line: dict) -> pb.ConnectRequest:
        kind = line["type"]
        ids = {"job_id": job.job_id, "lease_token": job.lease_token}
        if kind == "progress":
            return pb.ConnectRequest(
                progress=pb.JobProgressReport(
                    **ids, progress=job_pb2.Progress(fraction=line["fraction"], stage=line["stage"])
                )
            )
        if kind == "partial":
            return pb.ConnectRequest(
                partial_result=pb.JobPartialResultReport(
                    **ids,
                    partial_result=job_pb2.PartialResult(
                        pipeline=line["pipeline"], data=_struct(line["data"])
                    ),
                )
            )
        if kind == "completed":
            return pb.ConnectRequest(
                completion=pb.JobCompletionReport(
                    **ids,
                    output_key=line["output_key"],
                    artifacts=[job_pb2.Artifact(**a) for a in line.get("artifacts", [])],
                    summary=_struct(line.get("summary") or {}),
                    warnings=line.get("warnings", []),
                )
            )
        if kind == "failed":
            return pb.ConnectRequest(
                failure=pb.JobFailureReport(
                    **ids, error=_failure_status(line), retryable=bool(line.get("retryable"))
                )
            )
        return pb.ConnectRequest(stopped=pb.JobStoppedReport(**ids))

    async def _stop(self, order: pb.StopJob) -> None:
        held = self._unconfirmed.get(order.job_id)
        if held is not None and held[0] == order.lease_token:
            del self._unconfirmed[order.job_id]
        job = self.jobs.get(order.lease_token)
        if job is not None and job.job_id == order.job_id:
            reason = pb.StopReason.Name(order.reason)
            log.info("job %s: told to stop (%s)", order.job_id, reason)
            # Not awaited here: the response loop must keep reading meanwhile.
            task = asyncio.create_task(job.stop(reason))
            self._job_tasks.add(task)
            task.add_done_callback(self._job_tasks.discard)


def _struct_to_dict(message: struct_pb2.Struct) -> dict:
    return json_format.MessageToDict(message)
