"""`videojobs watch JOB_ID...`: several jobs followed at once, to their ends.

Each job is followed on a thread of its own (the blocking client's
`follow`, which reconnects and resumes); the main thread shows what they
report: a progress bar per job on a terminal, a line per notable step
otherwise.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from videojobs.cli.progress import PlainProgressDisplay
from videojobs.cli.render import format_event_details, printable
from videojobs.client import JobClient, VideoJobsError, is_terminal_event, job_state_name
from videojobs.v1 import job_pb2

#: Most jobs one `watch` follows (one stream and one thread each).
MAX_WATCHED_JOBS = 64

_STATE_OF_TERMINAL_PAYLOAD = {
    "completed": job_pb2.JOB_STATE_SUCCEEDED,
    "failed": job_pb2.JOB_STATE_FAILED,
    "cancelled": job_pb2.JOB_STATE_CANCELLED,
}


@dataclass
class WatchOutcome:
    """How each watched job ended (a JobState), and the errors of those
    that could not be followed."""

    states: dict[str, int]
    errors: dict[str, VideoJobsError]


def watch_jobs(
    client: JobClient,
    job_ids: Sequence[str],
    *,
    interactive: bool,
    reconnect_timeout: float,
    on_reconnect: Callable[[str, float], None],
) -> WatchOutcome:
    """Follows every job to its end, showing their progress on stderr."""
    arrivals: queue.Queue = queue.Queue()

    def follow(job_id: str) -> None:
        try:
            for event in client.follow(
                job_id, reconnect_timeout=reconnect_timeout, on_reconnect=on_reconnect
            ):
                arrivals.put((job_id, event))
        except VideoJobsError as error:
            arrivals.put((job_id, error))
        finally:
            arrivals.put((job_id, None))

    for job_id in job_ids:
        threading.Thread(target=follow, args=(job_id,), daemon=True, name=f"watch-{job_id}").start()

    outcome = WatchOutcome({}, {})
    display = _RichBoard(job_ids) if interactive else _PlainBoard(job_ids)
    with display:
        remaining = set(job_ids)
        while remaining:
            job_id, item = arrivals.get()
            if item is None:
                remaining.discard(job_id)
            elif isinstance(item, VideoJobsError):
                outcome.errors[job_id] = item
                display.failed_to_follow(job_id, item)
            else:
                display.event(job_id, item)
                if is_terminal_event(item):
                    outcome.states[job_id] = _STATE_OF_TERMINAL_PAYLOAD[item.WhichOneof("payload")]
    return outcome


class _PlainBoard:
    """A line per notable step of each job (as `submit --wait` prints them)."""

    def __init__(self, job_ids: Sequence[str]) -> None:
        self._jobs = {job_id: PlainProgressDisplay(job_id, sys.stderr) for job_id in job_ids}
        for job_id, display in self._jobs.items():
            display.submitted(job_pb2.Job(job_id=job_id))

    def __enter__(self) -> _PlainBoard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def event(self, job_id: str, event: job_pb2.JobEvent) -> None:
        self._jobs[job_id].job_event(event)

    def failed_to_follow(self, job_id: str, error: VideoJobsError) -> None:
        print(
            printable(f"job {job_id}: cannot follow it: {error.code.name}: {error.message}"),
            file=sys.stderr,
        )


class _RichBoard:
    """A progress bar per job, its state and stage beside it."""

    def __init__(self, job_ids: Sequence[str]) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            console=Console(stderr=True),
        )
        self._tasks: dict[str, TaskID] = {
            job_id: self._progress.add_task(f"{job_id[:12]} waiting", total=1.0, detail="")
            for job_id in job_ids
        }

    def __enter__(self) -> _RichBoard:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def event(self, job_id: str, event: job_pb2.JobEvent) -> None:
        task = self._tasks[job_id]
        kind = event.WhichOneof("payload")
        description = f"{job_id[:12]} {job_state_name(event.job_state).lower()}"
        if kind == "progress":
            self._progress.update(
                task,
                description=description,
                completed=event.progress.fraction,
                detail=_text(event.progress.stage),
            )
        elif kind == "state_changed":
            requeued = event.state_changed.to_state == job_pb2.JOB_STATE_QUEUED
            self._progress.update(
                task,
                description=description,
                completed=0.0 if requeued else None,
                detail=f"attempt {event.attempt}",
            )
        elif is_terminal_event(event):
            detail = "" if kind == "completed" else format_event_details(event)[:80]
            self._progress.update(
                task,
                description=description,
                completed=1.0 if kind == "completed" else None,
                detail=_text(detail),
            )

    def failed_to_follow(self, job_id: str, error: VideoJobsError) -> None:
        self._progress.update(
            self._tasks[job_id], detail=_text(f"cannot follow: {error.code.name}")
        )


def _text(value: str) -> str:
    """Text from the server shown safely: no control characters, no markup."""
    return escape(printable(value))
