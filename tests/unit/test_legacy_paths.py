"""The pure rules of `import-legacy`: legacy paths to places below the root,
field aliases, states, timestamps and ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import PurePosixPath

import pytest

from videojobs.jobservice.domain import JOB_ID_PATTERN, JobState
from videojobs.jobservice.legacy_import import (
    MAX_LEGACY_ID_CHARS,
    PathRefused,
    RecordRefused,
    check_legacy_id,
    legacy_error_text,
    legacy_job_id,
    legacy_request_id,
    map_legacy_path,
    parse_state,
    parse_timestamp,
    resolve_fields,
)

ROOT = PurePosixPath("/srv/app/data/video_jobs")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # absolute, below the root
        ("/srv/app/data/video_jobs/output/abc.json", "output/abc.json"),
        ("/srv/app/data/video_jobs/abc.mp4", "abc.mp4"),
        # `.` and empty components are normalised away
        ("/srv/app/data/./video_jobs//output/./abc.json", "output/abc.json"),
        # `..` that stays inside
        ("/srv/app/data/video_jobs/output/../abc.mp4", "abc.mp4"),
        # relative, led by a trailing part of the root
        ("data/video_jobs/output/abc.json", "output/abc.json"),
        ("./data/video_jobs/abc.mp4", "abc.mp4"),
        ("video_jobs/abc.mp4", "abc.mp4"),
        ("app/data/video_jobs/in/abc.mp4", "in/abc.mp4"),
        ("srv/app/data/video_jobs/abc.mp4", "abc.mp4"),
        (".//data/./video_jobs/sub/../abc.mp4", "abc.mp4"),
        # names that only look special stay names
        ("data/video_jobs/..hidden/a b.mp4", "..hidden/a b.mp4"),
    ],
)
def test_paths_below_the_root_map_to_their_place(raw, expected):
    assert map_legacy_path(raw, ROOT) == PurePosixPath(expected)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # outside the root
        ("/etc/passwd", "outside the root"),
        ("/srv/app/data/video_jobs_old/abc.mp4", "outside the root"),
        ("/srv/app/data/abc.mp4", "outside the root"),
        ("other/video_jobs_x/abc.mp4", "does not start with the end of the root"),
        ("output/abc.json", "does not start with the end of the root"),
        ("abc.mp4", "does not start with the end of the root"),
        # `..` that escapes
        ("/srv/app/data/video_jobs/../secret.mp4", "'..' leads outside the root"),
        ("/srv/app/data/video_jobs/output/../../../../etc/passwd", "'..' leads outside"),
        ("/../../etc/passwd", "'..' leads above /"),
        ("../data/video_jobs/abc.mp4", "'..' leads above the start"),
        ("./../video_jobs/abc.mp4", "'..' leads above the start"),
        ("data/video_jobs/../../../etc/passwd", "'..' leads above the start"),
        ("data/video_jobs/../../etc/passwd", "'..' leads outside the root"),
        # URLs, drives, other syntaxes
        ("file:///srv/app/data/video_jobs/abc.mp4", "URL"),
        ("https://example.com/video_jobs/abc.mp4", "URL"),
        ("s3://bucket/data/video_jobs/abc.mp4", "URL"),
        ("C:\\data\\video_jobs\\abc.mp4", "URL or drive"),
        ("data\\video_jobs\\abc.mp4", "backslash"),
        ("data/video_jobs/abc\x00.mp4", "control"),
        ("data/video_jobs/abc\u202e4pm.exe", "control"),
        # empty, or no file at all
        ("", "empty path"),
        ("   ", "empty path"),
        (None, "empty path"),
        (42, "is not a path"),
        ("/srv/app/data/video_jobs", "names the root"),
        ("/srv/app/data/video_jobs/.", "names the root"),
        ("./data/video_jobs/", "names the root"),
    ],
)
def test_everything_else_is_refused_with_the_reason(raw, reason):
    with pytest.raises(PathRefused) as refused:
        map_legacy_path(raw, ROOT)
    assert reason in refused.value.reason


def test_a_path_matching_trailing_parts_of_two_lengths_is_ambiguous():
    root = PurePosixPath("/x/data/data")
    # `data/data/f` is root/f if the old process ran in /x, root/data/f if it
    # ran in /x/data: never guessed.
    with pytest.raises(PathRefused, match="ambiguous"):
        map_legacy_path("data/data/f.mp4", root)
    assert map_legacy_path("x/data/data/f.mp4", root) == PurePosixPath("f.mp4")


def test_refusals_show_the_path_escaped_and_bounded():
    with pytest.raises(PathRefused) as refused:
        map_legacy_path("/etc/\x1b[31m" + "a" * 500, ROOT)
    assert "\x1b" not in refused.value.reason
    assert len(refused.value.reason) < 400


def test_field_aliases_resolve_to_canonical_names():
    record = {
        "UUID": "j-1",
        "Status": "done",
        "video_path": "data/video_jobs/a.mp4",
        "result_path": "data/video_jobs/output/a.json",
        "submitted_at": "2024-01-02T03:04:05Z",
        "started_at": 1700000000,
        "completed_at": "2024-01-02 03:05:00",
        "error_message": "",
        "unrelated": {"nested": True},
    }
    assert resolve_fields(record) == {
        "id": "j-1",
        "state": "done",
        "input": "data/video_jobs/a.mp4",
        "output": "data/video_jobs/output/a.json",
        "created_at": "2024-01-02T03:04:05Z",
        "started_at": 1700000000,
        "finished_at": "2024-01-02 03:05:00",
    }


@pytest.mark.parametrize(
    ("aliases", "canonical"),
    [
        (("id", "job_id", "uuid"), "id"),
        (("state", "status"), "state"),
        (("input", "input_path", "source", "video_path"), "input"),
        (("output", "output_path", "result_path"), "output"),
        (("created_at", "created", "submitted_at"), "created_at"),
        (("started_at",), "started_at"),
        (("finished_at", "completed_at", "ended_at"), "finished_at"),
        (("error", "error_message"), "error"),
    ],
)
def test_every_alias_is_accepted(aliases, canonical):
    for alias in aliases:
        assert resolve_fields({alias: "v"}) == {canonical: "v"}
    # Two aliases agreeing is fine; disagreeing is refused (no guess which is right).
    if len(aliases) > 1:
        assert resolve_fields({aliases[0]: "v", aliases[1]: "v"}) == {canonical: "v"}
        with pytest.raises(RecordRefused, match="disagree"):
            resolve_fields({aliases[0]: "v", aliases[1]: "w"})


def test_blank_values_count_as_absent_and_binary_values_are_refused():
    assert resolve_fields({"id": "a", "output": "", "error": None, "finished_at": " "}) == {
        "id": "a"
    }
    with pytest.raises(RecordRefused, match="bytes"):
        resolve_fields({"id": b"\x00\x01"})


@pytest.mark.parametrize(
    ("value", "state"),
    [
        ("succeeded", JobState.SUCCEEDED),
        ("COMPLETED", JobState.SUCCEEDED),
        (" done ", JobState.SUCCEEDED),
        ("success", JobState.SUCCEEDED),
        ("failed", JobState.FAILED),
        ("Error", JobState.FAILED),
        ("cancelled", JobState.CANCELLED),
        ("canceled", JobState.CANCELLED),
        ("aborted", JobState.CANCELLED),
    ],
)
def test_final_states(value, state):
    assert parse_state(value) is state


@pytest.mark.parametrize("value", ["queued", "pending", "RUNNING", "in-progress", "processing"])
def test_live_states_are_not_importable(value):
    with pytest.raises(RecordRefused, match="not final"):
        parse_state(value)


@pytest.mark.parametrize("value", ["exploded", "", None, 3])
def test_unknown_states_are_refused(value):
    with pytest.raises(RecordRefused):
        parse_state(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05+00:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        # what DuckDB writes for TIMESTAMPTZ and TIMESTAMP columns
        ("2024-01-02 03:04:05.25+00", datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)),
        ("2024-01-02 03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T05:04:05+02:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02", datetime(2024, 1, 2, tzinfo=UTC)),
        (1704164645, datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (1704164645.5, datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
        ("1704164645", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (" 1704164645.25 ", datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)),
        (
            datetime(2024, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1))),
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
    ],
)
def test_timestamps_iso_8601_or_epoch_seconds_in_utc(value, expected):
    parsed = parse_timestamp(value)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "02/01/2024",
        "",
        -5,
        float("nan"),
        float("inf"),
        True,
        1704164645000,  # milliseconds, not seconds: out of range, never rescaled
        "1704164645000",
        "1969-12-31T23:59:59Z",
        [2024],
    ],
)
def test_other_times_are_refused(value):
    with pytest.raises(RecordRefused):
        parse_timestamp(value)


def test_job_ids_are_derived_deterministically_and_request_ids_keep_the_legacy_id():
    first = legacy_job_id("job-0001")
    assert JOB_ID_PATTERN.fullmatch(first)
    assert legacy_job_id("job-0001") == first
    assert legacy_job_id("job-0002") != first
    # Pinned: changing the namespace would make re-runs import everything again.
    assert first == "03ff0abfd2ef56d39301038b1437ee36"
    assert legacy_request_id("job-0001") == "legacy:job-0001"


def test_legacy_ids_are_bounded_printable_ascii():
    assert check_legacy_id("  job-1 ") == "job-1"
    assert check_legacy_id(42) == "42"
    longest = "x" * MAX_LEGACY_ID_CHARS
    assert len(legacy_request_id(check_legacy_id(longest))) == 128
    for bad in ["x" * (MAX_LEGACY_ID_CHARS + 1), "a b", "é", "a\x00", None, "", 1.5, True]:
        with pytest.raises(RecordRefused):
            check_legacy_id(bad)


def test_legacy_errors_become_one_clean_line_without_host_paths():
    trace = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/worker.py", line 3, in run\n'
        "ValueError: cannot decode /srv/app/data/video_jobs/a.mp4"
    )
    assert legacy_error_text(trace) == "ValueError: cannot decode <path>"
    assert legacy_error_text("timeout\nsecond line") == "timeout"
    assert legacy_error_text("bad \u202e text") == "bad text"
    assert legacy_error_text("   ") == ""
    assert len(legacy_error_text("x" * 5000)) == 512
