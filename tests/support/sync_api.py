"""Small synchronous helpers over the generated stubs, for process-level tests."""

from __future__ import annotations

import hashlib
import time

import grpc

from videojobs.v1 import job_pb2, job_service_pb2_grpc
from videojobs.v1 import job_service_pb2 as js

from support.waiting import eventually_sync

TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}


class Api:
    """A JobService stub on its own channel (reconnects by itself after restarts)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = job_service_pb2_grpc.JobServiceStub(self.channel)

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()

    def submit(
        self, data: bytes, pipeline: str = "probe", file_name: str = "clip.mp4", **parameters
    ) -> job_pb2.Job:
        """Uploads `data` in 64 KiB chunks for a job of one pipeline."""
        return self._upload(_header(data, file_name, parameters, pipeline=pipeline), data)

    def submit_with(
        self,
        data: bytes,
        *,
        request_id: str = "",
        priority: int = 0,
        max_attempts: int = 0,
        execution_timeout: float | None = None,
        queue_timeout: float | None = None,
        pipeline: str = "probe",
        **parameters,
    ) -> job_pb2.Job:
        """Uploads `data` for a job (a probe unless `pipeline` says otherwise)
        with job options."""
        header = _header(
            data,
            "clip.mp4",
            parameters,
            pipeline=pipeline,
            request_id=request_id,
            priority=priority,
            max_attempts=max_attempts,
        )
        if execution_timeout is not None:
            header.execution_timeout.FromNanoseconds(int(execution_timeout * 1e9))
        if queue_timeout is not None:
            header.queue_timeout.FromNanoseconds(int(queue_timeout * 1e9))
        return self._upload(header, data)

    def submit_pipelines(
        self, data: bytes, pipelines: list[str], parameters: dict, file_name: str = "clip.mp4"
    ) -> job_pb2.Job:
        """Uploads `data` for a job of several pipelines (or one, by `pipelines`)."""
        return self._upload(_header(data, file_name, parameters, pipelines=pipelines), data)

    def cancel(self, job_id: str) -> job_pb2.Job:
        """CancelJob."""
        return self.stub.CancelJob(js.CancelJobRequest(job_id=job_id), timeout=10).job

    def _upload(self, header: js.UploadHeader, data: bytes) -> job_pb2.Job:
        def stream():
            yield js.SubmitVideoRequest(header=header)
            for offset in range(0, len(data), 65536):
                yield js.SubmitVideoRequest(chunk=data[offset : offset + 65536])

        return self.stub.SubmitVideo(stream(), timeout=30, wait_for_ready=True).job

    def job(self, job_id: str) -> job_pb2.Job:
        """GetStatus, waiting for the server to be reachable."""
        return self.stub.GetStatus(
            js.GetStatusRequest(job_id=job_id), timeout=10, wait_for_ready=True
        ).job

    def events(self, job_id: str, after: int = 0) -> list[job_pb2.JobEvent]:
        """Every event to the terminal one (the job must end)."""
        return [
            r.event
            for r in self.stub.StreamResults(
                js.StreamResultsRequest(job_id=job_id, after_sequence=after),
                timeout=60,
                wait_for_ready=True,
            )
        ]

    def wait_until(self, job_id: str, predicate, timeout: float = 60.0, what: str = "job state"):
        """Polls GetStatus until `predicate(job)`; returns the job."""

        def probe():
            try:
                job = self.job(job_id)
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return None
                raise
            return job if predicate(job) else None

        return eventually_sync(probe, timeout=timeout, interval=0.02, what=what)

    def wait_terminal(self, job_id: str, timeout: float = 60.0) -> job_pb2.Job:
        """Waits for the job to end."""
        return self.wait_until(job_id, lambda j: j.state in TERMINAL, timeout, "the job to end")


def _header(data: bytes, file_name: str, parameters: dict, **fields) -> js.UploadHeader:
    """An upload header stating the size and SHA-256 of `data`."""
    header = js.UploadHeader(
        file_name=file_name,
        expected_size_bytes=len(data),
        expected_sha256=hashlib.sha256(data).hexdigest(),
        **fields,
    )
    header.parameters.update(parameters)
    return header


def elapsed_since(start: float) -> float:
    """Seconds since `start` (time.monotonic)."""
    return time.monotonic() - start
