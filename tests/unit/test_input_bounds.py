"""Bounds on what clients and workers send: text cleaning, header checks,
worker-report limits and signed page tokens (pure logic, no server)."""

from __future__ import annotations

import base64
import json

import pytest

from videojobs.common import errors
from videojobs.common.text import clean_text, echo, has_unsafe_chars, redact_host_paths
from videojobs.jobservice.domain import JobState
from videojobs.jobservice.limits import (
    MAX_PARAMETER_DEPTH,
    MAX_PARAMETER_STRING_CHARS,
    MAX_PIPELINES_PER_JOB,
    MAX_WARNINGS,
    ReportLimits,
)
from videojobs.jobservice.queries import PageTokens
from videojobs.jobservice.reports import (
    GENERIC_FAILURE,
    ReportPolicy,
    TokenBucket,
    clean_failure,
    clean_stage,
    clean_warnings,
    completion_problem,
)
from videojobs.jobservice.upload_checks import (
    check_file_name,
    check_parameters_shape,
    check_pipeline_names,
)

# -- text ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a\x85b.mp4",  # C1 NEXT LINE
        "a\x9bb.mp4",  # C1 CSI
        "a\x7fb.mp4",  # DEL
        "clip\u202egpj.mp4",  # RIGHT-TO-LEFT OVERRIDE
        "cl\u200bip.mp4",  # ZERO WIDTH SPACE
        "cl\u2066ip.mp4",  # LEFT-TO-RIGHT ISOLATE
        "a\x1b[31mb.mp4",
        "a\u2028b.mp4",  # LINE SEPARATOR
        "a\ufeffb.mp4",  # BYTE ORDER MARK / ZWNBSP
    ],
)
def test_file_names_with_unsafe_characters_are_refused(name: str) -> None:
    assert has_unsafe_chars(name)
    [(field, description)] = check_file_name(name)
    assert field == "header.file_name"
    assert "control" in description


@pytest.mark.parametrize("name", ["clip.mp4", "Été à Paris (2).mov", "映画.mkv", "a b.avi"])
def test_ordinary_file_names_pass(name: str) -> None:
    assert check_file_name(name) == []


def test_file_name_bounds() -> None:
    assert check_file_name("") == [("header.file_name", "is required")]
    assert check_file_name("é" * 128)  # 256 bytes of UTF-8
    assert check_file_name("é" * 127 + "a") == []  # 255 bytes
    assert check_file_name("../x.mp4")


def test_clean_text_strips_cuts_and_keeps_one_line() -> None:
    assert clean_text("a\nb\tc\x1b[2J\u202ed", 100) == "a b c[2Jd"
    assert clean_text("x" * 100, 10) == "x" * 9 + "…"
    assert len(clean_text("y" * 10_000, 64)) == 64


def test_echo_is_short_and_safe() -> None:
    echoed = echo("\x1b" + "z" * 1_000_000)
    assert len(echoed) <= 36 and "\x1b" not in echoed


def test_host_paths_are_redacted() -> None:
    text = "cannot open /srv/app/data/video_jobs/x.mp4 or C:\\data\\x.mp4 (jobs/ab/input/k)"
    assert redact_host_paths(text) == "cannot open <path> or <path> (jobs/ab/input/k)"


# -- header shape ------------------------------------------------------------------


def test_pipeline_names_are_bounded_before_lookup() -> None:
    assert check_pipeline_names(["probe", "ocr"], "header.pipelines") == []
    too_many = check_pipeline_names(["p"] * (MAX_PIPELINES_PER_JOB + 1), "header.pipelines")
    assert too_many == [("header.pipelines", f"at most {MAX_PIPELINES_PER_JOB} pipelines per job")]
    [(_, description)] = check_pipeline_names(["x" * 1_000_000], "header.pipeline")
    assert len(description) < 200


def test_parameters_are_bounded_in_size_depth_keys_and_strings() -> None:
    field = "header.parameters"
    assert check_parameters_shape({"detect": {"classes": "qr_code,face"}}, field) == []
    [(path, _)] = check_parameters_shape({"detect": {"classes": "x" * 1_200_000}}, field)
    assert path == field  # refused by total size before anything else
    [(path, _)] = check_parameters_shape({"detect": {"classes": "x" * 2000}}, field)
    assert path == "header.parameters.detect.classes"
    long_string = "x" * (MAX_PARAMETER_STRING_CHARS + 1)
    assert check_parameters_shape({"a": long_string}, field)
    deep: dict = {}
    node = deep
    for _ in range(MAX_PARAMETER_DEPTH + 1):
        node["k"] = {}
        node = node["k"]
    assert check_parameters_shape(deep, field)
    [(path, description)] = check_parameters_shape({"k" * 200: 1}, field)
    assert path == field and len(description) < 200
    assert check_parameters_shape({"a\u202e": 1}, field)


# -- worker reports ------------------------------------------------------------------


def test_failure_text_is_one_clean_line_without_paths_or_traces() -> None:
    error = clean_failure(
        "INTERNAL",
        "cannot read /srv/data/video_jobs/x.mp4\x1b[2J\nsecond line",
        "PIPELINE_CRASHED",
        {"path": "/srv/x/y.mp4", "Bad Key": "v", **{f"k{i}": "v" for i in range(20)}},
    )
    assert error.message == "cannot read <path>[2J"
    assert error.metadata["path"] == "<path>" and "Bad Key" not in error.metadata
    assert len(error.metadata) <= 8
    traceback = clean_failure(
        "INTERNAL",
        'Traceback (most recent call last):\n  File "/srv/x.py", line 1\nsqlite3.Error: SELECT',
        "not a reason",
        {},
    )
    assert traceback.message == GENERIC_FAILURE and traceback.reason == "PIPELINE_FAILED"
    assert len(clean_failure("INTERNAL", "m" * 100_000, "R", {}).message) == 512


def test_stage_and_warnings_are_bounded() -> None:
    assert clean_stage("\x1b[2Jdecoding" + "x" * 500) == "[2Jdecoding" + "x" * 52 + "…"
    warnings = clean_warnings(["w\x07" + str(i) for i in range(200)])
    assert len(warnings) == MAX_WARNINGS
    assert warnings[0] == "w0" and warnings[-1] == "... and 151 more warning(s)"


def test_completion_limits() -> None:
    assert completion_problem(10, 1000, 5000) is None
    assert completion_problem(10_001, 0, 0).reason == "TOO_MANY_ARTIFACTS"
    assert completion_problem(0, 65 * 1024, 0).reason == "SUMMARY_TOO_LARGE"
    assert completion_problem(0, 0, 3 * 1024 * 1024).reason == "REPORT_TOO_LARGE"


def test_partial_results_are_limited_by_size_bytes_events_and_rate() -> None:
    policy = ReportPolicy(
        ReportLimits(
            max_partial_result_bytes=1000,
            partial_results_per_second=0.001,
            partial_result_burst=3,
            max_partial_result_bytes_per_job=5000,
            max_events_per_job=50,
        )
    )
    bucket = policy.new_bucket()
    assert policy.partial_result_problem(1001, 0, 0, bucket).reason == "PARTIAL_RESULT_TOO_LARGE"
    assert policy.partial_result_problem(900, 4500, 0, bucket).reason == (
        "PARTIAL_RESULTS_TOO_LARGE"
    )
    assert policy.partial_result_problem(10, 0, 50, bucket).reason == "TOO_MANY_EVENTS"
    assert [policy.partial_result_problem(10, 0, 0, bucket) for _ in range(3)] == [None] * 3
    assert policy.partial_result_problem(10, 0, 0, bucket).reason == "EVENT_RATE_EXCEEDED"


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=10.0, burst=2)
    assert bucket.take() and bucket.take() and not bucket.take()
    bucket.updated -= 0.1  # as if 0.1 s had passed: one token back
    assert bucket.take() and not bucket.take()


# -- page tokens -----------------------------------------------------------------------


def _payload_of(token: str) -> dict:
    encoded = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


def test_page_tokens_round_trip_and_bind_the_filter() -> None:
    tokens = PageTokens(b"k" * 32)
    token = tokens.encode(1234, [JobState.QUEUED], "probe")
    assert tokens.decode(token, [JobState.QUEUED], "probe") == 1234
    with pytest.raises(errors.ServiceError, match="different filter"):
        tokens.decode(token, [], "probe")


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature altered
        lambda t: base64.urlsafe_b64encode(b'{"p":1e400,"f":"x"}').decode() + "." + t.split(".")[1],
        lambda t: "",
        lambda t: "x" * 10_000,
        lambda t: "[" * 100_000,
        lambda t: "a.b.c",
        lambda t: "no-dot-at-all",
        lambda t: "%%%.%%%",
        lambda t: "\u00e9\u00e9.\u00e9",
    ],
)
def test_any_token_not_issued_by_the_server_is_invalid_argument(forge) -> None:
    tokens = PageTokens(b"k" * 32)
    token = tokens.encode(99, [], "")
    forged = forge(token)
    if not forged:
        return  # an empty token means "first page": nothing to refuse
    with pytest.raises(errors.ServiceError) as raised:
        tokens.decode(forged, [], "")
    assert raised.value.code == "INVALID_ARGUMENT"


def test_a_token_signed_with_another_key_is_refused() -> None:
    ours, theirs = PageTokens(b"a" * 32), PageTokens(b"b" * 32)
    forged = theirs.encode(5, [], "")
    assert _payload_of(forged)["p"] == 5
    with pytest.raises(errors.ServiceError):
        ours.decode(forged, [], "")


def test_field_violations_are_bounded_in_number_and_size() -> None:
    error = errors.invalid_argument("bad", [("f" * 10_000, "d" * 10_000) for _ in range(1000)])
    assert len(error.field_violations) == errors.MAX_FIELD_VIOLATIONS + 1
    assert all(len(f) <= 160 and len(d) <= 400 for f, d in error.field_violations)
    assert error.field_violations[-1][1] == "980 more violation(s) not listed"
