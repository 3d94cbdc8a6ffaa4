"""Log lines of both services: plain text (the default) or one JSON object
per line (`--log-format json`), with what a line is about attached.

`log_context(job_id=..., attempt=..., worker_id=..., request_id=...)` binds
fields for the code it wraps; every line logged there, in the same task or
in tasks it starts, carries them (as `key=value` after a plain line, as
fields of a JSON one). The fields live in a context variable, so concurrent
jobs and calls never see each other's.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from typing import Any

from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS = ("text", "json")

_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "videojobs_log_fields", default=None
)


def _bound() -> dict[str, Any]:
    return _fields.get() or {}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attaches `fields` (None values are left out) to every line logged
    inside, on top of the fields already bound."""
    token = _fields.set({**_bound(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _fields.reset(token)


def bind_log_fields(**fields: Any) -> None:
    """Adds `fields` to the current context for the rest of this task (use
    inside a task of its own, or inside `log_context`)."""
    _fields.set({**_bound(), **{k: v for k, v in fields.items() if v is not None}})


def current_log_fields() -> dict[str, Any]:
    """The fields bound here."""
    return dict(_bound())


class _ContextFields(logging.Filter):
    """Copies the bound fields onto each record (as attributes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _bound()
        record.context_fields = bound
        for key, value in bound.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class _TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        bound = getattr(record, "context_fields", {})
        if not bound:
            return line
        suffix = " ".join(f"{key}={value}" for key, value in bound.items())
        first, newline, rest = line.partition("\n")
        return f"{first} [{suffix}]{newline}{rest}"


def setup_logging(level: str, log_format: str = "text") -> None:
    """Log lines on stderr, plain or JSON, at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFields())
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                reserved_attrs=[*_RESERVED, "context_fields"],
            )
        )
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())


# LogRecord's own attributes: not copied into a JSON line as extra fields.
_RESERVED = [
    "args",
    "asctime",
    "created",
    "exc_info",
    "exc_text",
    "filename",
    "funcName",
    "levelname",
    "levelno",
    "lineno",
    "module",
    "msecs",
    "message",
    "msg",
    "name",
    "pathname",
    "process",
    "processName",
    "relativeCreated",
    "stack_info",
    "taskName",
    "thread",
    "threadName",
]
