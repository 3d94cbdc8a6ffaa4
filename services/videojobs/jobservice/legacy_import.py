"""`videojobs-server import-legacy FILE`: adopt the finished jobs of the system
videojobs replaces.

The legacy records (JSON lines, a table of a SQLite database, or a CSV export
such as DuckDB's `COPY jobs TO 'jobs.csv'`) name their files by host paths,
absolute or with the old storage directory prefixed. Each path is mapped to a
place below `--root` by the pure rules of `map_legacy_path` (never guessed:
anything else is refused), the bytes are copied into the configured BlobStore
under the normal layout, and the job is created in its terminal state with
two events, in one transaction per job.

Re-running is idempotent: the new job id is derived from the legacy id
(uuid5) and the legacy id is kept in `request_id` as `legacy:<id>`, so a job
imported before is skipped, never duplicated. `--dry-run` checks everything,
copies and writes nothing.

Field names (case-insensitive; the first column is the name used in reports):

| field       | accepted names                                 |
|-------------|------------------------------------------------|
| id          | id, job_id, uuid                               |
| state       | state, status                                  |
| input       | input, input_path, source, video_path          |
| output      | output, output_path, result_path               |
| created_at  | created_at, created, submitted_at              |
| started_at  | started_at                                     |
| finished_at | finished_at, completed_at, ended_at            |
| error       | error, error_message                           |
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import re
import sqlite3
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from videojobs.common.auth import DEFAULT_TENANT, TENANT_PATTERN
from videojobs.common.config import DEFAULT_DATA_DIR, add_option, setup_logging, storage_dirs
from videojobs.common.text import clean_text, is_unsafe_char, redact_host_paths
from videojobs.jobservice import lifecycle
from videojobs.jobservice.domain import (
    LEGACY_REQUEST_ID_PREFIX,
    JobError,
    JobState,
    attempt_prefix_for,
    dispatch_rank,
    input_key_for,
    utc_now,
)
from videojobs.jobservice.event_payloads import Cancelled, Completed, Failed
from videojobs.jobservice.limits import MAX_MESSAGE_CHARS, MAX_REQUEST_ID_CHARS
from videojobs.jobservice.settings import JobServiceSettings
from videojobs.jobservice.store import Database
from videojobs.jobservice.store.models import JobRow
from videojobs.jobservice.store.repository import JobRepository
from videojobs.jobservice.upload_checks import check_file_name
from videojobs.pipelines import ParameterError, builtin_catalogue
from videojobs.pipelines.containers import (
    SNIFF_BYTES,
    ContainerFormat,
    NotAContainer,
    UnsupportedContainer,
    sniff_container,
)
from videojobs.pipelines.plan import plan_job, split_key
from videojobs.storage import BlobStore, BlobStoreError, StorageKey, open_blob_store

log = logging.getLogger(__name__)

# uuid5(NAMESPACE_URL, "https://videojobs.dev/legacy-import"). Never change it:
# re-runs find the jobs they imported before by the ids derived from it.
LEGACY_NAMESPACE = uuid.UUID("fa15f580-9d3b-5269-b612-9cf577e5cb60")
REQUEST_ID_PREFIX = LEGACY_REQUEST_ID_PREFIX
MAX_LEGACY_ID_CHARS = MAX_REQUEST_ID_CHARS - len(REQUEST_ID_PREFIX)
DEFAULT_SYSTEM = "legacy"
DEFAULT_PIPELINE = "probe"
OUTPUT_NAME = "results.json"
# Longest JSON line or path read from a record; longer ones are refused.
MAX_RECORD_BYTES = 1024 * 1024
MAX_PATH_CHARS = 4096
COPY_CHUNK_BYTES = 1024 * 1024
# How much of a legacy value a report line shows.
SHOWN_CHARS = 160

FORMATS = ("jsonl", "sqlite", "csv")
SQLITE_MAGIC = b"SQLite format 3\x00"

FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "job_id", "uuid"),
    "state": ("state", "status"),
    "input": ("input", "input_path", "source", "video_path"),
    "output": ("output", "output_path", "result_path"),
    "created_at": ("created_at", "created", "submitted_at"),
    "started_at": ("started_at",),
    "finished_at": ("finished_at", "completed_at", "ended_at"),
    "error": ("error", "error_message"),
}
_CANONICAL_OF = {alias: name for name, aliases in FIELD_ALIASES.items() for alias in aliases}

# Legacy state names (lowercase, '-' and ' ' read as '_'). None: the job was
# still live in the old system; it is not imported (no live job is created).
STATE_ALIASES: dict[str, JobState | None] = {
    **dict.fromkeys(
        ("succeeded", "success", "successful", "completed", "complete", "done", "finished"),
        JobState.SUCCEEDED,
    ),
    **dict.fromkeys(("failed", "failure", "error", "errored"), JobState.FAILED),
    **dict.fromkeys(("cancelled", "canceled", "aborted"), JobState.CANCELLED),
    **dict.fromkeys(
        (
            "queued",
            "pending",
            "waiting",
            "submitted",
            "new",
            "created",
            "scheduled",
            "running",
            "processing",
            "in_progress",
            "started",
            "active",
            "retrying",
        ),
        None,
    ),
}

_SYSTEM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
_LEGACY_ID = re.compile(r"[\x21-\x7e]+")
_EPOCH_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# `https://`, `s3:`, `file:`, `C:`: a scheme or a drive, not a path below the root.
_SCHEME_OR_DRIVE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_TRACEBACK_MARKERS = ("Traceback (most recent call last)", 'File "')


# -- the pure rules -----------------------------------------------------------


class RecordRefused(Exception):
    """A legacy record that cannot be imported; `reason` says why, for the report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PathRefused(RecordRefused):
    """A legacy path that maps to no place below the root."""


def shown(value: object, max_chars: int = SHOWN_CHARS) -> str:
    """A legacy value as a report shows it: quoted, unsafe characters escaped, cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    escaped = "".join(
        char.encode("unicode_escape").decode("ascii") if is_unsafe_char(char) else char
        for char in text
    )
    return f"'{escaped}'"


def resolve_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record's values by canonical field name (see FIELD_ALIASES).

    Names are compared case-insensitively; unknown names are ignored; None and
    blank strings count as absent. Two aliases of one field with different
    values are refused (which one is right would be a guess)."""
    found: dict[str, tuple[str, Any]] = {}
    for name, value in record.items():
        if not isinstance(name, str):
            continue
        canonical = _CANONICAL_OF.get(name.strip().lower())
        if canonical is None or value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, (bytes, bytearray, memoryview, list, dict)):
            raise RecordRefused(f"field {name!r} holds {type(value).__name__}, not a value")
        if canonical in found and found[canonical][1] != value:
            raise RecordRefused(
                f"fields {found[canonical][0]!r} and {name!r} disagree "
                f"({shown(found[canonical][1], 40)} vs {shown(value, 40)})"
            )
        found[canonical] = (name, value)
    return {canonical: value for canonical, (_, value) in found.items()}


def check_legacy_id(value: Any) -> str:
    """The legacy job id as text: printable ASCII without spaces, short enough
    that `legacy:<id>` fits a request_id (MAX_REQUEST_ID_CHARS)."""
    if value is None:
        raise RecordRefused("no job id (" + ", ".join(FIELD_ALIASES["id"]) + ")")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordRefused(f"job id {shown(value, 40)} is neither text nor an integer")
    text = str(value).strip()
    if not _LEGACY_ID.fullmatch(text):
        raise RecordRefused(
            f"job id {shown(text, 40)} must be printable ASCII characters without spaces"
        )
    if len(text) > MAX_LEGACY_ID_CHARS:
        raise RecordRefused(
            f"job id {shown(text, 40)} is longer than {MAX_LEGACY_ID_CHARS} characters "
            f"(request_id {REQUEST_ID_PREFIX}<id> holds at most {MAX_REQUEST_ID_CHARS})"
        )
    return text


def legacy_job_id(legacy_id: str) -> str:
    """The videojobs job id of a legacy job: uuid5 over LEGACY_NAMESPACE, 32 hex."""
    return uuid.uuid5(LEGACY_NAMESPACE, legacy_id).hex


def legacy_request_id(legacy_id: str) -> str:
    """The request_id that marks a job as imported from `legacy_id`."""
    return REQUEST_ID_PREFIX + legacy_id


def parse_state(value: Any) -> JobState:
    """The terminal state a legacy state name means; refuses live and unknown states."""
    if value is None:
        raise RecordRefused("no state (" + ", ".join(FIELD_ALIASES["state"]) + ")")
    if not isinstance(value, str):
        raise RecordRefused(f"state {shown(value, 40)} is not a state name")
    name = re.sub(r"[- ]", "_", value.strip().lower())
    if name not in STATE_ALIASES:
        raise RecordRefused(f"unknown state {shown(value, 40)}")
    state = STATE_ALIASES[name]
    if state is None:
        raise RecordRefused(
            f"state {shown(value, 40)} is not final: the job was still live in the old "
            "system (import it once it has ended, or submit the video again)"
        )
    return state


def parse_timestamp(value: Any, name: str = "timestamp") -> datetime:
    """A UTC instant from ISO 8601 text (no offset: UTC) or epoch seconds
    (a number, or digits as text). Refuses anything else, before 1970 or
    out of range."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, bool):
        raise RecordRefused(f"{name} {shown(value, 40)} is not a time")
    elif isinstance(value, (int, float)):
        parsed = _from_epoch(float(value), name, value)
    elif isinstance(value, str):
        text = value.strip()
        if _EPOCH_SECONDS.fullmatch(text):
            parsed = _from_epoch(float(text), name, value)
        else:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise RecordRefused(
                    f"{name} {shown(value, 40)} is neither ISO 8601 nor epoch seconds"
                ) from None
    else:
        raise RecordRefused(f"{name} {shown(value, 40)} is not a time")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    parsed = parsed.astimezone(UTC)
    if parsed.year < 1970:
        raise RecordRefused(f"{name} {shown(value, 40)} is before 1970")
    return parsed


def _from_epoch(seconds: float, name: str, original: Any) -> datetime:
    if not math.isfinite(seconds) or seconds < 0:
        raise RecordRefused(f"{name} {shown(original, 40)} is not a time")
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, ValueError, OSError):
        raise RecordRefused(
            f"{name} {shown(original, 40)} is out of range (epoch seconds, not milliseconds)"
        ) from None


def map_legacy_path(raw: Any, root: PurePosixPath) -> PurePosixPath:
    """Where a legacy path lies below `root` (an absolute path), as a relative path.

    - Empty, non-text, a URL or drive (`scheme:`), a backslash or a control
      character: refused.
    - `.` and empty components are dropped; `..` removes the component before
      it, and one with nothing before it (above `/`, or above the start of a
      relative path) is refused.
    - Absolute: must lie below `root` after that normalisation.
    - Relative: its leading components must equal a trailing part of `root`
      (`data/video_jobs/x` for root `/srv/app/data/video_jobs`); the rest is
      the location. When trailing parts of different lengths match and give
      different locations, the path is ambiguous and refused.
    - The root itself is refused (it names no file).
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise PathRefused("empty path")
    if not isinstance(raw, str):
        raise PathRefused(f"{shown(raw, 40)} is not a path")
    if len(raw) > MAX_PATH_CHARS:
        raise PathRefused(f"path longer than {MAX_PATH_CHARS} characters")
    if any(is_unsafe_char(char) for char in raw):
        raise PathRefused(f"{shown(raw)} holds control or invisible characters")
    if _SCHEME_OR_DRIVE.match(raw):
        raise PathRefused(f"{shown(raw)} is a URL or drive path, not a path below the root")
    if "\\" in raw:
        raise PathRefused(f"{shown(raw)} holds a backslash (not a POSIX path)")
    absolute = raw.startswith("/")
    parts: list[str] = []
    climbed = False
    for segment in raw.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                above = "/" if absolute else "the start of the relative path"
                raise PathRefused(f"{shown(raw)}: '..' leads above {above}")
            parts.pop()
            climbed = True
            continue
        parts.append(segment)
    root_parts = root.parts[1:]
    outside = (
        f"{shown(raw)}: '..' leads outside the root {shown(str(root))}"
        if climbed
        else f"{shown(raw)} is outside the root {shown(str(root))}"
    )
    if absolute:
        depth = len(root_parts)
        if tuple(parts[:depth]) != root_parts:
            raise PathRefused(outside)
        if len(parts) == depth:
            raise PathRefused(f"{shown(raw)} names the root directory, not a file")
        return PurePosixPath(*parts[depth:])
    locations = {
        tuple(parts[k:])
        for k in range(1, len(root_parts) + 1)
        if tuple(parts[:k]) == root_parts[-k:]
    }
    if not locations:
        if climbed:
            raise PathRefused(outside)
        example = "/".join(root_parts[-2:])
        raise PathRefused(
            f"{shown(raw)} is relative and does not start with the end of the root "
            f"(e.g. {example}/...)"
        )
    if () in locations:
        raise PathRefused(f"{shown(raw)} names the root directory, not a file")
    if len(locations) > 1:
        raise PathRefused(
            f"{shown(raw)} is ambiguous: it starts with more than one trailing part of the root"
        )
    return PurePosixPath(*locations.pop())


# -- reading legacy files -----------------------------------------------------


class UsageError(Exception):
    """Bad usage: an unreadable file, a bad root, an unknown option value (exit 2)."""


@dataclass(frozen=True)
class LegacyRecord:
    """One record of a legacy file: where it is (`line 3`, `row 3`) and its
    fields, or why it could not even be read."""

    where: str
    fields: Mapping[str, Any] | None = None
    unreadable: str = ""


@dataclass(frozen=True)
class LegacySource:
    """The records of a legacy file, and what the file was read as."""

    format: str
    records: list[LegacyRecord]
    table: str = ""


def detect_format(path: Path) -> str:
    """`sqlite` for a SQLite database, `jsonl` for text that starts with `{`,
    `csv` otherwise (decided by content, not by the file name)."""
    try:
        with open(path, "rb") as source:
            head = source.read(4096)
    except OSError as exc:
        raise UsageError(f"cannot read {shown(str(path))}: {exc.strerror or exc}") from None
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return "jsonl"
    return "csv"


def read_legacy_file(path: Path, format: str = "auto", table: str | None = None) -> LegacySource:
    """Reads every record of `path`. Raises UsageError when the file as a
    whole cannot be read; a record that cannot be read is one refused record."""
    if not path.is_file():
        raise UsageError(f"{shown(str(path))} is not a readable file")
    chosen = detect_format(path) if format == "auto" else format
    if chosen not in FORMATS:
        raise UsageError(f"unknown format {shown(format)} (one of auto, {', '.join(FORMATS)})")
    if table is not None and chosen != "sqlite":
        raise UsageError(f"--table applies to SQLite databases; {shown(str(path))} is {chosen}")
    try:
        if chosen == "jsonl":
            return LegacySource("jsonl", list(_read_jsonl(path)))
        if chosen == "csv":
            return LegacySource("csv", list(_read_csv(path)))
        name, records = _read_sqlite(path, table)
        return LegacySource("sqlite", records, name)
    except OSError as exc:
        raise UsageError(f"cannot read {shown(str(path))}: {exc.strerror or exc}") from None


def _read_jsonl(path: Path) -> Iterator[LegacyRecord]:
    with open(path, "rb") as source:
        number = 0
        while True:
            line = source.readline(MAX_RECORD_BYTES + 1)
            if not line:
                return
            number += 1
            if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
                while (rest := source.readline(MAX_RECORD_BYTES)) and not rest.endswith(b"\n"):
                    pass
                yield LegacyRecord(
                    f"line {number}", unreadable=f"longer than {MAX_RECORD_BYTES} bytes"
                )
                continue
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                yield LegacyRecord(f"line {number}", unreadable="not UTF-8 text")
                continue
            except (ValueError, RecursionError):
                yield LegacyRecord(f"line {number}", unreadable="not valid JSON")
                continue
            if not isinstance(value, dict):
                yield LegacyRecord(f"line {number}", unreadable="not a JSON object")
                continue
            yield LegacyRecord(f"line {number}", value)


def _read_csv(path: Path) -> Iterator[LegacyRecord]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as source:
            reader = csv.DictReader(source)
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield LegacyRecord(f"line {reader.line_num}", unreadable=f"bad CSV: {exc}")
                    continue
                yield LegacyRecord(
                    f"line {reader.line_num}", {k: v for k, v in row.items() if k is not None}
                )
    except UnicodeDecodeError:
        raise UsageError(f"{shown(str(path))} is not UTF-8 text") from None


def _read_sqlite(path: Path, table: str | None) -> tuple[str, list[LegacyRecord]]:
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise UsageError(f"cannot open {shown(str(path))} as SQLite: {exc}") from None
    try:
        connection.row_factory = sqlite3.Row
        tables = [
            name
            for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        views = [
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'view'")
        ]
        listed = ", ".join(shown(name, 40) for name in tables[:20]) or "none"
        if table is not None:
            if table not in tables and table not in views:
                raise UsageError(f"no table {shown(table, 40)} in the database (tables: {listed})")
            chosen = table
        elif len(tables) == 1:
            chosen = tables[0]
        elif "jobs" in tables:
            chosen = "jobs"
        else:
            raise UsageError(f"the database has tables {listed}: name one with --table")
        quoted = '"' + chosen.replace('"', '""') + '"'
        rows = connection.execute(f"SELECT * FROM {quoted}")  # noqa: S608 - a checked name
        records = [LegacyRecord(f"row {n}", dict(row)) for n, row in enumerate(rows, start=1)]
        return chosen, records
    except sqlite3.Error as exc:
        raise UsageError(f"cannot read {shown(str(path))} as SQLite: {exc}") from None
    finally:
        connection.close()


# -- importing ------------------------------------------------------------------


@dataclass(frozen=True)
class ImportOptions:
    """How records become jobs."""

    root: Path
    system: str = DEFAULT_SYSTEM
    pipeline: str = DEFAULT_PIPELINE
    dry_run: bool = False
    max_file_bytes: int = JobServiceSettings.max_upload_bytes
    min_free_bytes: int = JobServiceSettings.min_free_bytes
    max_attempts: int = JobServiceSettings.max_attempts
    # The tenant the imported jobs belong to.
    tenant: str = DEFAULT_TENANT


@dataclass
class RowOutcome:
    """What happened to one record. `status`: imported, skipped or refused
    (in a dry run: `would import` instead of imported)."""

    where: str
    status: str
    legacy_id: str = ""
    job_id: str = ""
    state: str = ""
    input_key: str = ""
    output_key: str = ""
    size_bytes: int = 0
    sha256: str = ""
    reason: str = ""

    def lines(self) -> list[str]:
        """The report lines of this record."""
        who = f"{self.where}: {self.legacy_id}" if self.legacy_id else self.where
        if self.job_id:
            who += f" -> {self.job_id}"
        if self.status == "refused":
            return [f"{who}  refused: {self.reason}"]
        if self.status == "skipped":
            return [f"{who}  skipped: {self.reason}"]
        lines = [f"{who}  {self.state}  {self.status}"]
        detail = f" ({self.size_bytes} bytes"
        detail += f", sha256 {self.sha256})" if self.sha256 else ")"
        lines.append(f"    input  {self.input_key}{detail}")
        if self.output_key:
            lines.append(f"    output {self.output_key}")
        if self.reason:
            lines.append(f"    note   {self.reason}")
        return lines


@dataclass
class ImportReport:
    """Every record's outcome and the counts."""

    dry_run: bool
    outcomes: list[RowOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        """How many records ended with `status`."""
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    @property
    def imported(self) -> int:
        """Records imported (or, in a dry run, that would be)."""
        return self.count("would import" if self.dry_run else "imported")

    @property
    def skipped(self) -> int:
        """Records skipped because their job was imported before."""
        return self.count("skipped")

    @property
    def refused(self) -> int:
        """Records that cannot be imported."""
        return self.count("refused")

    @property
    def exit_code(self) -> int:
        """0 when every record was imported or skipped, 1 when some were refused."""
        return 1 if self.refused else 0

    def summary(self) -> str:
        """The final summary line."""
        if self.dry_run:
            return (
                f"summary (dry run, nothing changed): {self.imported} would be imported, "
                f"{self.skipped} skipped (already imported), {self.refused} refused"
            )
        return (
            f"summary: {self.imported} imported, {self.skipped} skipped (already imported), "
            f"{self.refused} refused"
        )


@dataclass(frozen=True)
class _LocalFile:
    """A legacy file found below the root: how it is shown and where it is read."""

    legacy_path: str
    # The last component of the mapped path (a symlink's name, not its target's).
    name: str
    real_path: str
    size_bytes: int


@dataclass
class _Plan:
    """Everything one record becomes, checked, before any byte is copied."""

    legacy_id: str
    job_id: str
    state: JobState
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str
    file_name: str
    input_file: _LocalFile
    container: ContainerFormat
    output_file: _LocalFile | None
    note: str = ""
    tenant: str = DEFAULT_TENANT

    @property
    def input_key(self) -> StorageKey:
        return input_key_for(self.job_id, self.container.extension, self.tenant)

    @property
    def output_key(self) -> StorageKey | None:
        if self.output_file is None:
            return None
        return attempt_prefix_for(self.job_id, 1, self.tenant).child(OUTPUT_NAME)


class _AlreadyImported(Exception):
    """The record's job exists already."""


class LegacyImporter:
    """Turns legacy records into terminal jobs (see the module docstring).

    `database` may be None in a dry run against a database that does not exist
    yet; `blob_store` is only used outside dry runs."""

    def __init__(
        self,
        options: ImportOptions,
        database: Database | None,
        blob_store: BlobStore | None,
        *,
        database_has_jobs: bool = True,
    ) -> None:
        self._options = options
        self._database = database
        self._blob_store = blob_store
        self._database_has_jobs = database_has_jobs and database is not None
        self._root = PurePosixPath(os.path.abspath(options.root))
        self._real_root = os.path.realpath(options.root)
        self._pipeline, self._execution_timeout = _check_pipeline(options.pipeline)
        self._system = check_system_name(options.system)
        if not options.dry_run and (database is None or blob_store is None):
            raise ValueError("an import that is not a dry run needs a database and a blob store")

    async def run(
        self,
        records: Sequence[LegacyRecord],
        on_outcome: Callable[[RowOutcome], None] | None = None,
    ) -> ImportReport:
        """Imports every record in order; `on_outcome` sees each outcome at once."""
        report = ImportReport(dry_run=self._options.dry_run)
        seen: dict[str, str] = {}
        for record in records:
            outcome = await self._one(record, seen)
            report.outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        return report

    async def _one(self, record: LegacyRecord, seen: dict[str, str]) -> RowOutcome:
        outcome = RowOutcome(where=record.where, status="refused")
        try:
            if record.fields is None:
                raise RecordRefused(record.unreadable)
            fields = resolve_fields(record.fields)
            if not fields:
                names = ", ".join(shown(name, 24) for name in list(record.fields)[:8])
                raise RecordRefused(
                    f"none of the known field names (see --help); it has: {names or 'nothing'}"
                )
            legacy_id = check_legacy_id(fields.get("id"))
            outcome.legacy_id = legacy_id
            outcome.job_id = legacy_job_id(legacy_id)
            if legacy_id in seen:
                raise RecordRefused(f"the same job id is also on {seen[legacy_id]}")
            seen[legacy_id] = record.where
            if await self._exists(outcome.job_id):
                raise _AlreadyImported
            plan = await asyncio.to_thread(self._plan, legacy_id, outcome.job_id, fields)
            outcome.state = plan.state.value
            outcome.input_key = plan.input_key.value
            outcome.output_key = plan.output_key.value if plan.output_key else ""
            outcome.reason = plan.note
            if self._options.dry_run:
                outcome.status = "would import"
                outcome.size_bytes = plan.input_file.size_bytes
                return outcome
            outcome.size_bytes, outcome.sha256 = await self._store_and_create(plan)
            outcome.status = "imported"
        except _AlreadyImported:
            outcome.status, outcome.reason = "skipped", "already imported"
        except RecordRefused as exc:
            outcome.status, outcome.reason = "refused", exc.reason
        except SQLAlchemyError as exc:
            # The database failed (went away, filled up): this record is not
            # imported; a re-run picks it up and skips what was imported.
            log.error("%s: database error", record.where, exc_info=True)
            outcome.status = "refused"
            outcome.reason = f"database error ({type(exc).__name__}; see the log)"
        return outcome

    async def _exists_or_unknown(self, job_id: str) -> bool:
        """Whether the job exists, True when the database cannot say: copies
        are removed only when no job refers to them (else the orphan sweep
        removes them later)."""
        try:
            return await self._exists(job_id)
        except SQLAlchemyError:
            return True

    async def _exists(self, job_id: str) -> bool:
        if not self._database_has_jobs:
            return False
        assert self._database is not None
        async with self._database.reading() as repository:
            # Only the job_id column: a dry run does not migrate, and this
            # query works on every schema version.
            return bool(await repository.existing_job_ids([job_id]))

    # -- checking, in a thread (files) ------------------------------------------

    def _plan(self, legacy_id: str, job_id: str, fields: Mapping[str, Any]) -> _Plan:
        state = parse_state(fields.get("state"))
        if "created_at" not in fields:
            raise RecordRefused("no creation time (" + ", ".join(FIELD_ALIASES["created_at"]) + ")")
        created_at = parse_timestamp(fields["created_at"], "created_at")
        started_at = _optional_time(fields, "started_at")
        finished_at = _optional_time(fields, "finished_at")
        if "input" not in fields:
            raise RecordRefused("no input path (" + ", ".join(FIELD_ALIASES["input"]) + ")")
        input_file = self._find("input", fields["input"])
        file_name = input_file.name
        if problems := check_file_name(file_name):
            raise RecordRefused(f"input file name {shown(file_name, 40)}: {problems[0][1]}")
        if input_file.size_bytes > self._options.max_file_bytes:
            raise RecordRefused(
                f"input {shown(input_file.legacy_path)} holds {input_file.size_bytes} bytes, "
                f"more than --max-upload-bytes ({self._options.max_file_bytes})"
            )
        container = self._identify(input_file)
        output_file, note = None, ""
        if state is JobState.SUCCEEDED:
            if "output" not in fields:
                raise RecordRefused(
                    "the job succeeded but names no output ("
                    + ", ".join(FIELD_ALIASES["output"])
                    + ")"
                )
            output_file = self._find("output", fields["output"])
            if output_file.size_bytes > self._options.max_file_bytes:
                raise RecordRefused(
                    f"output {shown(output_file.legacy_path)} holds {output_file.size_bytes} "
                    f"bytes, more than --max-upload-bytes ({self._options.max_file_bytes})"
                )
        elif "output" in fields:
            note = f"output not imported: the job did not succeed ({state.value})"
        error = fields.get("error")
        return _Plan(
            legacy_id=legacy_id,
            job_id=job_id,
            state=state,
            created_at=created_at,
            started_at=started_at,
            finished_at=finished_at,
            error=str(error) if error is not None else "",
            file_name=file_name,
            input_file=input_file,
            container=container,
            output_file=output_file,
            note=note,
            tenant=self._options.tenant,
        )

    def _find(self, what: str, raw: Any) -> _LocalFile:
        """The file a legacy path names, below the root (symlinks included)."""
        try:
            relative = map_legacy_path(raw, self._root)
        except PathRefused as exc:
            raise PathRefused(f"{what} {exc.reason}") from None
        host_path = os.path.join(str(self._root), *relative.parts)
        real = os.path.realpath(host_path)
        if not real.startswith(self._real_root.rstrip(os.sep) + os.sep):
            raise PathRefused(f"{what} {shown(raw)} resolves outside the root (a symlink)")
        try:
            status = os.stat(real)
        except FileNotFoundError:
            raise RecordRefused(f"{what} {shown(raw)}: no such file below the root") from None
        except OSError as exc:
            raise RecordRefused(f"{what} {shown(raw)}: {exc.strerror or exc}") from None
        if not os.path.isfile(real):
            raise RecordRefused(f"{what} {shown(raw)} is not a regular file")
        return _LocalFile(
            legacy_path=str(raw), name=relative.name, real_path=real, size_bytes=status.st_size
        )

    @staticmethod
    def _identify(input_file: _LocalFile) -> ContainerFormat:
        try:
            with open(input_file.real_path, "rb") as source:
                head = source.read(SNIFF_BYTES)
        except OSError as exc:
            raise RecordRefused(
                f"input {shown(input_file.legacy_path)}: {exc.strerror or exc}"
            ) from None
        try:
            return sniff_container(head)
        except UnsupportedContainer as exc:
            raise RecordRefused(
                f"input {shown(input_file.legacy_path)} is {exc.format_label} ({exc.why}), "
                "not an allowed video container"
            ) from None
        except NotAContainer:
            raise RecordRefused(
                f"input {shown(input_file.legacy_path)} starts no supported video container"
            ) from None

    # -- storing and creating ---------------------------------------------------

    async def _store_and_create(self, plan: _Plan) -> tuple[int, str]:
        """Copies the files, then creates the job; on any failure removes the
        copies again unless a job now refers to them."""
        assert self._blob_store is not None and self._database is not None
        store = self._blob_store
        needed = plan.input_file.size_bytes + (
            plan.output_file.size_bytes if plan.output_file else 0
        )
        available = await asyncio.to_thread(store.available_bytes)
        if available is not None and available - needed < self._options.min_free_bytes:
            raise RecordRefused(
                f"storage has {available} bytes free; the job's {needed} bytes would leave "
                f"less than --min-free-bytes ({self._options.min_free_bytes})"
            )
        written: list[StorageKey] = []
        created = False
        try:
            size, sha256 = await asyncio.to_thread(
                self._copy, plan.input_file, plan.input_key, plan.container
            )
            written.append(plan.input_key)
            if plan.output_file is not None and plan.output_key is not None:
                await asyncio.to_thread(self._copy, plan.output_file, plan.output_key, None)
                written.append(plan.output_key)
            created = await self._create(plan, size, sha256)
        finally:
            if not created and written and not await self._exists_or_unknown(plan.job_id):
                for key in written:
                    with contextlib.suppress(BlobStoreError):
                        await asyncio.to_thread(store.delete, key)
        if not created:
            raise _AlreadyImported
        return size, sha256

    def _copy(
        self, source_file: _LocalFile, key: StorageKey, container: ContainerFormat | None
    ) -> tuple[int, str]:
        """Streams one file into the store; returns the size and SHA-256 of
        the bytes copied. An input must still start the container it was
        identified as (the file may have changed since)."""
        assert self._blob_store is not None
        what = "input" if container is not None else "output"
        try:
            with (
                open(source_file.real_path, "rb") as source,
                self._blob_store.open_writer(key) as writer,
            ):
                first = True
                while chunk := source.read(COPY_CHUNK_BYTES):
                    if first and container is not None:
                        try:
                            same = sniff_container(chunk[:SNIFF_BYTES]).name == container.name
                        except (UnsupportedContainer, NotAContainer):
                            same = False
                        if not same:
                            raise RecordRefused(
                                f"input {shown(source_file.legacy_path)} changed while it was read"
                            )
                    first = False
                    writer.write(chunk)
                    if writer.size_bytes > self._options.max_file_bytes:
                        raise RecordRefused(
                            f"{what} {shown(source_file.legacy_path)} grew past "
                            f"--max-upload-bytes while it was copied"
                        )
                size, sha256 = writer.size_bytes, writer.sha256_hex()
                writer.commit()
                return size, sha256
        except OSError as exc:
            raise RecordRefused(
                f"cannot read {what} {shown(source_file.legacy_path)}: {exc.strerror or exc}"
            ) from None
        except BlobStoreError as exc:
            # The store's messages name keys, never host paths.
            raise RecordRefused(f"storage: {exc}") from None

    async def _create(self, plan: _Plan, size: int, sha256: str) -> bool:
        """Creates the job and its two events in one transaction; False when
        the job exists already (imported by an earlier or a concurrent run)."""
        assert self._database is not None
        request_id = legacy_request_id(plan.legacy_id)
        try:
            async with self._database.transaction() as repository:
                existing = await repository.get_row_by_request_id(plan.tenant, request_id)
                if existing is None:
                    existing = await repository.get_row(plan.job_id)
                if existing is not None:
                    if existing.request_id != request_id or existing.job_id != plan.job_id:
                        # A client's job that used this request_id, or an id clash:
                        # not ours to skip as imported, nor to overwrite.
                        raise RecordRefused(
                            f"request_id {request_id} or job id {plan.job_id} belongs to "
                            f"job {existing.job_id}, which was not imported from this record"
                        )
                    return False
                await self._insert(repository, plan, request_id, size, sha256)
        except IntegrityError:
            return False  # a concurrent run inserted it first
        except SQLAlchemyError as exc:
            log.error("job %s: database error", plan.job_id, exc_info=True)
            raise RecordRefused(f"database error ({type(exc).__name__}; see the log)") from None
        return True

    async def _insert(
        self, repository: JobRepository, plan: _Plan, request_id: str, size: int, sha256: str
    ) -> None:
        ended_at = plan.finished_at
        # The terminal event happened when the job ended; without an end time,
        # at the latest time the record has.
        terminal_at = plan.finished_at or plan.started_at or plan.created_at
        succeeded = plan.state is JobState.SUCCEEDED
        row = JobRow(
            job_id=plan.job_id,
            tenant=plan.tenant,
            request_id=request_id,
            request_fingerprint=None,
            pipeline=self._pipeline,
            parameters={},
            state=plan.state.value,
            attempt=1,
            max_attempts=self._options.max_attempts,
            file_name=plan.file_name,
            input_key=plan.input_key.value,
            input_size_bytes=size,
            input_sha256=sha256,
            input_format=plan.container.name,
            output_key=None,
            summary=None,
            warnings=[],
            progress_fraction=1.0 if succeeded else 0.0,
            progress_stage="done" if succeeded else "imported",
            priority=0,
            dispatch_rank=dispatch_rank(plan.created_at, 0, 0.0),
            execution_timeout_seconds=self._execution_timeout,
            failed_attempts=1 if plan.state is JobState.FAILED else 0,
            lease_losses=0,
            partial_result_bytes=0,
            last_sequence=0,
            created_at=plan.created_at,
            started_at=plan.started_at,
            ended_at=ended_at,
            # The row itself was written now (the times above are the record's).
            updated_at=utc_now(),
        )
        outcome: Completed | Failed | Cancelled
        if succeeded:
            assert plan.output_key is not None
            outcome = Completed(plan.output_key)
        elif plan.state is JobState.FAILED:
            message = legacy_error_text(plan.error) or f"failed in {self._system}"
            outcome = Failed(JobError("UNKNOWN", message, "LEGACY_JOB_FAILED"))
        else:
            outcome = Cancelled(legacy_error_text(plan.error) or f"cancelled in {self._system}")
        # The job is inserted in its final state (one INSERT, never seen live);
        # its history says how it got there: queued back then, then the end.
        await lifecycle.import_ended(
            repository,
            row,
            split_key(self._pipeline),
            outcome,
            system=self._system,
            accepted_at=plan.created_at,
            ended_at=terminal_at,
        )
        await repository.flush()


def legacy_error_text(message: str) -> str:
    """A legacy error as clients may see it: one line (the last line of a
    stack trace, which names the exception; else the first line), host paths
    replaced by `<path>`, unsafe characters removed, at most MAX_MESSAGE_CHARS."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    traceback = any(marker in message for marker in _TRACEBACK_MARKERS)
    line = lines[-1] if traceback else lines[0]
    return clean_text(redact_host_paths(line), MAX_MESSAGE_CHARS)


def _optional_time(fields: Mapping[str, Any], name: str) -> datetime | None:
    return parse_timestamp(fields[name], name) if name in fields else None


def _check_pipeline(name: str) -> tuple[str, float]:
    """The canonical pipeline key of `name` (`probe`, `ocr+scenes`) and its
    default execution timeout; UsageError for an unknown pipeline."""
    catalogue = builtin_catalogue()
    names = [part for part in name.split("+") if part]
    try:
        plan = plan_job(catalogue, names, {}, names_field="--pipeline")
    except ParameterError as exc:
        raise UsageError("; ".join(message for _, message in exc.violations)) from None
    timeout = max(catalogue.spec(n).default_execution_timeout_seconds for n in plan.pipelines)
    return plan.key, timeout


def check_tenant(name: str) -> str:
    """A tenant name, or UsageError."""
    if not TENANT_PATTERN.fullmatch(name):
        raise UsageError(f"--tenant must match {TENANT_PATTERN.pattern}")
    return name


def check_system_name(name: str) -> str:
    """The old system's name as events show it (`imported from <name>`)."""
    if not _SYSTEM_NAME.fullmatch(name or ""):
        raise UsageError(
            f"--system {shown(name, 40)}: 1-64 characters of letters, digits, space, '.', '_', '-'"
        )
    return name


def check_root(root: str) -> Path:
    """The legacy storage root: an existing directory other than `/`, made absolute."""
    absolute = Path(os.path.abspath(os.path.expanduser(root)))
    if absolute == Path("/"):
        raise UsageError("--root must be the old storage directory, not /")
    if not absolute.is_dir():
        raise UsageError(f"--root {shown(root)} is not a directory")
    return absolute


# -- running it -----------------------------------------------------------------


@dataclass(frozen=True)
class ImportRequest:
    """One run of the command, as plain values."""

    file: Path
    options: ImportOptions
    database_url: str | None
    storage_url: str | None
    format: str = "auto"
    table: str | None = None


async def run_import(
    request: ImportRequest,
    on_outcome: Callable[[RowOutcome], None] | None = None,
    on_source: Callable[[LegacySource], None] | None = None,
) -> tuple[LegacySource, ImportReport]:
    """Reads the file and imports it into the database and storage the request
    names (migrating the database first). A dry run writes nothing, not even
    a migration; a database that does not exist yet has no imported jobs.
    Raises UsageError for a file, root or option that is unusable."""
    options = request.options
    check_root(str(options.root))
    check_system_name(options.system)
    _check_pipeline(options.pipeline)
    source = read_legacy_file(request.file, request.format, request.table)
    database = None
    try:
        if request.database_url and not (
            options.dry_run and not _database_exists(request.database_url)
        ):
            database = Database(request.database_url)
    except SQLAlchemyError as exc:  # a malformed URL, a driver that is not installed
        raise UsageError(f"database URL: {_brief(exc)}") from None
    try:
        has_jobs = True
        blob_store = None
        if database is not None:
            try:
                if options.dry_run:
                    has_jobs = await _has_jobs_table(database)
                else:
                    await database.migrate()
            except (SQLAlchemyError, OSError) as exc:
                raise UsageError(f"cannot open the database: {_brief(exc)}") from None
        if not options.dry_run:
            if request.storage_url is None:
                raise UsageError("no storage configured")
            try:
                blob_store = open_blob_store(request.storage_url)
            except ValueError as exc:
                raise UsageError(f"storage: {exc}") from None
        importer = LegacyImporter(options, database, blob_store, database_has_jobs=has_jobs)
        if on_source is not None:
            on_source(source)
        report = await importer.run(source.records, on_outcome)
    finally:
        if database is not None:
            await database.dispose()
    return source, report


def _database_exists(url: str) -> bool:
    """False only for a SQLite file that is not there (a dry run must not create it)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return True
    return Path(parsed.database).exists()


async def _has_jobs_table(database: Database) -> bool:
    async with database.reading() as repository:
        return await repository.session.run_sync(
            lambda session: inspect(session.connection()).has_table(JobRow.__tablename__)
        )


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {clean_text(redact_host_paths(text), 200)}"


# -- the command ------------------------------------------------------------------

_REUSED_SETTINGS = (
    "database_url",
    "storage_url",
    "max_upload_bytes",
    "min_free_bytes",
    "max_attempts",
    "log_level",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videojobs-server import-legacy",
        description=(
            "Import the finished jobs of the system videojobs replaces: copy each job's "
            "input video and result file into storage and create the job (SUCCEEDED, "
            "FAILED or CANCELLED) with its events. Re-running skips jobs imported before."
        ),
        epilog=(
            "Field names accepted (case-insensitive): "
            + "; ".join(f"{name}: {', '.join(aliases)}" for name, aliases in FIELD_ALIASES.items())
            + ". Times: ISO 8601 (no offset means UTC) or epoch seconds. "
            "Exit status: 0 every record imported or skipped, 1 some refused (the rest "
            "imported), 2 bad usage."
        ),
    )
    parser.add_argument(
        "file", metavar="FILE", type=Path, help="JSON lines, a SQLite database or a CSV export"
    )
    parser.add_argument(
        "--root",
        required=True,
        metavar="DIR",
        help="the old storage directory on this machine (e.g. /srv/app/data/video_jobs); "
        "every path must lie below it",
    )
    parser.add_argument(
        "--format",
        choices=("auto", *FORMATS),
        default="auto",
        help="how to read FILE (default: auto, from its content)",
    )
    parser.add_argument(
        "--table",
        metavar="NAME",
        help="the table of a SQLite FILE (default: its only table, or 'jobs')",
    )
    parser.add_argument(
        "--pipeline",
        default=DEFAULT_PIPELINE,
        help=f"pipeline the imported jobs are recorded with (default: {DEFAULT_PIPELINE})",
    )
    parser.add_argument(
        "--tenant",
        default=DEFAULT_TENANT,
        help=f"tenant the imported jobs belong to (default: {DEFAULT_TENANT})",
    )
    parser.add_argument(
        "--system",
        default=DEFAULT_SYSTEM,
        help="name of the old system, shown in each job's first event "
        f"('imported from <system>'; default: {DEFAULT_SYSTEM})",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check every record and print what would be done; change nothing",
    )
    storage = parser.add_argument_group("job-service storage (the same flags as the server)")
    add_option(
        storage,
        "--data-dir",
        "VIDEOJOBS_DATA_DIR",
        DEFAULT_DATA_DIR,
        "directory for the SQLite database and local storage",
    )
    for setting in dataclasses.fields(JobServiceSettings):
        if setting.name not in _REUSED_SETTINGS:
            continue
        meta = setting.metadata
        flag = meta["flag"] or "--" + setting.name.replace("_", "-")
        parse = {"int": int, "float": float}.get(setting.type, str)
        add_option(storage, flag, meta["env"], setting.default, meta["help"], parse)
    return parser


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """`videojobs-server import-legacy`: returns the exit status (0, 1 or 2)."""
    out = out or sys.stdout
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    dry_run = args.dry_run
    if dry_run and not Path(args.data_dir).expanduser().exists():
        # Nothing was ever stored there, and a dry run creates nothing.
        database_url, storage_url = args.database_url or None, None
    else:
        try:
            database_url, storage_url = storage_dirs(
                args.data_dir, args.database_url, args.storage_url
            )
        except OSError as exc:
            print(
                f"videojobs-server import-legacy: error: cannot use --data-dir: "
                f"{exc.strerror or exc}",
                file=sys.stderr,
            )
            return 2
    try:
        options = ImportOptions(
            root=check_root(args.root),
            system=check_system_name(args.system),
            pipeline=args.pipeline,
            dry_run=dry_run,
            max_file_bytes=args.max_upload_bytes,
            min_free_bytes=args.min_free_bytes,
            max_attempts=args.max_attempts,
            tenant=check_tenant(args.tenant),
        )
        request = ImportRequest(
            file=args.file,
            options=options,
            database_url=database_url,
            storage_url=storage_url,
            format=args.format,
            table=args.table,
        )

        def started(source: LegacySource) -> None:
            table = f" table {shown(source.table, 40)}" if source.table else ""
            print(
                f"importing {len(source.records)} record(s) of {shown(str(args.file))} "
                f"({source.format}{table}) from root {shown(str(options.root))}"
                + (" (dry run: nothing is changed)" if dry_run else ""),
                file=out,
                flush=True,
            )

        def show(outcome: RowOutcome) -> None:
            for line in outcome.lines():
                print(line, file=out, flush=True)

        _, report = asyncio.run(run_import(request, show, started))
    except UsageError as exc:
        print(f"videojobs-server import-legacy: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary(), file=out, flush=True)
    return report.exit_code
