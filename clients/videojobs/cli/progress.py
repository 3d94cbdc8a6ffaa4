"""Progress of an upload and of a running job, shown on stderr so stdout
carries only the command's result: rich progress bars on a terminal, a few
plain lines otherwise (logs, pipes)."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from videojobs.cli.render import (
    event_kind,
    format_bytes,
    format_event_details,
    format_percent,
    printable,
)
from videojobs.client import is_terminal_event, job_state_name
from videojobs.v1 import job_pb2


class ProgressDisplay:
    """Receives upload and job progress; the base class shows nothing.

    Use as a context manager around the upload and the wait. `upload` may be
    called from gRPC's sending thread.
    """

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def upload(self, bytes_sent: int, total_bytes: int) -> None:
        """`bytes_sent` of `total_bytes` have been handed to gRPC."""

    def submitted(self, job: job_pb2.Job) -> None:
        """The upload finished and the server created `job`."""

    def job_event(self, event: job_pb2.JobEvent) -> None:
        """An event of the submitted job arrived."""


class RichProgressDisplay(ProgressDisplay):
    """Two rich progress bars: the upload in bytes, then the job's fraction
    with its state and stage."""

    def __init__(self, file_label: str, console: Console) -> None:
        # Shown through rich, which reads markup: escaped, never interpreted.
        self._file_label = _safe_markup(file_label)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._upload_task: TaskID | None = None
        self._job_task: TaskID | None = None

    def __enter__(self) -> RichProgressDisplay:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def upload(self, bytes_sent: int, total_bytes: int) -> None:
        """Advances the upload bar."""
        detail = f"{format_bytes(bytes_sent)} / {format_bytes(total_bytes)}"
        if self._upload_task is None:
            self._upload_task = self._progress.add_task(
                f"upload {self._file_label}", total=total_bytes, detail=detail
            )
        self._progress.update(self._upload_task, completed=bytes_sent, detail=detail)

    def submitted(self, job: job_pb2.Job) -> None:
        """Notes the job id above the bars and starts the job bar."""
        self._progress.console.print(f"submitted job {job.job_id}")
        self._job_task = self._progress.add_task(
            f"job {job_state_name(job.state).lower()}",
            total=1.0,
            completed=job.progress.fraction,
            detail=_safe_markup(job.progress.stage),
        )

    def job_event(self, event: job_pb2.JobEvent) -> None:
        """Moves the job bar; states and the outcome show in its description."""
        if self._job_task is None:
            return
        kind = event.WhichOneof("payload")
        description = f"job {job_state_name(event.job_state).lower()}"
        if kind == "progress":
            self._progress.update(
                self._job_task,
                description=description,
                completed=event.progress.fraction,
                detail=_safe_markup(event.progress.stage),
            )
        elif kind == "state_changed":
            # Progress belongs to an attempt: a requeued job starts again from 0.
            requeued = event.state_changed.to_state == job_pb2.JOB_STATE_QUEUED
            self._progress.update(
                self._job_task,
                description=description,
                completed=0.0 if requeued else None,
                detail=f"attempt {event.attempt}",
            )
        elif is_terminal_event(event):
            completed = 1.0 if kind == "completed" else None
            self._progress.update(
                self._job_task, description=description, completed=completed, detail=""
            )
            if kind != "completed":
                self._progress.console.print(f"{kind}: {_safe_markup(format_event_details(event))}")


class PlainProgressDisplay(ProgressDisplay):
    """A line per notable step: upload start, every 10 %, and end; job state
    changes, progress every 10 % or new stage, and the outcome."""

    def __init__(self, file_label: str, stream: TextIO) -> None:
        self._file_label = file_label
        self._stream = stream
        self._upload_tenths = 0
        self._job_id = ""
        self._job_tenths = -1
        self._job_stage = ""

    def upload(self, bytes_sent: int, total_bytes: int) -> None:
        """Prints the upload's start, each 10 % step, and its end."""
        if bytes_sent == 0:
            self._line(f"uploading {self._file_label} ({format_bytes(total_bytes)})")
            return
        if bytes_sent >= total_bytes:
            self._line(f"uploaded {format_bytes(total_bytes)}")
            return
        tenths = bytes_sent * 10 // total_bytes
        if tenths > self._upload_tenths:
            self._upload_tenths = tenths
            self._line(f"uploaded {format_percent(bytes_sent / total_bytes)}")

    def submitted(self, job: job_pb2.Job) -> None:
        """Prints the job id."""
        self._job_id = job.job_id
        self._line(f"submitted job {job.job_id} ({job_state_name(job.state)})")

    def job_event(self, event: job_pb2.JobEvent) -> None:
        """Prints state changes, the outcome, and progress when it moved a
        tenth or changed stage (partial results are left to `results`)."""
        kind = event.WhichOneof("payload")
        if kind == "progress":
            tenths = int(event.progress.fraction * 10)
            if tenths <= self._job_tenths and event.progress.stage == self._job_stage:
                return
            self._job_tenths, self._job_stage = tenths, event.progress.stage
        elif kind == "state_changed":
            self._job_tenths, self._job_stage = -1, ""
        elif not is_terminal_event(event):
            return
        job_id = self._job_id or event.job_id
        self._line(f"job {job_id}: {event_kind(event)} {format_event_details(event)}")

    def _line(self, text: str) -> None:
        print(printable(text), file=self._stream, flush=True)


class DownloadDisplay:
    """Receives the progress of a download (`fetch`); the base class shows
    nothing. Use as a context manager around the download."""

    def __enter__(self) -> DownloadDisplay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    def progress(self, bytes_done: int, total_bytes: int) -> None:
        """`bytes_done` of `total_bytes` have been written."""


class RichDownloadDisplay(DownloadDisplay):
    """One rich progress bar, in bytes, for the whole download."""

    def __init__(self, label: str, console: Console) -> None:
        self._label = _safe_markup(label)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichDownloadDisplay:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def progress(self, bytes_done: int, total_bytes: int) -> None:
        """Advances the bar."""
        detail = f"{format_bytes(bytes_done)} / {format_bytes(total_bytes)}"
        if self._task is None:
            self._task = self._progress.add_task(
                f"fetch {self._label}", total=total_bytes, detail=detail
            )
        self._progress.update(self._task, completed=bytes_done, total=total_bytes, detail=detail)


class PlainDownloadDisplay(DownloadDisplay):
    """A line when the download starts, at each 10 %, and when it ends."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self._label = label
        self._stream = stream
        self._tenths = 0
        self._ended = False

    def progress(self, bytes_done: int, total_bytes: int) -> None:
        """Prints the start, each 10 % step, and the end."""
        if bytes_done == 0:
            self._line(f"fetching {self._label} ({format_bytes(total_bytes)})")
            return
        if bytes_done >= total_bytes:
            if not self._ended:
                self._ended = True
                self._line(f"fetched {format_bytes(total_bytes)}")
            return
        tenths = bytes_done * 10 // total_bytes
        if tenths > self._tenths:
            self._tenths = tenths
            self._line(f"fetched {format_percent(bytes_done / total_bytes)}")

    def _line(self, text: str) -> None:
        print(printable(text), file=self._stream, flush=True)


def download_display(*, interactive: bool, label: str) -> DownloadDisplay:
    """A bar on stderr for a terminal, plain stderr lines otherwise."""
    if interactive:
        return RichDownloadDisplay(label, Console(stderr=True))
    return PlainDownloadDisplay(label, sys.stderr)


def _safe_markup(text: str) -> str:
    """Server (or file-system) text for a rich markup string: unsafe characters
    removed, brackets escaped."""
    return escape(printable(text))


def progress_display(*, interactive: bool, file_label: str) -> ProgressDisplay:
    """Bars on stderr for a terminal, plain stderr lines otherwise."""
    if interactive:
        return RichProgressDisplay(file_label, Console(stderr=True))
    return PlainProgressDisplay(file_label, sys.stderr)
