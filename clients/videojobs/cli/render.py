"""How the CLI shows things: jobs, events, errors, sizes and times, as text
for people or as the proto JSON mapping for programs."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC
from typing import Any

from google.protobuf import json_format, message, timestamp_pb2
from google.rpc import status_pb2
from rich import box
from rich.table import Table
from rich.text import Text

from videojobs.client import VideoJobsError, job_state_name, struct_to_dict
from videojobs.client.typed import whole_numbers_as_ints
from videojobs.v1 import job_pb2, job_service_pb2

_UNSET = "-"

# The tenant of every job when job-service runs without tenants (no auth file).
DEFAULT_TENANT = "default"

# Characters that must not reach a terminal as they are: C0/C1 controls and
# DEL (escape sequences), format characters (U+202E RIGHT-TO-LEFT OVERRIDE,
# zero-width spaces), line/paragraph separators, surrogates, private-use and
# unassigned code points. Everything the CLI prints that came from a server
# (file names, reasons, stages, messages, results) passes through `printable`.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def printable(text: str) -> str:
    """`text` safe for a terminal: tabs become spaces, other control, bidi and
    invisible characters are removed. Line breaks are kept (callers print
    lines they built themselves)."""
    if text.isprintable():
        return text
    return "".join(
        " " if char == "\t" else char for char in text if char in "\n\t" or not _is_unsafe(char)
    )


def printable_json(text: str) -> str:
    """JSON text with every unsafe character inside its strings written as a
    `\\uXXXX` escape: still the same JSON, harmless on a terminal."""
    if text.isprintable():
        return text
    return "".join(
        char if char == "\n" or not _is_unsafe(char) else _json_escape(char) for char in text
    )


def _json_escape(char: str) -> str:
    code = ord(char)
    if code > 0xFFFF:  # outside the BMP: a UTF-16 surrogate pair, as JSON requires
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def to_json(proto: message.Message, *, one_line: bool = False) -> str:
    """The proto JSON mapping (camelCase names), pretty or on one line, with
    unsafe characters escaped; whole numbers in Structs (summaries,
    parameters, partial results) print without `.0`, and every artifact
    shows all its fields, zeros included."""
    data = whole_numbers_as_ints(_with_full_artifacts(proto, json_format.MessageToDict(proto)))
    return printable_json(json.dumps(data, indent=None if one_line else 2, ensure_ascii=False))


def _with_full_artifacts(proto: message.Message, data: dict) -> dict:
    """`data` (the JSON mapping of `proto`) with each Artifact inside it
    printed with every field: an artifact's `index`, `timeSeconds` or
    `frameIndex` of 0 is a real value, not an absent one."""
    for field, value in proto.ListFields():
        target = field.message_type
        if target is None or target.full_name.startswith("google.") or field.json_name not in data:
            continue
        if target.GetOptions().map_entry:
            continue
        repeated = field.is_repeated
        items = list(value) if repeated else [value]
        rendered = data[field.json_name] if repeated else [data[field.json_name]]
        if target.full_name == job_pb2.Artifact.DESCRIPTOR.full_name:
            rendered[:] = [
                json_format.MessageToDict(item, always_print_fields_with_no_presence=True)
                for item in items
            ]
        else:
            for item, item_data in zip(items, rendered, strict=True):
                _with_full_artifacts(item, item_data)
        if not repeated:
            data[field.json_name] = rendered[0]
    return data


def format_document(document: Any) -> str:
    """A JSON document (a job's result) pretty-printed with its keys in their
    stored order, non-ASCII text kept readable and unsafe characters escaped."""
    return printable_json(json.dumps(document, indent=2, ensure_ascii=False))


def format_error(error: VideoJobsError) -> list[str]:
    """Lines for stderr: `error: CODE: message`, then every detail indented
    (field violations as `field: description`, the reason, the retry delay)."""
    headline = f"error: {error.code.name}"
    if error.message:
        headline += f": {error.message}"
    return [printable(headline)] + [f"  {printable(line)}" for line in error.detail_lines()]


def format_status(status: status_pb2.Status) -> str:
    """A `google.rpc.Status` (a job's error) as one line."""
    return str(VideoJobsError.from_status(status))


def format_time(timestamp: timestamp_pb2.Timestamp, *, milliseconds: bool = True) -> str:
    """UTC time (`2025-11-21T06:00:01.123Z`, or to the second), `-` when unset."""
    if not timestamp.seconds and not timestamp.nanos:
        return _UNSET
    moment = timestamp.ToDatetime(tzinfo=UTC)
    text = moment.isoformat(timespec="milliseconds" if milliseconds else "seconds")
    return text.replace("+00:00", "Z")


def format_bytes(count: int) -> str:
    """A byte count for people: `512 B`, `1.5 KiB`, `12.3 MiB`."""
    if count < 1024:
        return f"{count} B"
    size = count / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def format_percent(fraction: float) -> str:
    """A 0..1 fraction as a percentage with one decimal."""
    return f"{fraction * 100:.1f}%"


def format_struct(struct: Any) -> str:
    """A `google.protobuf.Struct` as JSON on one line, keys sorted (Struct keeps
    no order), whole numbers without `.0`."""
    return json.dumps(
        whole_numbers_as_ints(struct_to_dict(struct)), ensure_ascii=False, sort_keys=True
    )


def event_kind(event: job_pb2.JobEvent) -> str:
    """The event's payload name (`state_changed`, `progress`, ..., `completed`)."""
    return event.WhichOneof("payload") or "unknown"


def format_event_details(event: job_pb2.JobEvent) -> str:
    """What happened in the event, in a few words."""
    kind = event.WhichOneof("payload")
    if kind == "state_changed":
        change = event.state_changed
        text = job_state_name(change.to_state)
        if change.from_state != job_pb2.JOB_STATE_UNSPECIFIED:  # the first event has no "before"
            text = f"{job_state_name(change.from_state)} -> {text}"
        text += f" (attempt {event.attempt})"
        return f"{text}: {change.reason}" if change.reason else text
    if kind == "progress":
        return _format_progress(event.progress)
    if kind == "partial_result":
        return f"{event.partial_result.pipeline} {format_struct(event.partial_result.data)}"
    if kind == "completed":
        completed = event.completed
        text = f"output {completed.output_key or _UNSET}"
        if completed.artifacts:
            text += f", {len(completed.artifacts)} artifact(s)"
        if completed.summary.fields:
            text += f", summary {format_struct(completed.summary)}"
        return text
    if kind == "failed":
        return format_status(event.failed.error)
    if kind == "cancelled":
        return event.cancelled.reason or "(no reason given)"
    return f"state {job_state_name(event.job_state)}"


def format_event_line(event: job_pb2.JobEvent) -> str:
    """One event as `sequence  time  kind  details`."""
    return (
        f"{event.sequence:>5}  {format_time(event.create_time)}  "
        f"{event_kind(event):<14}  {printable(format_event_details(event))}"
    )


def _format_progress(progress: job_pb2.Progress) -> str:
    text = format_percent(progress.fraction)
    return f"{text} {progress.stage}" if progress.stage else text


def _struct_rows(label: str, struct: Any) -> list[tuple[str, str]]:
    """A Struct as one `dotted.key = value` row per leaf (lists stay whole),
    the label on the first: readable where one JSON line would run on."""
    leaves: list[tuple[str, Any]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else key, value[key])
        else:
            leaves.append((prefix, value))

    walk("", whole_numbers_as_ints(struct_to_dict(struct)))
    return [
        (label if index == 0 else "", f"{key} = {json.dumps(value, ensure_ascii=False)}")
        for index, (key, value) in enumerate(leaves)
    ]


def format_job_line(job: job_pb2.Job) -> str:
    """`<job id> <STATE>`: what `submit` and `cancel` print."""
    return printable(f"{job.job_id} {job_state_name(job.state)}")


def format_job_summary(job: job_pb2.Job) -> list[str]:
    """The human-readable `status` view of a job, one `label: value` per line;
    fields the job does not have yet are left out."""
    rows: list[tuple[str, str]] = [
        ("job", job.job_id),
        ("state", job_state_name(job.state)),
        ("pipeline", job.pipeline),
    ]
    if job.tenant:
        rows.append(("tenant", job.tenant))
    if job.parameters.fields:
        rows += _struct_rows("parameters", job.parameters)
    rows += [
        ("attempt", str(job.attempt)),
        ("priority", str(job.priority)),
        ("progress", _format_progress(job.progress)),
    ]
    if job.HasField("next_attempt_time"):
        rows.append(("retry at", format_time(job.next_attempt_time)))
    for index, attempt in enumerate(job.attempts):
        outcome = job_pb2.AttemptOutcome.Name(attempt.outcome).removeprefix("ATTEMPT_OUTCOME_")
        text = f"#{attempt.number} on {attempt.worker_id}: {outcome}"
        text += f", {format_time(attempt.start_time)}"
        if attempt.HasField("end_time"):
            text += f" - {format_time(attempt.end_time)}"
        if attempt.HasField("error"):
            text += f" ({attempt.error.message})"
        rows.append(("attempts" if index == 0 else "", text))
    if job.file_name or job.input_size_bytes:
        file_text = f"{job.file_name or _UNSET}, {format_bytes(job.input_size_bytes)}"
        rows.append(("file", file_text))
    if job.input_sha256:
        rows.append(("sha256", job.input_sha256))
    rows.append(("input", job.input_key or _UNSET))
    if job.output_key:
        rows.append(("output", job.output_key))
    for index, artifact in enumerate(job.artifacts):
        text = f"{artifact.key} ({artifact.media_type or 'unknown type'}, "
        text += f"{format_bytes(artifact.size_bytes)})"
        rows.append(("artifacts" if index == 0 else "", text))
    if job.HasField("error"):
        rows.append(("error", format_status(job.error)))
    rows += [
        ("created", format_time(job.create_time)),
        ("started", format_time(job.start_time)),
        ("ended", format_time(job.end_time)),
    ]
    if job.summary.fields:
        rows += _struct_rows("summary", job.summary)
    if job.request_id:
        rows.append(("request id", job.request_id))
    rows.append(("events", str(job.last_event_sequence)))
    width = max(len(label) for label, _ in rows) + 1
    return [
        f"{label + ':' if label else '':<{width}} {printable(value).replace(chr(10), ' ')}"
        for label, value in rows
    ]


def jobs_table(jobs: list[job_pb2.Job]) -> Table:
    """The `list` table: id, state, pipeline, attempt, progress, created, and
    the tenant when some job belongs to one other than the default."""
    show_tenant = any(job.tenant not in ("", DEFAULT_TENANT) for job in jobs)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("ID", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("PIPELINE")
    table.add_column("ATTEMPT", justify="right")
    table.add_column("PROGRESS", justify="right")
    table.add_column("CREATED", no_wrap=True)
    if show_tenant:
        table.add_column("TENANT", no_wrap=True)
    for job in jobs:
        cells = [
            job.job_id,
            job_state_name(job.state),
            job.pipeline,
            str(job.attempt),
            format_percent(job.progress.fraction),
            format_time(job.create_time, milliseconds=False),
        ]
        if show_tenant:
            cells.append(job.tenant or _UNSET)
        # Text, not markup: a server string is never interpreted by rich.
        table.add_row(*(Text(printable(cell)) for cell in cells))
    return table


def pipelines_table(pipelines: list[job_service_pb2.PipelineInfo]) -> Table:
    """The `pipelines` table: name, version, frames or not, parameters, description."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("NAME", no_wrap=True)
    table.add_column("VERSION", no_wrap=True)
    table.add_column("FRAMES", no_wrap=True)
    table.add_column("PARAMETERS")
    table.add_column("DESCRIPTION")
    for pipeline in pipelines:
        properties = struct_to_dict(pipeline.parameters_schema).get("properties", {})
        table.add_row(
            Text(printable(pipeline.name)),
            Text(printable(pipeline.version)),
            "yes" if pipeline.analyses_frames else "no",
            Text(printable(", ".join(sorted(properties)) or "-")),
            Text(printable(pipeline.description)),
        )
    return table


def format_pipeline(pipeline: job_service_pb2.PipelineInfo, sampling_schema: Any) -> list[str]:
    """One pipeline in full: what it is, then each parameter with its type,
    default, limits and meaning (and the sampling parameters of a frame pipeline)."""
    timeout = pipeline.default_execution_timeout.ToTimedelta().total_seconds()
    lines = [
        f"{pipeline.name} {pipeline.version}: {pipeline.description}",
        f"default execution timeout: {timeout:g} s",
        "parameters (--param NAME=VALUE, or --param "
        f"{pipeline.name}.NAME=VALUE on a job of several pipelines):",
    ]
    lines += _parameter_lines(struct_to_dict(pipeline.parameters_schema))
    if pipeline.analyses_frames:
        lines.append("sampling parameters (shared by a job's frame pipelines):")
        lines += _parameter_lines(struct_to_dict(sampling_schema))
    return [printable(line) for line in lines]


def _parameter_lines(schema: dict[str, Any]) -> list[str]:
    lines = []
    for name, spec in sorted(schema.get("properties", {}).items()):
        text = f"  {name} ({spec.get('type', '?')}"
        if "default" in spec:
            text += f", default {json.dumps(whole_numbers_as_ints(spec['default']))}"
        if "minimum" in spec or "maximum" in spec:
            low = whole_numbers_as_ints(spec.get("minimum", "-"))
            high = whole_numbers_as_ints(spec.get("maximum", "-"))
            text += f", {low}..{high}"
        lines.append(f"{text}): {spec.get('description', '')}")
    return lines or ["  (none)"]


def workers_table(workers: list[job_service_pb2.WorkerInfo]) -> Table:
    """The `workers` table: id, slots used/total, state, last heartbeat,
    pipelines, jobs, status address."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("WORKER", no_wrap=True)
    table.add_column("SLOTS", justify="right", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("HEARTBEAT", no_wrap=True)
    table.add_column("PIPELINES")
    table.add_column("JOBS")
    table.add_column("ADDRESS", no_wrap=True)
    for worker in workers:
        table.add_row(
            Text(printable(worker.worker_id)),
            f"{worker.slots_used}/{worker.slots}",
            "draining" if worker.draining else "ready",
            format_time(worker.last_heartbeat_time, milliseconds=False),
            Text(printable(",".join(worker.pipelines))),
            Text(printable(" ".join(worker.job_ids) or "-")),
            Text(printable(worker.status_address or "-")),
        )
    return table


def format_stats(stats: job_service_pb2.GetStatsResponse) -> list[str]:
    """`stats`: the window, then one block per pipeline set and the total."""
    lines = [f"jobs created since {format_time(stats.window_start, milliseconds=False)}"]
    for figures in [*stats.pipelines, stats.total]:
        counts = ", ".join(
            f"{job_state_name(count.state)} {count.count}" for count in figures.counts
        )
        lines.append(f"{figures.pipeline or 'all'}: {counts or 'no jobs'}")
        if figures.counts:
            lines.append(
                f"  success {figures.success_rate * 100:.1f}%, "
                f"run p50 {_seconds(figures.duration_p50)} p95 {_seconds(figures.duration_p95)}, "
                f"queue wait p50 {_seconds(figures.queue_wait_p50)} "
                f"p95 {_seconds(figures.queue_wait_p95)}"
            )
    return [printable(line) for line in lines]


def _seconds(value: Any) -> str:
    return f"{value.ToTimedelta().total_seconds():.3f}s"
