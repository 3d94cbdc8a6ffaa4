"""JobView: a job's state as an enum, parameters and summary as dicts with
whole numbers as ints, times as datetimes, and the proto still there."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2
from google.rpc import code_pb2, status_pb2

from videojobs.client import JobState, JobView, plain
from videojobs.v1 import job_pb2


def _stamp(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def test_a_finished_job_reads_as_python_values() -> None:
    created = datetime(2026, 11, 22, 1, 2, 3, tzinfo=UTC)
    proto = job_pb2.Job(
        job_id="a" * 32,
        state=job_pb2.JOB_STATE_SUCCEEDED,
        pipeline="ocr+scenes",
        pipelines=["ocr", "scenes"],
        progress=job_pb2.Progress(fraction=1.0),
        create_time=_stamp(created),
    )
    proto.summary.update({"video": {"width": 640, "fps": 29.97}, "frames": [1, 2.5]})
    proto.parameters.update({"ocr": {"min_confidence": 0.7, "max_side": 1280}})
    job = JobView.of(proto)
    assert job.state is JobState.SUCCEEDED and job.state.is_terminal
    assert job.summary == {"video": {"width": 640, "fps": 29.97}, "frames": [1, 2.5]}
    assert isinstance(job.summary["video"]["width"], int)
    assert job.parameters["ocr"]["max_side"] == 1280
    assert isinstance(job.parameters["ocr"]["max_side"], int)
    assert job.pipelines == ["ocr", "scenes"]
    assert (job.created, job.started, job.ended) == (created, None, None)
    assert job.error is None and job.progress == 1.0
    assert job.proto is proto and job.job_id == "a" * 32


def test_a_failed_job_names_its_error_and_an_unknown_state_is_unspecified() -> None:
    proto = job_pb2.Job(
        state=job_pb2.JOB_STATE_FAILED,
        pipeline="probe",
        error=status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="not a video"),
    )
    job = JobView.of(proto)
    assert job.state is JobState.FAILED
    assert job.error == ("INVALID_ARGUMENT", "not a video")
    assert job.pipelines == ["probe"]
    assert JobView.of(job_pb2.Job(state=99)).state is JobState.UNSPECIFIED
    assert not JobState.RUNNING.is_terminal


def test_plain_turns_any_struct_into_a_dict() -> None:
    proto = job_pb2.PartialResult()
    proto.data.update({"count": 3, "ratio": 0.5})
    assert plain(proto.data) == {"count": 3, "ratio": 0.5}
