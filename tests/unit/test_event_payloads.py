"""Typed job event payloads and their stored JSON
(`videojobs.jobservice.event_payloads`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from videojobs.jobservice.domain import Artifact, EventKind, JobError, JobState
from videojobs.jobservice.event_payloads import (
    Cancelled,
    Completed,
    EventPayload,
    Failed,
    PartialResult,
    Progress,
    StateChanged,
    decode,
    encode,
)
from videojobs.storage import StorageKey
from videojobs.storage.keys import InvalidStorageKey

PREFIX = StorageKey("jobs/0123456789abcdef0123456789abcdef/attempts/2")
ARTIFACTS = (
    Artifact(PREFIX.child("thumb-0.jpg"), "image/jpeg", 2048, 320, 240, 0.5, 0, 12),
    Artifact(PREFIX.child("scenes.csv"), "text/csv", 99),
)

PAYLOADS: list[EventPayload] = [
    StateChanged(None, JobState.QUEUED, "accepted"),
    StateChanged(JobState.QUEUED, JobState.RUNNING, "assigned to worker w-1"),
    StateChanged(JobState.RUNNING, JobState.QUEUED, ""),
    Progress(0.375, "ocr"),
    Progress(1.0),
    PartialResult("ocr", {"text": "héllo", "boxes": [[1, 2, 3, 4]], "score": 0.5}),
    PartialResult("scenes", {}),
    Completed(
        PREFIX.child("result.json"),
        ARTIFACTS,
        {"frames": 50, "pipelines": {"ocr": {"words": 3}}},
        ("low light", "audio dropped"),
    ),
    Completed(PREFIX.child("result.json")),
    Failed(JobError("INTERNAL", "decoder crashed", "PIPELINE_FAILED", {"frame": "12"})),
    Failed(JobError("DEADLINE_EXCEEDED", "too slow", "EXECUTION_TIMEOUT")),
    Cancelled("client asked"),
    Cancelled(),
]

KINDS = {
    StateChanged: EventKind.STATE_CHANGED,
    Progress: EventKind.PROGRESS,
    PartialResult: EventKind.PARTIAL_RESULT,
    Completed: EventKind.COMPLETED,
    Failed: EventKind.FAILED,
    Cancelled: EventKind.CANCELLED,
}


def stored(payload: EventPayload) -> dict[str, Any]:
    """What a JSON column gives back for `payload`."""
    return json.loads(json.dumps(encode(payload)))


def test_every_kind_is_covered() -> None:
    assert {type(p) for p in PAYLOADS} == set(KINDS)
    assert set(KINDS.values()) == set(EventKind)


@pytest.mark.parametrize("payload", PAYLOADS, ids=repr)
def test_round_trip(payload: EventPayload) -> None:
    assert payload.kind is KINDS[type(payload)]
    assert decode(payload.kind, stored(payload)) == payload


def test_stored_shapes_match_what_earlier_versions_wrote() -> None:
    """The JSON written now is the JSON the repository wrote before the
    payloads were typed, so readers of either keep working."""
    assert encode(StateChanged(None, JobState.QUEUED, "accepted")) == {
        "from_state": "",
        "to_state": "QUEUED",
        "reason": "accepted",
    }
    assert encode(Progress(0.5, "ocr")) == {"fraction": 0.5, "stage": "ocr"}
    assert encode(PartialResult("ocr", {"a": 1})) == {"pipeline": "ocr", "data": {"a": 1}}
    assert encode(Completed(PREFIX.child("r.json"), ARTIFACTS[:1], {"n": 1}, ("w",))) == {
        "output_key": PREFIX.child("r.json").value,
        "artifacts": [
            {
                "key": PREFIX.child("thumb-0.jpg").value,
                "media_type": "image/jpeg",
                "size_bytes": 2048,
                "width": 320,
                "height": 240,
                "time_seconds": 0.5,
                "index": 0,
                "frame_index": 12,
            }
        ],
        "summary": {"n": 1},
        "warnings": ["w"],
    }
    assert encode(Failed(JobError("INTERNAL", "m", "R", {"k": "v"}))) == {
        "code": "INTERNAL",
        "message": "m",
        "reason": "R",
        "metadata": {"k": "v"},
    }
    assert encode(Cancelled("why")) == {"reason": "why"}


@pytest.mark.parametrize(
    ("kind", "data", "expected"),
    [
        (
            EventKind.STATE_CHANGED,
            {"from_state": "", "to_state": "QUEUED", "reason": "accepted"},
            StateChanged(None, JobState.QUEUED, "accepted"),
        ),
        (EventKind.STATE_CHANGED, {"to_state": "FAILED"}, StateChanged(None, JobState.FAILED)),
        (
            EventKind.STATE_CHANGED,
            {"from_state": None, "to_state": "QUEUED"},
            StateChanged(None, JobState.QUEUED),
        ),
        (EventKind.PROGRESS, {"fraction": 1}, Progress(1.0, "")),
        (EventKind.PARTIAL_RESULT, {"pipeline": "ocr"}, PartialResult("ocr", {})),
        (EventKind.PARTIAL_RESULT, {"pipeline": "ocr", "data": None}, PartialResult("ocr", {})),
        (
            EventKind.COMPLETED,
            {"output_key": PREFIX.child("r.json").value},
            Completed(PREFIX.child("r.json"), (), {}, ()),
        ),
        (
            EventKind.COMPLETED,
            {
                "output_key": PREFIX.child("r.json").value,
                "artifacts": [{"key": PREFIX.child("a.jpg").value, "size_bytes": 5}],
                "summary": None,
                "warnings": None,
            },
            Completed(PREFIX.child("r.json"), (Artifact(PREFIX.child("a.jpg"), "", 5),), {}, ()),
        ),
        (
            EventKind.FAILED,
            {"code": "UNKNOWN", "message": "legacy"},
            Failed(JobError("UNKNOWN", "legacy", "", {})),
        ),
        (
            EventKind.FAILED,
            {"code": "INTERNAL", "message": "m", "reason": "R", "metadata": None},
            Failed(JobError("INTERNAL", "m", "R", {})),
        ),
        (EventKind.CANCELLED, {}, Cancelled("")),
        (EventKind.CANCELLED, None, Cancelled("")),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_older_shapes_with_missing_optional_keys(
    kind: EventKind, data: dict[str, Any] | None, expected: EventPayload
) -> None:
    assert decode(kind, data) == expected


def test_decode_accepts_the_kind_as_stored_text() -> None:
    """Rows hold the kind as text; EventKind values compare equal to it."""
    assert decode(EventKind("cancelled"), {"reason": "x"}) == Cancelled("x")


def test_required_keys_and_bad_values_are_refused() -> None:
    with pytest.raises(KeyError):
        decode(EventKind.STATE_CHANGED, {"from_state": "QUEUED"})
    with pytest.raises(ValueError):
        decode(EventKind.STATE_CHANGED, {"from_state": "PAUSED", "to_state": "QUEUED"})
    with pytest.raises(KeyError):
        decode(EventKind.FAILED, {"message": "no code"})
    with pytest.raises(InvalidStorageKey):
        decode(EventKind.COMPLETED, {"output_key": "../../etc/passwd"})


def test_unknown_kinds_and_payloads_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown event kind"):
        decode("paused", {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not an event payload"):
        encode({"reason": "x"})  # type: ignore[arg-type]
