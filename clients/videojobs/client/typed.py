"""Typed views of job-service's messages for Python code: a job's state as an
enum, its parameters and summary as dicts with whole numbers as ints, its
times as datetimes, and the proto still at hand (`.proto`)::

    job = JobView.of(client.get_status(job_id))
    if job.state is JobState.SUCCEEDED:
        print(job.summary["video"]["width"])       # 640, an int
    job.proto.attempts                             # anything else, as sent
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from videojobs.v1 import job_pb2


class JobState(enum.IntEnum):
    """A job's state (the values of `videojobs.v1.JobState`)."""

    UNSPECIFIED = job_pb2.JOB_STATE_UNSPECIFIED
    QUEUED = job_pb2.JOB_STATE_QUEUED
    RUNNING = job_pb2.JOB_STATE_RUNNING
    SUCCEEDED = job_pb2.JOB_STATE_SUCCEEDED
    FAILED = job_pb2.JOB_STATE_FAILED
    CANCELLED = job_pb2.JOB_STATE_CANCELLED

    @property
    def is_terminal(self) -> bool:
        """Whether a job in this state never changes again."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def plain(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a dict; whole numbers (which a Struct holds as doubles)
    come back as ints."""
    return whole_numbers_as_ints(json_format.MessageToDict(struct))


def whole_numbers_as_ints(value: Any) -> Any:
    """`value` (JSON-shaped) with integral floats as ints: a Struct holds
    every number as a double, so a frame count of 240 arrives as 240.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: whole_numbers_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [whole_numbers_as_ints(item) for item in value]
    return value


def _time(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True)
class JobView:
    """A job, typed. Every other field is on `proto` (a `videojobs.v1.Job`)."""

    proto: job_pb2.Job

    @classmethod
    def of(cls, job: job_pb2.Job) -> JobView:
        """A view of `job`."""
        return cls(job)

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self.proto.job_id

    @property
    def state(self) -> JobState:
        """Its state as an enum (UNSPECIFIED for a state newer than this client)."""
        try:
            return JobState(self.proto.state)
        except ValueError:
            return JobState.UNSPECIFIED

    @property
    def pipelines(self) -> list[str]:
        """The pipelines it runs."""
        return list(self.proto.pipelines) or [self.proto.pipeline]

    @property
    def parameters(self) -> dict[str, Any]:
        """Its parameters as stored (each pipeline's under its name, defaults filled in)."""
        return plain(self.proto.parameters)

    @property
    def summary(self) -> dict[str, Any]:
        """The result's summary (empty until it succeeds)."""
        return plain(self.proto.summary)

    @property
    def progress(self) -> float:
        """How far its current attempt is, 0.0 to 1.0."""
        return self.proto.progress.fraction

    @property
    def error(self) -> tuple[str, str] | None:
        """(code name, message) of a failed job's error, or None."""
        if not self.proto.HasField("error"):
            return None
        code = self.proto.error.code
        return _code_name(code), self.proto.error.message

    @property
    def created(self) -> datetime | None:
        """When it was submitted."""
        return _time(self.proto, "create_time")

    @property
    def started(self) -> datetime | None:
        """When its current (or last) attempt started."""
        return _time(self.proto, "start_time")

    @property
    def ended(self) -> datetime | None:
        """When it ended."""
        return _time(self.proto, "end_time")


def _code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return str(code)
