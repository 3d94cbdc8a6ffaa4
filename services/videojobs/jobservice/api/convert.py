"""Domain <-> protobuf translation for job-service."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import any_pb2, duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from videojobs.common import errors
from videojobs.common.errors import ERROR_DOMAIN
from videojobs.jobservice import discovery, domain, event_payloads
from videojobs.v1 import job_pb2, job_service_pb2

STATE_TO_PROTO = {
    domain.JobState.QUEUED: job_pb2.JOB_STATE_QUEUED,
    domain.JobState.RUNNING: job_pb2.JOB_STATE_RUNNING,
    domain.JobState.SUCCEEDED: job_pb2.JOB_STATE_SUCCEEDED,
    domain.JobState.FAILED: job_pb2.JOB_STATE_FAILED,
    domain.JobState.CANCELLED: job_pb2.JOB_STATE_CANCELLED,
}
STATE_FROM_PROTO = {value: key for key, value in STATE_TO_PROTO.items()}
# google.protobuf.Duration's own range (about 10,000 years).
MAX_DURATION_SECONDS = 315_576_000_000


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A protobuf Timestamp, or None."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def duration(seconds: float | None) -> duration_pb2.Duration | None:
    """A protobuf Duration, or None."""
    if seconds is None:
        return None
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def attempt(value: domain.Attempt) -> job_pb2.Attempt:
    """An Attempt message."""
    message = job_pb2.Attempt(
        number=value.number,
        worker_id=value.worker_id,
        start_time=timestamp(value.start_time),
        end_time=timestamp(value.end_time),
        outcome=job_pb2.AttemptOutcome.Value(f"ATTEMPT_OUTCOME_{value.outcome.value}"),
    )
    if value.error is not None:
        message.error.CopyFrom(
            error_status(value.error.code, value.error.message, value.error.reason, {})
        )
    return message


def struct(value: dict[str, Any] | None) -> struct_pb2.Struct | None:
    """A protobuf Struct from a JSON-shaped dict, or None."""
    if value is None:
        return None
    message = struct_pb2.Struct()
    message.update(value)
    return message


def struct_to_dict(message: struct_pb2.Struct, field: str = "struct") -> dict[str, Any]:
    """A JSON-shaped dict from a Struct that arrived in a request.

    A Struct can hold what JSON cannot (NaN, infinities): INVALID_ARGUMENT
    naming `field`, never an unexpected error."""
    try:
        return json_format.MessageToDict(message)
    except (ValueError, TypeError, RecursionError):
        raise errors.invalid_argument(
            "a structured value is not valid JSON",
            [(field, "numbers must be finite (no NaN or Infinity)")],
        ) from None


def seconds_or_none(message, field_name: str, field_path: str) -> float | None:
    """A request's Duration field in seconds, or None when it is unset;
    INVALID_ARGUMENT naming `field_path` for a value no Duration may hold."""
    if not message.HasField(field_name):
        return None
    value = getattr(message, field_name)
    if not -MAX_DURATION_SECONDS <= value.seconds <= MAX_DURATION_SECONDS or not (
        -999_999_999 <= value.nanos <= 999_999_999
    ):
        raise errors.invalid_argument(
            "a duration is out of range", [(field_path, "not a valid google.protobuf.Duration")]
        )
    return value.seconds + value.nanos / 1e9


def error_status(
    code: str, message: str, reason: str, metadata: dict[str, str]
) -> status_pb2.Status:
    """A google.rpc.Status carrying an ErrorInfo."""
    status = status_pb2.Status(code=code_pb2.Code.Value(code), message=message)
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))
    status.details.append(packed)
    return status


def artifact(value: domain.Artifact) -> job_pb2.Artifact:
    """An Artifact message."""
    return job_pb2.Artifact(
        key=value.key.value,
        media_type=value.media_type,
        size_bytes=value.size_bytes,
        width=value.width,
        height=value.height,
        time_seconds=value.time_seconds,
        index=value.index,
        frame_index=value.frame_index,
    )


def job(value: domain.Job) -> job_pb2.Job:
    """A Job message."""
    message = job_pb2.Job(
        job_id=value.job_id,
        state=STATE_TO_PROTO[value.state],
        pipeline=value.pipeline,
        parameters=struct(value.parameters),
        progress=job_pb2.Progress(fraction=value.progress_fraction, stage=value.progress_stage),
        attempt=value.attempt,
        input_key=value.input_key.value,
        output_key=value.output_key.value if value.output_key else "",
        artifacts=[artifact(a) for a in value.artifacts],
        create_time=timestamp(value.create_time),
        start_time=timestamp(value.start_time),
        end_time=timestamp(value.end_time),
        summary=struct(value.summary),
        file_name=value.file_name,
        input_size_bytes=value.input_size_bytes,
        input_sha256=value.input_sha256,
        request_id=value.request_id or "",
        last_event_sequence=value.last_event_sequence,
        max_attempts=value.max_attempts,
        priority=value.priority,
        execution_timeout=duration(value.execution_timeout_seconds),
        queue_timeout=duration(value.queue_timeout_seconds),
        attempts=[attempt(a) for a in value.attempts],
        next_attempt_time=timestamp(value.next_attempt_time),
        pipelines=list(value.pipelines),
        warnings=list(value.warnings),
        input_format=value.input_format,
        input_remove_time=timestamp(value.input_removed_at),
        tenant=value.tenant,
    )
    if value.error is not None:
        message.error.CopyFrom(
            error_status(
                value.error.code, value.error.message, value.error.reason, value.error.metadata
            )
        )
    return message


def event(value: domain.JobEvent) -> job_pb2.JobEvent:
    """A JobEvent message."""
    message = job_pb2.JobEvent(
        job_id=value.job_id,
        sequence=value.sequence,
        create_time=timestamp(value.create_time),
        job_state=STATE_TO_PROTO[value.job_state],
        attempt=value.attempt,
    )
    payload = value.payload
    match payload:
        case event_payloads.StateChanged(from_state, to_state, reason):
            message.state_changed.CopyFrom(
                job_pb2.StateChanged(
                    from_state=STATE_TO_PROTO[from_state] if from_state is not None else 0,
                    to_state=STATE_TO_PROTO[to_state],
                    reason=reason,
                )
            )
        case event_payloads.Progress(fraction, stage):
            message.progress.CopyFrom(job_pb2.Progress(fraction=fraction, stage=stage))
        case event_payloads.PartialResult(pipeline, data):
            message.partial_result.CopyFrom(
                job_pb2.PartialResult(pipeline=pipeline, data=struct(data))
            )
        case event_payloads.Completed(output_key, artifacts, summary, warnings):
            message.completed.CopyFrom(
                job_pb2.JobCompleted(
                    output_key=output_key.value,
                    artifacts=[job_pb2.Artifact(**a.to_dict()) for a in artifacts],
                    summary=struct(summary),
                    warnings=list(warnings),
                )
            )
        case event_payloads.Failed(error):
            message.failed.error.CopyFrom(
                error_status(error.code, error.message, error.reason, error.metadata)
            )
        case event_payloads.Cancelled(reason):
            message.cancelled.reason = reason
    return message


def pipeline_info(value: discovery.PipelineDescription) -> job_service_pb2.PipelineInfo:
    """A pipeline of the catalogue, for ListPipelines."""
    spec = value.spec
    return job_service_pb2.PipelineInfo(
        name=spec.name,
        version=spec.version,
        description=spec.description,
        parameters_schema=struct(spec.parameters_schema()),
        analyses_frames=value.analyses_frames,
        default_execution_timeout=duration(spec.default_execution_timeout_seconds),
    )


def worker_info(value: discovery.ConnectedWorker) -> job_service_pb2.WorkerInfo:
    """A connected worker, for ListWorkers."""
    return job_service_pb2.WorkerInfo(
        worker_id=value.worker_id,
        status_address=value.status_address,
        version=value.version,
        pipelines=value.pipelines,
        slots=value.slots,
        slots_used=value.slots_used,
        draining=value.draining,
        connect_time=timestamp(value.connected_at),
        last_heartbeat_time=timestamp(value.last_seen_at),
        job_ids=value.job_ids,
    )


def job_stats(value: discovery.JobFigures) -> job_service_pb2.JobStats:
    """Counts and timings of a set of jobs, for GetStats."""
    return job_service_pb2.JobStats(
        pipeline=value.pipeline,
        counts=[
            job_service_pb2.StateCount(state=STATE_TO_PROTO[state], count=value.counts[state])
            for state in STATE_TO_PROTO
            if value.counts[state]
        ],
        success_rate=value.success_rate,
        duration_p50=duration(discovery.percentile(value.durations, 0.5)),
        duration_p95=duration(discovery.percentile(value.durations, 0.95)),
        queue_wait_p50=duration(discovery.percentile(value.queue_waits, 0.5)),
        queue_wait_p95=duration(discovery.percentile(value.queue_waits, 0.95)),
    )
