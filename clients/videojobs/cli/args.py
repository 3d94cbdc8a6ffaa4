"""Command-line syntax of `videojobs`: the argparse parser and the converters
for option values (`--param k=v`, `--state queued`, numbers)."""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import shtab

from videojobs.client import DEFAULT_ADDRESS, TOKEN_ENV_VAR, parse_job_state

#: Environment variable naming job-service's address when --address is not given.
ADDRESS_ENV_VAR = "VIDEOJOBS_ADDRESS"

#: Environment variables behind the credential options (VIDEOJOBS_TOKEN, the
#: token itself, is read by the client when no token file is given).
TOKEN_FILE_ENV_VAR = "VIDEOJOBS_TOKEN_FILE"
TLS_CA_ENV_VAR = "VIDEOJOBS_TLS_CA"
TLS_CERT_ENV_VAR = "VIDEOJOBS_TLS_CLIENT_CERT"
TLS_KEY_ENV_VAR = "VIDEOJOBS_TLS_CLIENT_KEY"

# Global option -> the environment variable it defaults to.
_CREDENTIAL_OPTIONS = {
    "token_file": TOKEN_FILE_ENV_VAR,
    "tls_ca": TLS_CA_ENV_VAR,
    "tls_cert": TLS_CERT_ENV_VAR,
    "tls_key": TLS_KEY_ENV_VAR,
}


def parse_param(text: str) -> tuple[str, Any]:
    """Parses one `--param KEY=VALUE`. The value is taken as JSON when it is
    valid JSON (`3` a number, `true` a bool, `"3"` the string 3, `[1,2]` a
    list), otherwise as the literal string; NaN and Infinity stay strings, as a
    Struct cannot carry them.

    Raises:
        argparse.ArgumentTypeError: no `=`, or an empty key.
    """
    key, separator, raw_value = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, _json_or_string(raw_value)


def _json_or_string(raw_value: str) -> Any:
    def refuse_constant(name: str) -> Any:
        raise ValueError(name)

    try:
        value = json.loads(raw_value, parse_constant=refuse_constant)
    except ValueError:
        return raw_value
    # Big exponents (1e999) parse as infinite floats without parse_constant.
    if isinstance(value, float) and not math.isfinite(value):
        return raw_value
    return value


def parse_state_arg(text: str) -> int:
    """argparse type for `--state`: `queued`, `QUEUED` or `JOB_STATE_QUEUED`."""
    try:
        return parse_job_state(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def non_negative_int(text: str) -> int:
    """argparse type for counts and sequence numbers: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type for `--timeout`: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


class _CollectParams(argparse.Action):
    """Gathers repeated `--param KEY=VALUE` into one dict; a repeated key is a
    usage error rather than a silent override. A dotted key,
    `PIPELINE.NAME=VALUE`, sets one parameter of one pipeline: several build
    `{"PIPELINE": {"NAME": VALUE, ...}}`."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        key, value = values
        params = dict(getattr(namespace, self.dest) or {})
        pipeline, dot, name = key.partition(".")
        if dot and pipeline and name:
            group = params.get(pipeline, {})
            if not isinstance(group, dict) or name in group:
                parser.error(f"parameter {key!r} given more than once")
            params[pipeline] = {**group, name: value}
        else:
            if key in params:
                parser.error(f"parameter {key!r} given more than once")
            params[key] = value
        setattr(namespace, self.dest, params)


def _version() -> str:
    """The installed videojobs version (the package metadata)."""
    try:
        return metadata.version("videojobs")
    except metadata.PackageNotFoundError:
        return "unknown"


def _builtin_pipelines_text() -> str:
    """The built-in pipelines and their parameters, for `submit --help`
    (from the specs, which import no analysis library)."""
    from videojobs.pipelines.specs import BUILTIN_SPECS, SAMPLING_SPEC

    lines = ["built-in pipelines and their parameters (--param NAME=VALUE):"]
    for spec in BUILTIN_SPECS.values():
        names = ", ".join(p.name for p in spec.parameters) or "none"
        lines.append(f"  {spec.name:<11} {names}")
    names = ", ".join(p.name for p in SAMPLING_SPEC.parameters)
    lines.append(f"  {'(sampling)':<11} {names}  (shared by frame pipelines)")
    lines.append(
        "`videojobs pipelines NAME` shows types, defaults and meanings, as your "
        "job-service has them."
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The `videojobs` parser. Global options go before or after the command."""
    default_address = os.environ.get(ADDRESS_ENV_VAR) or DEFAULT_ADDRESS
    parser = argparse.ArgumentParser(
        prog="videojobs",
        description=(
            "Submit videos to job-service, follow, list and cancel jobs, "
            "and fetch their results and artifacts."
        ),
        epilog=(
            "Pipelines and their parameters: `videojobs pipelines` (and "
            "`videojobs pipelines NAME`) ask job-service what it accepts."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # `videojobs --print-completion bash > ~/.local/share/bash-completion/completions/videojobs`
    shtab.add_argument_to(parser, "--print-completion", help="print a shell completion script")
    _add_global_options(
        parser,
        {
            "address": default_address,
            "timeout": None,
            **{name: os.environ.get(env, "") for name, env in _CREDENTIAL_OPTIONS.items()},
        },
    )
    # The same options on every command, defaulting to "not given" so they only
    # override the top-level values when actually used after the command.
    global_options = argparse.ArgumentParser(add_help=False)
    _add_global_options(global_options, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    submit = commands.add_parser(
        "submit",
        parents=[global_options],
        help="upload a video and create a job",
        description=(
            "Upload a video and create a job. A video larger than one chunk (256 KiB) is "
            "uploaded resumably: a dropped or stalled connection resumes from the bytes "
            "the server kept."
        ),
        epilog=_builtin_pipelines_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    submit.add_argument("file", metavar="FILE", help="the video to upload")
    submit.add_argument(
        "--pipeline",
        dest="pipelines",
        action="append",
        metavar="NAME",
        help="pipeline to run (default: probe); repeat to run several over one decode",
    )
    submit.add_argument(
        "--param",
        dest="params",
        metavar="KEY=VALUE",
        type=parse_param,
        action=_CollectParams,
        default={},
        help=(
            "pipeline parameter; VALUE is JSON if it parses, else a string; "
            "PIPELINE.KEY=VALUE for one pipeline of several (repeatable)"
        ),
    )
    submit.add_argument(
        "--request-id",
        help="idempotency key: a repeat returns the same job (default: a random one, so a "
        "retry after a lost answer never makes a second job)",
    )
    submit.add_argument(
        "--priority", type=int, default=0, help="-10 (lowest) to 10 (highest); default 0"
    )
    submit.add_argument(
        "--max-attempts", type=int, default=0, help="attempts whose failures are retried"
    )
    submit.add_argument(
        "--execution-timeout", type=float, metavar="SECONDS", help="longest run of one attempt"
    )
    submit.add_argument(
        "--queue-timeout", type=float, metavar="SECONDS", help="longest wait in the queue"
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="follow the job to its end; exit 1 unless it succeeds",
    )
    _add_json_option(submit)

    status = commands.add_parser("status", parents=[global_options], help="show a job")
    status.add_argument("job_id", metavar="JOB_ID")
    _add_json_option(status)

    results = commands.add_parser(
        "results",
        parents=[global_options],
        help="print a job's events, one per line, or its result document",
        description=(
            "Print a job's events, one per line (stored ones; with --follow live to the "
            "end), or with --document the result document of a job that SUCCEEDED."
        ),
    )
    results.add_argument("job_id", metavar="JOB_ID")
    results.add_argument(
        "--document",
        action="store_true",
        help="print the job's result document (JSON, keys as stored) instead of its events; "
        "exit 1 unless the job SUCCEEDED",
    )
    results.add_argument(
        "--follow", action="store_true", help="keep printing live events until the job ends"
    )
    results.add_argument(
        "--after",
        metavar="N",
        type=non_negative_int,
        default=0,
        help="only events with a sequence number greater than N",
    )
    _add_json_option(results, help_text="one JSON object per line")

    fetch = commands.add_parser(
        "fetch",
        parents=[global_options],
        help="download a job's result document and artifacts",
        description=(
            "Download the result document and every artifact of a job that SUCCEEDED into "
            "a directory, keeping each file's path below the job's attempt "
            "(results.json, thumbnails/0000.jpg, ...), and print the written paths. "
            "Existing files of the same names are replaced."
        ),
    )
    fetch.add_argument("job_id", metavar="JOB_ID")
    fetch.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="directory to write into, created if needed (default: ./JOB_ID)",
    )

    list_ = commands.add_parser("list", parents=[global_options], help="list jobs, newest first")
    list_.add_argument(
        "--state",
        dest="states",
        metavar="STATE",
        type=parse_state_arg,
        action="append",
        default=[],
        help="only jobs in this state, e.g. queued or JOB_STATE_RUNNING (repeatable)",
    )
    list_.add_argument("--pipeline", default="", help="only jobs of this pipeline")
    list_.add_argument(
        "--page-size",
        metavar="N",
        type=non_negative_int,
        default=0,
        help="jobs per page (server default 50, at most 1000)",
    )
    list_.add_argument("--page-token", default="", help="continue from an earlier page")
    list_.add_argument(
        "--tenant",
        default="",
        help="only jobs of this tenant (administrators; default: every tenant they may see)",
    )
    list_.add_argument("--all", action="store_true", help="fetch every page")
    _add_json_option(list_)

    cancel = commands.add_parser("cancel", parents=[global_options], help="cancel a job")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.add_argument("--reason", default="", help="recorded in the cancellation event")
    _add_json_option(cancel)

    delete = commands.add_parser(
        "delete",
        parents=[global_options],
        help="delete an ended job with its input, results and artifacts",
    )
    delete.add_argument("job_id", metavar="JOB_ID")

    pipelines = commands.add_parser(
        "pipelines",
        parents=[global_options],
        help="the pipelines job-service accepts, with their parameters",
    )
    pipelines.add_argument(
        "name", metavar="NAME", nargs="?", help="show one pipeline's parameters in full"
    )
    _add_json_option(pipelines)

    workers = commands.add_parser(
        "workers", parents=[global_options], help="the workers connected to job-service"
    )
    _add_json_option(workers)

    watch = commands.add_parser(
        "watch",
        parents=[global_options],
        help="follow several jobs at once, with a progress bar each, to their ends",
    )
    watch.add_argument("job_ids", metavar="JOB_ID", nargs="+")

    stats = commands.add_parser(
        "stats", parents=[global_options], help="counts and timings of recent jobs"
    )
    stats.add_argument(
        "--window",
        metavar="SECONDS",
        type=positive_seconds,
        default=None,
        help="cover jobs created this many seconds ago or since (default: 3600)",
    )
    stats.add_argument("--tenant", default="", help="administrators: one tenant's jobs")
    _add_json_option(stats)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None) -> None:
    """The options every command takes; `defaults` None leaves them out of
    the namespace unless given (the copies after the command)."""

    def default(name: str) -> Any:
        return argparse.SUPPRESS if defaults is None else defaults[name]

    parser.add_argument(
        "--address",
        default=default("address"),
        help=f"job-service HOST:PORT (default: ${ADDRESS_ENV_VAR} or {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive_seconds,
        default=default("timeout"),
        help=(
            "deadline for one-shot calls (status, list, cancel, blob info; default: none), "
            "and how long `results --follow` and `submit --wait` keep reconnecting to an "
            "unreachable job-service (default: 60)"
        ),
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        default=default("token_file"),
        help=f"file holding the bearer token sent with every call (default: "
        f"${TOKEN_FILE_ENV_VAR}; without a file the token is ${TOKEN_ENV_VAR}, if set)",
    )
    parser.add_argument(
        "--tls-ca",
        metavar="PEM",
        default=default("tls_ca"),
        help=f"connect with TLS, trusting this CA for the server's certificate "
        f"(default: ${TLS_CA_ENV_VAR})",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        default=default("tls_cert"),
        help=f"client certificate for mutual TLS; implies TLS (default: ${TLS_CERT_ENV_VAR})",
    )
    parser.add_argument(
        "--tls-key",
        metavar="PEM",
        default=default("tls_key"),
        help=f"private key of --tls-cert (default: ${TLS_KEY_ENV_VAR})",
    )


def _add_json_option(
    parser: argparse.ArgumentParser, help_text: str = "print the proto JSON mapping"
) -> None:
    parser.add_argument("--json", action="store_true", help=help_text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line (exits via SystemExit on usage errors and --help)."""
    return build_parser().parse_args(argv)
