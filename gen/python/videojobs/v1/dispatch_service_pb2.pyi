import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from videojobs.v1 import job_pb2 as _job_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_CANCELLED: _ClassVar[StopReason]
    STOP_REASON_LEASE_LOST: _ClassVar[StopReason]
    STOP_REASON_JOB_ENDED: _ClassVar[StopReason]
    STOP_REASON_TIMED_OUT: _ClassVar[StopReason]
STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_CANCELLED: StopReason
STOP_REASON_LEASE_LOST: StopReason
STOP_REASON_JOB_ENDED: StopReason
STOP_REASON_TIMED_OUT: StopReason

class ConnectRequest(_message.Message):
    __slots__ = ("hello", "heartbeat", "progress", "partial_result", "completion", "failure", "stopped")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_RESULT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    hello: WorkerHello
    heartbeat: Heartbeat
    progress: JobProgressReport
    partial_result: JobPartialResultReport
    completion: JobCompletionReport
    failure: JobFailureReport
    stopped: JobStoppedReport
    def __init__(self, hello: _Optional[_Union[WorkerHello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., progress: _Optional[_Union[JobProgressReport, _Mapping]] = ..., partial_result: _Optional[_Union[JobPartialResultReport, _Mapping]] = ..., completion: _Optional[_Union[JobCompletionReport, _Mapping]] = ..., failure: _Optional[_Union[JobFailureReport, _Mapping]] = ..., stopped: _Optional[_Union[JobStoppedReport, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("welcome", "assignment", "stop_job")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    STOP_JOB_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assignment: Assignment
    stop_job: StopJob
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assignment: _Optional[_Union[Assignment, _Mapping]] = ..., stop_job: _Optional[_Union[StopJob, _Mapping]] = ...) -> None: ...

class WorkerHello(_message.Message):
    __slots__ = ("worker_id", "pipelines", "max_concurrent_jobs", "held_leases", "version", "draining", "status_address")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_JOBS_FIELD_NUMBER: _ClassVar[int]
    HELD_LEASES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    STATUS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pipelines: _containers.RepeatedScalarFieldContainer[str]
    max_concurrent_jobs: int
    held_leases: _containers.RepeatedCompositeFieldContainer[HeldLease]
    version: str
    draining: bool
    status_address: str
    def __init__(self, worker_id: _Optional[str] = ..., pipelines: _Optional[_Iterable[str]] = ..., max_concurrent_jobs: _Optional[int] = ..., held_leases: _Optional[_Iterable[_Union[HeldLease, _Mapping]]] = ..., version: _Optional[str] = ..., draining: _Optional[bool] = ..., status_address: _Optional[str] = ...) -> None: ...

class HeldLease(_message.Message):
    __slots__ = ("job_id", "lease_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("running", "draining")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    running: _containers.RepeatedCompositeFieldContainer[HeldLease]
    draining: bool
    def __init__(self, running: _Optional[_Iterable[_Union[HeldLease, _Mapping]]] = ..., draining: _Optional[bool] = ...) -> None: ...

class JobProgressReport(_message.Message):
    __slots__ = ("job_id", "lease_token", "progress")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    progress: _job_pb2.Progress
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., progress: _Optional[_Union[_job_pb2.Progress, _Mapping]] = ...) -> None: ...

class JobPartialResultReport(_message.Message):
    __slots__ = ("job_id", "lease_token", "partial_result")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    partial_result: _job_pb2.PartialResult
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., partial_result: _Optional[_Union[_job_pb2.PartialResult, _Mapping]] = ...) -> None: ...

class JobCompletionReport(_message.Message):
    __slots__ = ("job_id", "lease_token", "output_key", "artifacts", "summary", "warnings")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_KEY_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    output_key: str
    artifacts: _containers.RepeatedCompositeFieldContainer[_job_pb2.Artifact]
    summary: _struct_pb2.Struct
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., output_key: _Optional[str] = ..., artifacts: _Optional[_Iterable[_Union[_job_pb2.Artifact, _Mapping]]] = ..., summary: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class JobFailureReport(_message.Message):
    __slots__ = ("job_id", "lease_token", "error", "retryable")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    error: _status_pb2.Status
    retryable: bool
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., retryable: _Optional[bool] = ...) -> None: ...

class JobStoppedReport(_message.Message):
    __slots__ = ("job_id", "lease_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("heartbeat_interval", "lease_duration")
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval: _duration_pb2.Duration
    lease_duration: _duration_pb2.Duration
    def __init__(self, heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("job_id", "attempt", "lease_token", "input_key", "pipeline", "parameters", "output_prefix", "lease_expire_time", "execution_deadline", "input_format", "trace_parent")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INPUT_KEY_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    TRACE_PARENT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    lease_token: str
    input_key: str
    pipeline: str
    parameters: _struct_pb2.Struct
    output_prefix: str
    lease_expire_time: _timestamp_pb2.Timestamp
    execution_deadline: _timestamp_pb2.Timestamp
    input_format: str
    trace_parent: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., lease_token: _Optional[str] = ..., input_key: _Optional[str] = ..., pipeline: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., output_prefix: _Optional[str] = ..., lease_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., execution_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., input_format: _Optional[str] = ..., trace_parent: _Optional[str] = ...) -> None: ...

class StopJob(_message.Message):
    __slots__ = ("job_id", "lease_token", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    reason: StopReason
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., reason: _Optional[_Union[StopReason, str]] = ...) -> None: ...
