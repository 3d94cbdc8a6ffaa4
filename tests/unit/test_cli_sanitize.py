"""The CLI never prints a server's string raw: escape sequences, C1 controls,
bidirectional overrides and zero-width characters are removed from text and
escaped in JSON, and rich never interprets server text as markup."""

from __future__ import annotations

import io
import json
import unicodedata

import pytest
from rich.console import Console

from videojobs.cli.progress import PlainProgressDisplay, RichProgressDisplay
from videojobs.cli.render import (
    format_error,
    format_event_line,
    format_job_summary,
    jobs_table,
    printable,
    to_json,
)
from videojobs.client import VideoJobsError
from videojobs.v1 import job_pb2

HOSTILE = "evil\x1b[2J\x1b]8;;http://x\x07\x9b31m\x7f\u202egpj.exe\u200b\u2066[bold]x[/bold]"
UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}


def _unsafe_chars(text: str) -> list[str]:
    return [c for c in text if c != "\n" and unicodedata.category(c) in UNSAFE]


def test_printable_removes_every_unsafe_character_and_keeps_the_rest() -> None:
    assert printable(HOSTILE) == "evil[2J]8;;http://x31mgpj.exe[bold]x[/bold]"
    assert printable("café ünïcode 日本") == "café ünïcode 日本"
    assert printable("a\tb") == "a b"


def test_event_lines_carry_no_control_or_bidi_characters() -> None:
    events = [
        job_pb2.JobEvent(sequence=1, cancelled=job_pb2.JobCancelled(reason=HOSTILE)),
        job_pb2.JobEvent(sequence=2, progress=job_pb2.Progress(fraction=0.5, stage=HOSTILE)),
        job_pb2.JobEvent(
            sequence=3,
            state_changed=job_pb2.StateChanged(
                from_state=job_pb2.JOB_STATE_QUEUED,
                to_state=job_pb2.JOB_STATE_RUNNING,
                reason=HOSTILE,
            ),
        ),
    ]
    for event in events:
        line = format_event_line(event)
        assert _unsafe_chars(line) == [], repr(line)
        assert "gpj.exe" in line


def test_job_summary_and_table_carry_no_unsafe_characters() -> None:
    job = job_pb2.Job(
        job_id="a" * 32,
        state=job_pb2.JOB_STATE_CANCELLED,
        pipeline="probe",
        file_name=HOSTILE,
        warnings=[HOSTILE],
    )
    job.error.message = HOSTILE
    for line in format_job_summary(job):
        assert _unsafe_chars(line) == [], repr(line)
    console = Console(width=400, file=io.StringIO(), force_terminal=False)
    job.pipeline = "[red]probe[/red]"
    with console.capture() as captured:
        console.print(jobs_table([job]))
    # Not interpreted as markup: the brackets are printed as they are.
    assert "[red]probe[/red]" in captured.get()


def test_json_output_escapes_unsafe_characters_and_stays_the_same_json() -> None:
    job = job_pb2.Job(job_id="a" * 32, file_name=HOSTILE + "\U0001f600")
    text = to_json(job)
    assert _unsafe_chars(text) == []
    assert json.loads(text)["fileName"] == HOSTILE + "\U0001f600"
    one_line = to_json(job, one_line=True)
    assert "\n" not in one_line and json.loads(one_line)["fileName"] == job.file_name


def test_error_lines_carry_no_unsafe_characters() -> None:
    error = VideoJobsError(code=_code("INVALID_ARGUMENT"), message=HOSTILE)
    error.field_violations = [(HOSTILE, HOSTILE)]
    for line in format_error(error):
        assert _unsafe_chars(line) == [], repr(line)


@pytest.mark.parametrize("interactive", [True, False])
def test_progress_displays_print_no_unsafe_characters(interactive: bool) -> None:
    out = io.StringIO()
    if interactive:
        display = RichProgressDisplay(
            HOSTILE, Console(file=out, force_terminal=True, width=200, color_system=None)
        )
    else:
        display = PlainProgressDisplay(HOSTILE, out)
    job = job_pb2.Job(job_id="b" * 32, state=job_pb2.JOB_STATE_QUEUED)
    with display:
        display.upload(0, 10)
        display.upload(10, 10)
        display.submitted(job)
        display.job_event(
            job_pb2.JobEvent(
                sequence=2,
                job_state=job_pb2.JOB_STATE_RUNNING,
                progress=job_pb2.Progress(fraction=0.5, stage=HOSTILE),
            )
        )
        display.job_event(
            job_pb2.JobEvent(
                sequence=3,
                job_state=job_pb2.JOB_STATE_CANCELLED,
                cancelled=job_pb2.JobCancelled(reason=HOSTILE),
            )
        )
    text = out.getvalue()
    if interactive:
        # rich draws the bars with its own escape sequences (cursor moves);
        # none of the server's may appear: no OSC hyperlink, no clear-screen.
        assert "\x1b]8" not in text and "\x1b[2J" not in text
        assert "\u202e" not in text and "\x9b" not in text and "\x07" not in text
        assert "[bold]x[/bold]" in text  # printed, not interpreted as markup
    else:
        assert _unsafe_chars(text) == []
    assert "gpj.exe" in text


def _code(name: str):
    import grpc

    return getattr(grpc.StatusCode, name)
