"""`videojobs fetch` and `videojobs results --document` over a fake JobClient:
what they print, where, their exit codes, and that server-made text is made
harmless before it reaches a terminal."""

from __future__ import annotations

import io
import json
from pathlib import Path

import grpc
import pytest
from rich.console import Console

from videojobs.cli import main as cli_main
from videojobs.cli.progress import PlainDownloadDisplay, RichDownloadDisplay
from videojobs.cli.render import format_document
from videojobs.client import VideoJobsError

JOB_ID = "0123456789abcdef" * 2

NOT_SUCCEEDED = VideoJobsError(
    grpc.StatusCode.FAILED_PRECONDITION,
    f"job {JOB_ID} is RUNNING: only a SUCCEEDED job has a result",
    reason="JOB_NOT_SUCCEEDED",
    domain="videojobs.dev",
    metadata={"job_id": JOB_ID, "state": "RUNNING"},
)


class FakeJobClient:
    """Plays JobClient's part for `fetch` and `results --document`."""

    answer: object = None
    instances: list[FakeJobClient] = []

    def __init__(self, address: str, *, timeout: float | None = None, **credentials) -> None:
        self.calls: list[tuple] = []
        FakeJobClient.instances.append(self)

    def __enter__(self) -> FakeJobClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def _reply(self):
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def read_result(self, job_id: str) -> dict:
        self.calls.append(("read_result", job_id))
        return self._reply()

    def download(self, job_id: str, directory, *, on_progress=None) -> list[Path]:
        self.calls.append(("download", job_id, directory))
        if on_progress is not None:
            for done in (0, 50, 100):
                on_progress(done, 100)
        reply = self._reply()
        return [Path(directory) / name for name in reply]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeJobClient]:
    FakeJobClient.answer = None
    FakeJobClient.instances = []
    monkeypatch.setattr(cli_main, "JobClient", FakeJobClient)
    return FakeJobClient


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fetch_prints_the_written_paths_into_the_job_id_by_default(fake, capsys) -> None:
    fake.answer = ["results.json", "thumbnails/0000.jpg"]
    code, out, err = run(["fetch", JOB_ID], capsys)
    assert code == 0
    assert out.splitlines() == [f"{JOB_ID}/results.json", f"{JOB_ID}/thumbnails/0000.jpg"]
    assert fake.instances[0].calls == [("download", JOB_ID, Path(JOB_ID))]
    # Off a terminal, progress is plain lines on stderr, never on stdout.
    assert err.splitlines() == [f"fetching job {JOB_ID} (100 B)", "fetched 50.0%", "fetched 100 B"]


def test_fetch_output_names_the_directory(fake, capsys, tmp_path) -> None:
    fake.answer = ["results.json"]
    code, out, _ = run(["fetch", JOB_ID, "-o", str(tmp_path / "out")], capsys)
    assert (code, out) == (0, f"{tmp_path / 'out' / 'results.json'}\n")


def test_fetch_of_a_job_without_a_result_exits_1_with_the_reason(fake, capsys) -> None:
    fake.answer = NOT_SUCCEEDED
    code, out, err = run(["fetch", JOB_ID, "--output", "somewhere"], capsys)
    assert (code, out) == (1, "")
    assert "error: FAILED_PRECONDITION" in err
    assert "reason: JOB_NOT_SUCCEEDED" in err and "state=RUNNING" in err


def test_fetch_into_an_unwritable_directory_exits_2(fake, capsys) -> None:
    fake.answer = PermissionError(13, "Permission denied")
    code, out, err = run(["fetch", JOB_ID, "-o", "/proc/nope"], capsys)
    assert (code, out) == (2, "")
    assert "cannot write to /proc/nope: Permission denied" in err
    assert "Traceback" not in err


def test_fetch_strips_unsafe_characters_from_printed_paths(fake, capsys) -> None:
    fake.answer = ["thumbnails/\x1b[2Jevil\u202egpj.jpg"]
    code, out, _ = run(["fetch", JOB_ID], capsys)
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out
    assert out == f"{JOB_ID}/thumbnails/[2Jevilgpj.jpg\n"


def test_results_document_prints_the_json_pretty_in_stored_key_order(fake, capsys) -> None:
    fake.answer = {"zeta": 1, "alpha": {"text": "Grüße", "list": [1, 2.5, None]}}
    code, out, _ = run(["results", JOB_ID, "--document"], capsys)
    assert code == 0
    assert json.loads(out) == fake.answer
    assert list(json.loads(out)) == ["zeta", "alpha"]
    assert '  "zeta": 1,' in out.splitlines()  # indented, one member per line
    assert "Grüße" in out  # readable, not \\u-escaped
    assert fake.instances[0].calls == [("read_result", JOB_ID)]


def test_results_document_escapes_unsafe_characters_and_stays_the_same_json(fake, capsys) -> None:
    hostile = {"text\u202e": "a\x1b[31mb\u200bc", "line\u2028": "x"}
    fake.answer = hostile
    code, out, _ = run(["results", JOB_ID, "--document"], capsys)
    assert code == 0
    assert all(char not in out for char in "\x1b\u202e\u200b\u2028")
    assert json.loads(out) == hostile


def test_results_document_of_a_job_without_a_result_exits_1(fake, capsys) -> None:
    fake.answer = NOT_SUCCEEDED
    code, out, err = run(["results", JOB_ID, "--document"], capsys)
    assert (code, out) == (1, "")
    assert "JOB_NOT_SUCCEEDED" in err


@pytest.mark.parametrize("extra", [["--follow"], ["--after", "3"]])
def test_results_document_takes_no_event_options(fake, capsys, extra: list[str]) -> None:
    code, out, err = run(["results", JOB_ID, "--document", *extra], capsys)
    assert (code, out) == (2, "")
    assert "--document" in err
    assert fake.instances[0].calls == []


def test_format_document_keeps_unicode_and_order() -> None:
    assert format_document({"b": "é", "a": [1]}) == '{\n  "b": "é",\n  "a": [\n    1\n  ]\n}'


def test_the_plain_download_display_prints_each_tenth_once() -> None:
    stream = io.StringIO()
    display = PlainDownloadDisplay("job x", stream)
    for done in (0, 5, 15, 19, 35, 100, 100):
        display.progress(done, 100)
    assert stream.getvalue().splitlines() == [
        "fetching job x (100 B)",
        "fetched 15.0%",
        "fetched 35.0%",
        "fetched 100 B",
    ]


def test_the_rich_download_display_never_interprets_markup() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    with RichDownloadDisplay("job [bold]x[/bold]\x1b[2J", console) as display:
        display.progress(0, 2048)
        display.progress(2048, 2048)
    text = out.getvalue()
    assert "[bold]x[/bold]" in text
    assert "\x1b[2J" not in text
