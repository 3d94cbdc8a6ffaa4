"""How the CLI shows errors, events and jobs."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from rich.console import Console

from videojobs.cli.render import (
    format_bytes,
    format_error,
    format_event_details,
    format_event_line,
    format_job_line,
    format_job_summary,
    format_time,
    jobs_table,
    to_json,
)
from videojobs.client import VideoJobsError
from videojobs.v1 import job_pb2

CREATED = timestamp_pb2.Timestamp(seconds=1_763_704_801, nanos=123_456_789)


def pack(detail) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def rejected_upload_error() -> VideoJobsError:
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message="invalid upload header",
        details=[
            pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="header.parameters.threshold", description="must be 0 to 1"
                        )
                    ]
                )
            ),
            pack(
                error_details_pb2.ErrorInfo(
                    reason="INVALID_PARAMETER",
                    domain="videojobs.dev",
                    metadata={"pipeline": "probe"},
                )
            ),
            pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2))),
        ],
    )
    return VideoJobsError.from_status(status)


def test_format_error_shows_code_message_and_every_detail() -> None:
    assert format_error(rejected_upload_error()) == [
        "error: INVALID_ARGUMENT: invalid upload header",
        "  header.parameters.threshold: must be 0 to 1",
        "  reason: INVALID_PARAMETER (domain videojobs.dev, pipeline=probe)",
        "  retry after: 2s",
    ]


def test_format_error_without_details_or_message() -> None:
    assert format_error(VideoJobsError(grpc.StatusCode.DEADLINE_EXCEEDED, "")) == [
        "error: DEADLINE_EXCEEDED"
    ]


def make_event(sequence: int, **payload) -> job_pb2.JobEvent:
    return job_pb2.JobEvent(
        job_id="j", sequence=sequence, create_time=CREATED, attempt=2, **payload
    )


@pytest.mark.parametrize(
    ("event", "kind", "details"),
    [
        (
            make_event(
                1,
                state_changed=job_pb2.StateChanged(
                    from_state=job_pb2.JOB_STATE_RUNNING,
                    to_state=job_pb2.JOB_STATE_QUEUED,
                    reason="worker w-1 went away",
                ),
            ),
            "state_changed",
            "RUNNING -> QUEUED (attempt 2): worker w-1 went away",
        ),
        (
            make_event(2, progress=job_pb2.Progress(fraction=0.456, stage="demuxing")),
            "progress",
            "45.6% demuxing",
        ),
        (
            make_event(3, partial_result=job_pb2.PartialResult(pipeline="probe")),
            "partial_result",
            "probe {}",
        ),
        (
            make_event(
                4,
                completed=job_pb2.JobCompleted(
                    output_key="jobs/j/attempts/2/results.json",
                    artifacts=[job_pb2.Artifact(key="jobs/j/attempts/2/a.jpg")],
                ),
            ),
            "completed",
            "output jobs/j/attempts/2/results.json, 1 artifact(s)",
        ),
        (
            make_event(
                5,
                failed=job_pb2.JobFailed(
                    error=status_pb2.Status(
                        code=code_pb2.INVALID_ARGUMENT,
                        message="not a video",
                        details=[pack(error_details_pb2.ErrorInfo(reason="UNDECODABLE_INPUT"))],
                    )
                ),
            ),
            "failed",
            "INVALID_ARGUMENT: not a video [UNDECODABLE_INPUT]",
        ),
        (
            make_event(6, cancelled=job_pb2.JobCancelled(reason="by alice")),
            "cancelled",
            "by alice",
        ),
    ],
)
def test_event_line_has_sequence_time_kind_and_details(
    event: job_pb2.JobEvent, kind: str, details: str
) -> None:
    sequence, time, line_kind, line_details = format_event_line(event).split(maxsplit=3)
    assert (int(sequence), time, line_kind, line_details) == (
        event.sequence,
        "2025-11-21T06:00:01.123Z",
        kind,
        details,
    )


def test_partial_result_data_is_compact_json_with_whole_numbers() -> None:
    result = job_pb2.PartialResult(pipeline="probe")
    result.data.update({"index": 0, "codec": "h264", "fps": 29.97, "size": [1920, 1080]})
    line = format_event_line(make_event(3, partial_result=result))
    assert line.endswith('probe {"codec": "h264", "fps": 29.97, "index": 0, "size": [1920, 1080]}')


def test_event_json_is_one_line_of_the_proto_mapping() -> None:
    text = to_json(make_event(7, progress=job_pb2.Progress(fraction=0.5)), one_line=True)
    assert "\n" not in text
    assert json.loads(text) == {
        "jobId": "j",
        "sequence": "7",
        "createTime": "2025-11-21T06:00:01.123456789Z",
        "attempt": 2,
        "progress": {"fraction": 0.5},
    }


def finished_job() -> job_pb2.Job:
    job = job_pb2.Job(
        job_id="3f2a" * 8,
        state=job_pb2.JOB_STATE_SUCCEEDED,
        pipeline="probe",
        progress=job_pb2.Progress(fraction=1.0, stage="done"),
        attempt=1,
        input_key="jobs/x/input/source.mp4",
        output_key="jobs/x/attempts/1/results.json",
        artifacts=[
            job_pb2.Artifact(
                key="jobs/x/attempts/1/t.jpg", media_type="image/jpeg", size_bytes=2048
            )
        ],
        create_time=CREATED,
        file_name="clip.mp4",
        input_size_bytes=5 * 1024 * 1024,
        last_event_sequence=14,
    )
    job.summary.update({"format": "mp4", "streams": 2})
    return job


def test_job_summary_lists_the_interesting_fields() -> None:
    lines = format_job_summary(finished_job())
    text = "\n".join(lines)
    assert lines[0] == "job:       " + "3f2a" * 8
    for expected in [
        "state:     SUCCEEDED",
        "pipeline:  probe",
        "attempt:   1",
        "progress:  100.0% done",
        "file:      clip.mp4, 5.0 MiB",
        "input:     jobs/x/input/source.mp4",
        "output:    jobs/x/attempts/1/results.json",
        "artifacts: jobs/x/attempts/1/t.jpg (image/jpeg, 2.0 KiB)",
        "created:   2025-11-21T06:00:01.123Z",
        "started:   -",
        'summary:   format = "mp4"',
        "           streams = 2",
        "events:    14",
    ]:
        assert expected in lines, (expected, text)
    assert "error" not in text


def test_job_summary_shows_the_error_of_a_failed_job() -> None:
    job = job_pb2.Job(
        job_id="j",
        state=job_pb2.JOB_STATE_FAILED,
        error=status_pb2.Status(code=code_pb2.INTERNAL, message="worker crashed"),
    )
    assert "error:    INTERNAL: worker crashed" in format_job_summary(job)


def test_job_line_is_id_and_state() -> None:
    assert format_job_line(finished_job()) == "3f2a" * 8 + " SUCCEEDED"


def test_jobs_table_has_one_row_per_job() -> None:
    console = Console(width=200, record=True)
    console.print(jobs_table([finished_job(), job_pb2.Job(job_id="b" * 32)]))
    lines = console.export_text().splitlines()
    assert lines[0].split() == ["ID", "STATE", "PIPELINE", "ATTEMPT", "PROGRESS", "CREATED"]
    assert lines[2].split() == [
        "3f2a" * 8,
        "SUCCEEDED",
        "probe",
        "1",
        "100.0%",
        "2025-11-21T06:00:01Z",
    ]
    assert lines[3].split() == ["b" * 32, "UNSPECIFIED", "0", "0.0%", "-"]


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (5 * 1024**2, "5.0 MiB"),
        (3 * 1024**4, "3.0 TiB"),
    ],
)
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text


def test_format_time_unset_is_a_dash() -> None:
    assert format_time(timestamp_pb2.Timestamp()) == "-"
    assert format_time(CREATED, milliseconds=False) == "2025-11-21T06:00:01Z"


def test_job_summary_names_the_tenant() -> None:
    job = finished_job()
    assert not any(line.startswith("tenant:") for line in format_job_summary(job))
    job.tenant = "acme"
    assert "tenant:    acme" in format_job_summary(job)


def test_jobs_table_shows_tenants_only_beyond_the_default() -> None:
    def header(jobs: list[job_pb2.Job]) -> list[str]:
        console = Console(width=200, record=True)
        console.print(jobs_table(jobs))
        return [line.split() for line in console.export_text().splitlines()]

    default = finished_job()
    default.tenant = "default"
    assert header([default])[0][-1] == "CREATED"
    other = job_pb2.Job(job_id="b" * 32, tenant="acme")
    lines = header([default, other])
    assert lines[0][-1] == "TENANT"
    assert (lines[2][-1], lines[3][-1]) == ("default", "acme")


def test_the_first_event_names_only_the_state_it_starts_in() -> None:
    first = make_event(
        1, state_changed=job_pb2.StateChanged(to_state=job_pb2.JOB_STATE_QUEUED, reason="accepted")
    )
    assert format_event_details(first) == "QUEUED (attempt 2): accepted"


def test_job_json_keeps_whole_numbers_whole_and_prints_every_artifact_field() -> None:
    job = finished_job()
    job.summary.update({"width": 640, "frame_count": 100, "fps": 29.97})
    data = json.loads(to_json(job))
    assert data["summary"] == {
        "format": "mp4",
        "streams": 2,
        "width": 640,
        "frame_count": 100,
        "fps": 29.97,
    }
    assert isinstance(data["summary"]["width"], int)
    assert data["artifacts"] == [
        {
            "key": "jobs/x/attempts/1/t.jpg",
            "mediaType": "image/jpeg",
            "sizeBytes": "2048",
            "width": 0,
            "height": 0,
            "timeSeconds": 0,
            "index": 0,
            "frameIndex": "0",
        }
    ]


def test_completed_event_json_prints_every_artifact_field() -> None:
    event = make_event(
        4, completed=job_pb2.JobCompleted(output_key="o", artifacts=[job_pb2.Artifact(key="k")])
    )
    artifact = json.loads(to_json(event, one_line=True))["completed"]["artifacts"][0]
    assert (artifact["index"], artifact["timeSeconds"], artifact["frameIndex"]) == (0, 0, "0")


def test_job_summary_puts_each_parameter_and_summary_value_on_a_line() -> None:
    job = finished_job()
    job.parameters.update({"probe": {"count_frames": False, "verify_frames": 3}})
    job.summary.update({"video": {"width": 640, "fps": 29.97}, "codecs": ["h264", "aac"]})
    lines = format_job_summary(job)
    start = lines.index("parameters: probe.count_frames = false")
    assert lines[start + 1] == "            probe.verify_frames = 3"
    summary = lines.index('summary:    codecs = ["h264", "aac"]')
    assert lines[summary + 1 : summary + 5] == [
        '            format = "mp4"',
        "            streams = 2",
        "            video.fps = 29.97",
        "            video.width = 640",
    ]
