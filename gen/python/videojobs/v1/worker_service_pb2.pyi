import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetWorkerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetWorkerStatusResponse(_message.Message):
    __slots__ = ("worker_id", "pipelines", "max_concurrent_jobs", "jobs", "uptime", "connected", "draining", "job_service_address", "start_time", "version")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_JOBS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    JOB_SERVICE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    pipelines: _containers.RepeatedScalarFieldContainer[str]
    max_concurrent_jobs: int
    jobs: _containers.RepeatedCompositeFieldContainer[WorkerJob]
    uptime: _duration_pb2.Duration
    connected: bool
    draining: bool
    job_service_address: str
    start_time: _timestamp_pb2.Timestamp
    version: str
    def __init__(self, worker_id: _Optional[str] = ..., pipelines: _Optional[_Iterable[str]] = ..., max_concurrent_jobs: _Optional[int] = ..., jobs: _Optional[_Iterable[_Union[WorkerJob, _Mapping]]] = ..., uptime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., connected: _Optional[bool] = ..., draining: _Optional[bool] = ..., job_service_address: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[str] = ...) -> None: ...

class WorkerJob(_message.Message):
    __slots__ = ("job_id", "attempt", "pipeline", "progress_fraction", "start_time")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FRACTION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    pipeline: str
    progress_fraction: float
    start_time: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., pipeline: _Optional[str] = ..., progress_fraction: _Optional[float] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DrainWorkerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DrainWorkerResponse(_message.Message):
    __slots__ = ("jobs_remaining",)
    JOBS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    jobs_remaining: int
    def __init__(self, jobs_remaining: _Optional[int] = ...) -> None: ...
