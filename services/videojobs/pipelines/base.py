"""The pipeline interface: a declared spec with typed parameters, and a run
function that reads the input, reports progress and partial results, and
returns the result document."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, Protocol

ParameterType = Literal["int", "float", "bool", "string"]


class ParameterError(ValueError):
    """Parameters failed validation; `violations` pairs a field path with what is wrong."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))
        self.violations = violations


_JSON_SCHEMA_TYPES = {"bool": "boolean", "string": "string", "int": "integer", "float": "number"}


@dataclass(frozen=True)
class ParameterSpec:
    """One typed pipeline parameter."""

    name: str
    type: ParameterType
    description: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    # A rule the type cannot state (one of a set, a list of known names):
    # called with the typed value, raises ValueError saying what is wrong.
    check: Callable[[Any], object] | None = None

    def json_schema(self) -> dict[str, Any]:
        """This parameter as a JSON Schema property: type, limits, default,
        description."""
        schema: dict[str, Any] = {
            "type": _JSON_SCHEMA_TYPES[self.type],
            "description": self.description,
        }
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.default is not None:
            schema["default"] = self.default
        return schema

    def coerce(self, value: Any) -> Any:
        """Returns `value` as this parameter's type, checked; or raises ValueError."""
        typed = self._typed(value)
        if self.check is not None:
            self.check(typed)
        return typed

    def _typed(self, value: Any) -> Any:
        """Returns `value` as this parameter's type, or raises ValueError saying why not.

        Parameters travel as JSON (google.protobuf.Struct), where every number
        is a double: an integral double is accepted for an int parameter.
        """
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError("must be a boolean")
        if self.type == "string":
            if isinstance(value, str):
                return value
            raise ValueError("must be a string")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number ({self.type})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        if self.type == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("must be an integer")
            value = int(value)
        else:
            value = float(value)
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"must be at most {self.maximum:g}")
        return value


@dataclass(frozen=True)
class PipelineSpec:
    """What a pipeline is called, its version, and the parameters it accepts."""

    name: str
    version: str
    description: str
    parameters: tuple[ParameterSpec, ...] = field(default_factory=tuple)
    # Longest run of one attempt unless a job says otherwise at submit.
    default_execution_timeout_seconds: float = 600.0
    # Whether the pipeline analyses sampled frames (it has an `analyzer`)
    # rather than the container (it has a `run`). Declared, job-service plans
    # a job (the shared sampling parameters) from the spec alone; None (the
    # default, e.g. third-party pipelines) makes the catalogue load the
    # implementation to find out (`is_frame_pipeline`).
    analyses_frames: bool | None = None

    def parameters_schema(self) -> dict[str, Any]:
        """The JSON Schema of this pipeline's parameters object."""
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"{self.name} parameters",
            "type": "object",
            "properties": {p.name: p.json_schema() for p in self.parameters},
            "additionalProperties": False,
        }

    def validate(self, given: Mapping[str, Any], field_prefix: str = "parameters") -> dict:
        """Returns the full parameter set (defaults filled in), or raises ParameterError
        listing every problem, each under `field_prefix.name`."""
        known = {p.name: p for p in self.parameters}
        violations: list[tuple[str, str]] = []
        clean: dict[str, Any] = {}
        for name in sorted(given):
            if name not in known:
                accepted = ", ".join(sorted(known)) or "none"
                violations.append(
                    (f"{field_prefix}.{name}", f"unknown parameter (accepted: {accepted})")
                )
        for spec in self.parameters:
            if spec.name in given:
                try:
                    clean[spec.name] = spec.coerce(given[spec.name])
                except ValueError as exc:
                    violations.append((f"{field_prefix}.{spec.name}", str(exc)))
            else:
                clean[spec.name] = spec.default
        if violations:
            raise ParameterError(violations)
        return clean


class PipelineReporter(Protocol):
    """Where a running pipeline sends what it learns as it goes."""

    def progress(self, fraction: float, stage: str) -> None:
        """Fraction of the work done (0..1, never decreasing) and the stage name."""

    def partial_result(self, data: dict) -> None:
        """A piece of the result, JSON-shaped, sent before the job ends."""


@dataclass
class PipelineOutput:
    """What a successful run returns: the full result document and a small summary."""

    result: dict
    summary: dict


class PipelineFailure(Exception):
    """A run that cannot succeed, with a message fit for the client.

    `code` is a canonical gRPC status code name, `reason` an UPPER_SNAKE
    ErrorInfo reason, and `retryable` tells job-service whether another attempt
    could succeed (a file that does not decode: never).
    """

    def __init__(
        self, message: str, *, code: str = "INVALID_ARGUMENT", reason: str, retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.retryable = retryable


class Pipeline(Protocol):
    """A runnable pipeline."""

    spec: PipelineSpec

    def run(self, source: BinaryIO, parameters: dict, reporter: PipelineReporter) -> PipelineOutput:
        """Analyses the seekable input `source`. Raises PipelineFailure for bad input."""


def is_frame_pipeline(pipeline: object) -> bool:
    """Whether the pipeline implementation `pipeline` analyses sampled frames
    (it has an `analyzer`) rather than the container."""
    return hasattr(pipeline, "analyzer")
