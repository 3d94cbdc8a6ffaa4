"""`videojobs`: the command-line client of job-service.

Exit codes: 0 success; 1 a failed call, a job that `submit --wait` saw fail
or get cancelled, or a job with no result for `fetch` / `results --document`
(it has not SUCCEEDED); 2 bad usage, an unreadable input file, token file or
TLS file, or an unwritable output directory; 130 Ctrl-C. Results go to
stdout, progress and errors to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

from rich.console import Console
from rich.table import Table

from videojobs.cli.args import build_parser
from videojobs.cli.progress import download_display, progress_display
from videojobs.cli.render import (
    format_document,
    format_error,
    format_event_line,
    format_job_line,
    format_job_summary,
    format_pipeline,
    format_stats,
    jobs_table,
    pipelines_table,
    printable,
    to_json,
    workers_table,
)
from videojobs.cli.watch import MAX_WATCHED_JOBS, watch_jobs
from videojobs.client import (
    CredentialsError,
    JobClient,
    JobOptions,
    VideoJobsError,
    job_state_name,
    read_token_file,
)
from videojobs.client.defaults import RECONNECT_TIMEOUT
from videojobs.v1 import job_pb2, job_service_pb2

EXIT_OK = 0
#: The command failed, or the job it waited for or followed ended FAILED.
EXIT_FAILED = 1
EXIT_USAGE = 2
#: The job the command waited for or followed ended CANCELLED.
EXIT_CANCELLED = 3
EXIT_INTERRUPTED = 130

#: 128 + SIGPIPE, what a shell reports for a pipeline reader that went away.
EXIT_BROKEN_PIPE = 141


class UsageError(Exception):
    """The command cannot run as given (for example the input file is unreadable)."""


Command = Callable[[JobClient, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `videojobs` with `argv` (default: the process arguments) and
    returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse's way to report usage errors and --help
        return _exit_code(exit_request)
    command = _COMMANDS[args.command]
    try:
        try:
            client = JobClient(args.address, timeout=args.timeout, **_credential_options(args))
        except CredentialsError as error:
            raise UsageError(str(error)) from error
        with client:
            return command(client, args)
    except VideoJobsError as error:
        _print_error_lines(format_error(error))
        return EXIT_FAILED
    except UsageError as error:
        _print_error_lines([f"{parser.prog} {args.command}: error: {error}"])
        return EXIT_USAGE
    except KeyboardInterrupt:
        _print_error_lines(["interrupted"])
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout (say `| head`) is gone; nothing left to say.
        # Point stdout at devnull so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _credential_options(args: argparse.Namespace) -> dict[str, str | None]:
    """The client's credential arguments from --token-file and --tls-*: a
    token file wins over $VIDEOJOBS_TOKEN, which the client reads itself
    when no token is given."""
    return {
        "token": read_token_file(args.token_file) if args.token_file else None,
        "tls_ca": args.tls_ca or None,
        "tls_cert": args.tls_cert or None,
        "tls_key": args.tls_key or None,
    }


def _pipelines(names: list[str] | None) -> str | list[str]:
    """One name for one pipeline (the `pipeline` field), a list for several."""
    if not names:
        return "probe"
    return names[0] if len(names) == 1 else names


def submit_command(client: JobClient, args: argparse.Namespace) -> int:
    """`submit FILE`: upload, print the job; with --wait follow it to its end."""
    display = progress_display(
        interactive=_stdout_is_terminal(), file_label=os.path.basename(args.file)
    )
    with display:
        try:
            job = client.submit(
                args.file,
                pipeline=_pipelines(args.pipelines),
                parameters=args.params,
                request_id=args.request_id,
                options=JobOptions(
                    max_attempts=args.max_attempts,
                    priority=args.priority,
                    execution_timeout=args.execution_timeout,
                    queue_timeout=args.queue_timeout,
                ),
                on_upload_progress=display.upload,
            )
        except OSError as error:
            raise UsageError(f"cannot read {args.file}: {error.strerror or error}") from error
        if args.wait:
            display.submitted(job)
            try:
                for event in client.follow(
                    job.job_id,
                    reconnect_timeout=args.timeout or RECONNECT_TIMEOUT,
                    on_reconnect=_say_reconnecting(args),
                ):
                    display.job_event(event)
            except KeyboardInterrupt:
                _print_error_lines(
                    [
                        f"interrupted: job {job.job_id} keeps running; follow it with",
                        f"  videojobs results {job.job_id} --follow",
                    ]
                )
                return EXIT_INTERRUPTED
            job = client.get_status(job.job_id)
    if args.json:
        print(to_json(job))
    elif args.wait:
        _print_lines(format_job_summary(job))
    else:
        print(format_job_line(job))
    if not args.wait:
        return EXIT_OK
    return _exit_for_state(job.state)


def _exit_for_state(state: int) -> int:
    """The exit code for a job that ended in `state` (0 unless it failed or was cancelled)."""
    if state == job_pb2.JOB_STATE_FAILED:
        return EXIT_FAILED
    if state == job_pb2.JOB_STATE_CANCELLED:
        return EXIT_CANCELLED
    return EXIT_OK


_STATE_OF_TERMINAL_PAYLOAD = {
    "completed": job_pb2.JOB_STATE_SUCCEEDED,
    "failed": job_pb2.JOB_STATE_FAILED,
    "cancelled": job_pb2.JOB_STATE_CANCELLED,
}


def _say_reconnecting(args: argparse.Namespace) -> Callable[[str, float], None]:
    """A reconnect callback that tells the user on stderr why they wait."""
    window = args.timeout or RECONNECT_TIMEOUT

    def say(reason: str, delay: float) -> None:
        _print_error_lines(
            [
                f"videojobs: job-service at {args.address} did not answer ({reason}); "
                f"reconnecting in {delay:.1f} s (gives up after {window:g} s; see --timeout)"
            ]
        )

    return say


def status_command(client: JobClient, args: argparse.Namespace) -> int:
    """`status JOB_ID`: the job's summary or JSON."""
    job = client.get_status(args.job_id)
    if args.json:
        print(to_json(job))
    else:
        _print_lines(format_job_summary(job))
    return EXIT_OK


def results_command(client: JobClient, args: argparse.Namespace) -> int:
    """`results JOB_ID`: the job's events, one per line. Without --follow only
    the events stored when the command started; with it, live to the end.
    With --document: the job's result document instead."""
    if args.document:
        if args.follow or args.after:
            raise UsageError("--document prints the result document; it takes no --follow/--after")
        print(format_document(client.read_result(args.job_id)))
        return EXIT_OK
    last_sequence: int | None = None
    if not args.follow:
        last_sequence = client.get_status(args.job_id).last_event_sequence
        if last_sequence <= args.after:
            return EXIT_OK
    ended_state = None
    events = client.follow(
        args.job_id,
        after_sequence=args.after,
        reconnect_timeout=args.timeout or RECONNECT_TIMEOUT,
        on_reconnect=_say_reconnecting(args),
    )
    with closing(events):
        for event in events:
            print(to_json(event, one_line=True) if args.json else format_event_line(event))
            # Flushed per event so a pipe sees live events as they come.
            sys.stdout.flush()
            ended_state = _STATE_OF_TERMINAL_PAYLOAD.get(event.WhichOneof("payload"), ended_state)
            if last_sequence is not None and event.sequence >= last_sequence:
                break
    if args.follow and ended_state is not None:
        # Like `submit --wait`: a script can tell a failed or cancelled job by the code.
        return _exit_for_state(ended_state)
    return EXIT_OK


def fetch_command(client: JobClient, args: argparse.Namespace) -> int:
    """`fetch JOB_ID [-o DIR]`: the job's result document and artifacts into
    DIR (default ./JOB_ID), then the written paths, one per line."""
    directory = Path(args.output) if args.output else Path(args.job_id)
    display = download_display(interactive=_stderr_is_terminal(), label=f"job {args.job_id}")
    with display:
        try:
            paths = client.download(args.job_id, directory, on_progress=display.progress)
        except OSError as error:
            raise UsageError(f"cannot write to {directory}: {error.strerror or error}") from error
    # Server-derived names are checked by the client, and stripped here anyway.
    _print_lines([str(path) for path in paths])
    return EXIT_OK


def list_command(client: JobClient, args: argparse.Namespace) -> int:
    """`list`: a table (or JSON) of jobs, newest first; --all walks every page."""
    query = {
        "states": args.states,
        "pipeline": args.pipeline,
        "page_size": args.page_size,
        "tenant": args.tenant,
    }
    if args.all:
        jobs, next_page_token = list(client.iter_jobs(**query)), ""
    else:
        jobs, next_page_token = client.list_jobs(**query, page_token=args.page_token)
    if args.json:
        print(to_json(job_service_pb2.ListJobsResponse(jobs=jobs, next_page_token=next_page_token)))
        return EXIT_OK
    if not jobs:
        _print_error_lines(["no jobs"])
    else:
        _print_table(jobs_table(jobs))
    if next_page_token:
        _print_error_lines([f"more jobs: add --page-token {next_page_token} (or use --all)"])
    return EXIT_OK


def pipelines_command(client: JobClient, args: argparse.Namespace) -> int:
    """`pipelines [NAME]`: every pipeline (a table), or one in full."""
    answer = client.list_pipelines()
    if args.name:
        chosen = [p for p in answer.pipelines if p.name == args.name]
        if not chosen:
            known = ", ".join(p.name for p in answer.pipelines)
            raise UsageError(f"no pipeline {args.name!r} (job-service has: {known})")
        if args.json:
            print(to_json(chosen[0]))
        else:
            _print_lines(format_pipeline(chosen[0], answer.sampling_parameters_schema))
        return EXIT_OK
    if args.json:
        print(to_json(answer))
    else:
        _print_table(pipelines_table(list(answer.pipelines)))
    return EXIT_OK


def workers_command(client: JobClient, args: argparse.Namespace) -> int:
    """`workers`: the workers connected to job-service."""
    workers = client.list_workers()
    if args.json:
        print(to_json(job_service_pb2.ListWorkersResponse(workers=workers)))
    elif not workers:
        _print_error_lines(["no workers connected"])
    else:
        _print_table(workers_table(workers))
    return EXIT_OK


def watch_command(client: JobClient, args: argparse.Namespace) -> int:
    """`watch JOB_ID...`: several jobs to their ends, a progress bar each;
    then `JOB_ID STATE` per job on stdout. Exits 1 if one failed (or could
    not be followed), else 3 if one was cancelled, else 0."""
    job_ids = list(dict.fromkeys(args.job_ids))
    if len(job_ids) > MAX_WATCHED_JOBS:
        raise UsageError(f"watch follows at most {MAX_WATCHED_JOBS} jobs at once")
    try:
        outcome = watch_jobs(
            client,
            job_ids,
            interactive=_stdout_is_terminal(),
            reconnect_timeout=args.timeout or RECONNECT_TIMEOUT,
            on_reconnect=_say_reconnecting(args),
        )
    except KeyboardInterrupt:
        _print_error_lines(["interrupted: the jobs keep running"])
        return EXIT_INTERRUPTED
    for job_id in job_ids:
        state = outcome.states.get(job_id)
        print(printable(f"{job_id} {job_state_name(state) if state is not None else 'UNKNOWN'}"))
    for job_id, error in outcome.errors.items():
        _print_error_lines([f"job {job_id}:", *format_error(error)])
    states = set(outcome.states.values())
    if outcome.errors or job_pb2.JOB_STATE_FAILED in states:
        return EXIT_FAILED
    if job_pb2.JOB_STATE_CANCELLED in states:
        return EXIT_CANCELLED
    return EXIT_OK


def stats_command(client: JobClient, args: argparse.Namespace) -> int:
    """`stats`: counts and timings of the jobs of the last --window seconds."""
    stats = client.get_stats(window=args.window, tenant=args.tenant)
    if args.json:
        print(to_json(stats))
    else:
        _print_lines(format_stats(stats))
    return EXIT_OK


def delete_command(client: JobClient, args: argparse.Namespace) -> int:
    """`delete JOB_ID`: delete an ended job and everything it stored."""
    removed = client.delete(args.job_id)
    print(printable(f"{args.job_id} deleted ({removed} stored object(s) removed)"))
    return EXIT_OK


def cancel_command(client: JobClient, args: argparse.Namespace) -> int:
    """`cancel JOB_ID`: cancel and print the job."""
    job = client.cancel(args.job_id, reason=args.reason)
    print(to_json(job) if args.json else format_job_line(job))
    return EXIT_OK


_COMMANDS: dict[str, Command] = {
    "pipelines": pipelines_command,
    "workers": workers_command,
    "stats": stats_command,
    "watch": watch_command,
    "submit": submit_command,
    "status": status_command,
    "results": results_command,
    "fetch": fetch_command,
    "list": list_command,
    "cancel": cancel_command,
    "delete": delete_command,
}


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _stderr_is_terminal() -> bool:
    # `fetch` prints paths on stdout (often piped) and its bar on stderr:
    # whether a person watches is a question about stderr.
    return sys.stderr.isatty()


def _print_table(table: Table) -> None:
    # Never squeeze columns away: a table wider than the terminal is printed at
    # its natural width (the terminal wraps it), and off a terminal each job
    # stays on one line for grep and friends.
    natural_width = Console(width=10_000).measure(table).maximum
    if _stdout_is_terminal():
        console = Console()
        console.width = max(console.width, natural_width)
    else:
        console = Console(width=natural_width)
    # Rendered first and written by us, so a closed pipe raises BrokenPipeError
    # like every other output (rich would exit 1 on its own).
    with console.capture() as rendered:
        console.print(table)
    sys.stdout.write(rendered.get())


def _print_lines(lines: Sequence[str]) -> None:
    for line in lines:
        print(printable(line))


def _print_error_lines(lines: Sequence[str]) -> None:
    for line in lines:
        print(printable(line), file=sys.stderr)


def _exit_code(exit_request: SystemExit) -> int:
    code = exit_request.code
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
