"""Bounds on an upload header, checked before anything else looks at it.

Every string and structure a client sends is an allocation and may later be
printed, stored or echoed: each is bounded here, and a violation echoes at
most a short prefix of what it refuses (`videojobs.common.text.echo`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from videojobs.common.text import echo, has_unsafe_chars
from videojobs.jobservice.limits import (
    MAX_FILE_NAME_BYTES,
    MAX_PARAMETER_DEPTH,
    MAX_PARAMETER_KEY_CHARS,
    MAX_PARAMETER_STRING_CHARS,
    MAX_PARAMETERS_BYTES,
    MAX_PIPELINE_NAME_CHARS,
    MAX_PIPELINES_PER_JOB,
)

# Pipeline names: what entry-point names and the built-ins use.
PIPELINE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
Violations = list[tuple[str, str]]


def check_file_name(name: str) -> Violations:
    """A display name: a base name of bounded size with nothing a terminal
    would interpret (controls, bidi overrides, zero-width characters)."""
    field = "header.file_name"
    if not name:
        return [(field, "is required")]
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        return [(field, f"at most {MAX_FILE_NAME_BYTES} bytes of UTF-8")]
    if "/" in name or "\\" in name or name in (".", ".."):
        return [(field, "must be a base name, without '/' or '\\'")]
    if has_unsafe_chars(name):
        return [
            (
                field,
                "must not contain control, bidirectional-override or invisible characters",
            )
        ]
    return []


def check_pipeline_names(names: list[str], field: str) -> Violations:
    """At most MAX_PIPELINES_PER_JOB names, each a plausible pipeline name
    (whether it is installed is the catalogue's question, asked afterwards)."""
    if len(names) > MAX_PIPELINES_PER_JOB:
        return [(field, f"at most {MAX_PIPELINES_PER_JOB} pipelines per job")]
    violations = []
    for name in names:
        if not PIPELINE_NAME.fullmatch(name):
            violations.append(
                (
                    field,
                    f"pipeline name {echo(name)} is not a pipeline name "
                    f"(1 to {MAX_PIPELINE_NAME_CHARS} characters from [A-Za-z0-9_.-])",
                )
            )
    return violations


def check_parameters_shape(parameters: dict[str, Any], field: str) -> Violations:
    """Size, depth, key and string bounds of the parameters, before any
    pipeline interprets them."""
    try:
        encoded = json.dumps(parameters, ensure_ascii=False, separators=(",", ":"))
    except (ValueError, RecursionError):
        return [(field, "must be a JSON object of bounded depth")]
    if len(encoded.encode("utf-8", "surrogatepass")) > MAX_PARAMETERS_BYTES:
        return [(field, f"at most {MAX_PARAMETERS_BYTES} bytes (as JSON)")]
    violations: Violations = []
    _walk(parameters, field, 1, violations)
    return violations


def _walk(value: Any, path: str, depth: int, violations: Violations) -> None:
    if isinstance(value, dict):
        if depth > MAX_PARAMETER_DEPTH:
            violations.append((path, f"objects may nest at most {MAX_PARAMETER_DEPTH} deep"))
            return
        for key, item in value.items():
            if len(key) > MAX_PARAMETER_KEY_CHARS or not key or has_unsafe_chars(key):
                violations.append(
                    (
                        path,
                        f"parameter name {echo(key)} must be 1 to {MAX_PARAMETER_KEY_CHARS} "
                        "characters without control or invisible characters",
                    )
                )
                continue
            _walk(item, f"{path}.{key}", depth + 1, violations)
    elif isinstance(value, list):
        if depth > MAX_PARAMETER_DEPTH:
            violations.append((path, f"lists may nest at most {MAX_PARAMETER_DEPTH} deep"))
            return
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]", depth + 1, violations)
    elif isinstance(value, str) and len(value) > MAX_PARAMETER_STRING_CHARS:
        violations.append((path, f"at most {MAX_PARAMETER_STRING_CHARS} characters"))
