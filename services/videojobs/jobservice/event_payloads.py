"""Typed payloads of job events: written and read here, and nowhere else.

A job event is stored as a row (`job_events`: kind, job state, attempt) plus
a JSON payload. The lifecycle builds one of these dataclasses; `encode` turns
it into the stored JSON and `decode` reads it back (rows written by earlier
versions included), so the shape of each payload is defined once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from videojobs.jobservice.domain import Artifact, EventKind, JobError, JobState
from videojobs.storage import StorageKey


@dataclass(frozen=True)
class StateChanged:
    """The job moved from `from_state` (None: it was just accepted) to `to_state`."""

    from_state: JobState | None
    to_state: JobState
    reason: str = ""

    kind = EventKind.STATE_CHANGED


@dataclass(frozen=True)
class Progress:
    """How far the running attempt is (0..1) and in which stage."""

    fraction: float
    stage: str = ""

    kind = EventKind.PROGRESS


@dataclass(frozen=True)
class PartialResult:
    """A pipeline's intermediate finding."""

    pipeline: str
    data: dict[str, Any]

    kind = EventKind.PARTIAL_RESULT


@dataclass(frozen=True)
class Completed:
    """The job SUCCEEDED: where its result document and artifacts are."""

    output_key: StorageKey
    artifacts: tuple[Artifact, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    kind = EventKind.COMPLETED


@dataclass(frozen=True)
class Failed:
    """The job FAILED with `error`."""

    error: JobError

    kind = EventKind.FAILED


@dataclass(frozen=True)
class Cancelled:
    """The job was CANCELLED; `reason` is the caller's."""

    reason: str = ""

    kind = EventKind.CANCELLED


EventPayload = StateChanged | Progress | PartialResult | Completed | Failed | Cancelled


def encode(payload: EventPayload) -> dict[str, Any]:
    """The JSON stored for `payload`."""
    match payload:
        case StateChanged(from_state, to_state, reason):
            return {
                "from_state": from_state.value if from_state is not None else "",
                "to_state": to_state.value,
                "reason": reason,
            }
        case Progress(fraction, stage):
            return {"fraction": fraction, "stage": stage}
        case PartialResult(pipeline, data):
            return {"pipeline": pipeline, "data": data}
        case Completed(output_key, artifacts, summary, warnings):
            return {
                "output_key": output_key.value,
                "artifacts": [a.to_dict() for a in artifacts],
                "summary": summary,
                "warnings": list(warnings),
            }
        case Failed(error):
            return {
                "code": error.code,
                "message": error.message,
                "reason": error.reason,
                "metadata": dict(error.metadata),
            }
        case Cancelled(reason):
            return {"reason": reason}
    raise TypeError(f"not an event payload: {payload!r}")


def decode(kind: EventKind, stored: dict[str, Any] | None) -> EventPayload:
    """The payload of a stored event of `kind` (tolerates missing optional keys)."""
    data = stored or {}
    match kind:
        case EventKind.STATE_CHANGED:
            from_state = data.get("from_state") or None
            return StateChanged(
                JobState(from_state) if from_state else None,
                JobState(data["to_state"]),
                data.get("reason", ""),
            )
        case EventKind.PROGRESS:
            return Progress(float(data["fraction"]), data.get("stage", ""))
        case EventKind.PARTIAL_RESULT:
            return PartialResult(data["pipeline"], dict(data.get("data") or {}))
        case EventKind.COMPLETED:
            return Completed(
                StorageKey(data["output_key"]),
                tuple(Artifact.from_dict(a) for a in data.get("artifacts", [])),
                dict(data.get("summary") or {}),
                tuple(data.get("warnings") or ()),
            )
        case EventKind.FAILED:
            return Failed(
                JobError(
                    data["code"],
                    data.get("message", ""),
                    data.get("reason", ""),
                    dict(data.get("metadata") or {}),
                )
            )
        case EventKind.CANCELLED:
            return Cancelled(data.get("reason", ""))
    raise ValueError(f"unknown event kind {kind!r}")
