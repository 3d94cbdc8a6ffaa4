"""Command-line syntax: `--param KEY=VALUE`, `--state`, global options and usage errors."""

from __future__ import annotations

import argparse

import pytest

from videojobs.cli.args import build_parser, parse_param, parse_state_arg
from videojobs.cli.main import main
from videojobs.v1 import job_pb2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n=3", ("n", 3)),
        ("ratio=0.25", ("ratio", 0.25)),
        ("flag=true", ("flag", True)),
        ("flag=false", ("flag", False)),
        ("nothing=null", ("nothing", None)),
        ('quoted="3"', ("quoted", "3")),
        ("list=[1, 2]", ("list", [1, 2])),
        ('obj={"a": "b"}', ("obj", {"a": "b"})),
        ("name=hello", ("name", "hello")),
        ("name=hello world", ("name", "hello world")),
        ("empty=", ("empty", "")),
        ("expr=a=b", ("expr", "a=b")),
        ("version=1.2.3", ("version", "1.2.3")),
        ("unclosed=[1,", ("unclosed", "[1,")),
        (" key =3", ("key", 3)),
    ],
)
def test_param_value_is_json_when_it_parses_else_a_string(text: str, expected: tuple) -> None:
    assert parse_param(text) == expected


@pytest.mark.parametrize("text", ["x=NaN", "x=Infinity", "x=-Infinity", "x=1e999"])
def test_param_values_a_struct_cannot_carry_stay_strings(text: str) -> None:
    assert parse_param(text) == ("x", text[2:])


@pytest.mark.parametrize("text", ["novalue", "=3", " =3", ""])
def test_param_without_key_or_equals_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_param(text)


def test_repeated_params_are_collected() -> None:
    args = build_parser().parse_args(
        ["submit", "clip.mp4", "--param", "a=1", "--param", "b=x", "--param", "c=true"]
    )
    assert args.params == {"a": 1, "b": "x", "c": True}


def test_dotted_params_set_one_pipelines_parameters() -> None:
    args = build_parser().parse_args(
        ["submit", "clip.mp4", "--pipeline", "thumbnails", "--pipeline", "ocr"]
        + ["--param", "thumbnails.mode=interval", "--param", "thumbnails.interval_seconds=2"]
        + ["--param", "ocr.min_confidence=0.7", "--param", "target_fps=1"]
    )
    assert args.params == {
        "thumbnails": {"mode": "interval", "interval_seconds": 2},
        "ocr": {"min_confidence": 0.7},
        "target_fps": 1,
    }


@pytest.mark.parametrize(
    "repeated",
    [
        ["--param", "ocr.max_side=1", "--param", "ocr.max_side=2"],
        ["--param", "ocr=3", "--param", "ocr.max_side=2"],
    ],
)
def test_a_dotted_param_given_twice_is_a_usage_error(
    repeated: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["submit", "clip.mp4", *repeated]) == 2
    assert "given more than once" in capsys.readouterr().err


def test_no_params_is_an_empty_dict() -> None:
    assert build_parser().parse_args(["submit", "clip.mp4"]).params == {}


def test_a_repeated_param_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "clip.mp4", "--param", "a=1", "--param", "a=2"]) == 2
    assert "parameter 'a' given more than once" in capsys.readouterr().err


def test_a_malformed_param_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "clip.mp4", "--param", "novalue"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("queued", job_pb2.JOB_STATE_QUEUED),
        ("RUNNING", job_pb2.JOB_STATE_RUNNING),
        ("JOB_STATE_SUCCEEDED", job_pb2.JOB_STATE_SUCCEEDED),
        ("job_state_failed", job_pb2.JOB_STATE_FAILED),
        ("Cancelled", job_pb2.JOB_STATE_CANCELLED),
    ],
)
def test_state_names_are_accepted_in_any_case_with_or_without_prefix(
    text: str, expected: int
) -> None:
    assert parse_state_arg(text) == expected


@pytest.mark.parametrize("text", ["done", "unspecified", "JOB_STATE_UNSPECIFIED", "1"])
def test_unknown_states_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected one of"):
        parse_state_arg(text)


def test_list_collects_repeated_states() -> None:
    args = build_parser().parse_args(["list", "--state", "queued", "--state", "JOB_STATE_RUNNING"])
    assert args.states == [job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING]


def test_an_unknown_state_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--state", "done"]) == 2
    assert "unknown job state 'done'" in capsys.readouterr().err


def test_address_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDEOJOBS_ADDRESS", "jobs.example:9000")
    assert build_parser().parse_args(["status", "j"]).address == "jobs.example:9000"
    monkeypatch.delenv("VIDEOJOBS_ADDRESS")
    assert build_parser().parse_args(["status", "j"]).address == "127.0.0.1:50051"


@pytest.mark.parametrize(
    "argv",
    [
        ["--address", "h:1", "--timeout", "2.5", "status", "j"],
        ["status", "j", "--address", "h:1", "--timeout", "2.5"],
    ],
)
def test_global_options_go_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.address, args.timeout) == ("h:1", 2.5)


def test_global_option_after_the_command_is_not_reset_by_its_default() -> None:
    args = build_parser().parse_args(["--timeout", "4", "status", "j"])
    assert args.timeout == 4.0


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["status"],
        ["--timeout", "0", "status", "j"],
        ["--timeout", "soon", "status", "j"],
        ["results", "j", "--after", "-1"],
        ["list", "--page-size", "many"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: videojobs" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "submit" in capsys.readouterr().out
