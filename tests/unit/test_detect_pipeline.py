"""The `detect` pipeline on real encoded videos of QR codes drawn at known
places: every sample finds and decodes them, boxes sit where the codes were
drawn, and track ids follow each code (one id while it moves, a new id after a
long absence, different ids for different codes). The IoU tracker is also
tested on its own, without video.

Faces and people: there is no test footage of real faces or people, so their
detectors are only checked for shape and for staying quiet on a plain frame
with a QR code (no false positives), never for finding anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from videojobs.pipelines.base import ParameterError, PipelineFailure
from videojobs.pipelines.detect import CLASSES, PIPELINE, SPEC, parse_classes
from videojobs.pipelines.frames import (
    SAMPLING_SPEC,
    AnalysisContext,
    SamplingReport,
    open_media,
    sample_frames,
    video_info,
)
from videojobs.pipelines.tracking import Detection, IoUTracker, iou
from videojobs.stack.sample_video import write_frames
from videojobs.storage import StorageKey
from videojobs.storage.local import LocalBlobStore

WIDTH, HEIGHT, FPS = 640, 360, 25
BACKGROUND = (90, 120, 150)  # BGR, a plain muted colour
# Box edges may differ from the drawn code by this much (H.264 blurs edges).
TOLERANCE_PX = 3
FINDING_KEYS = {"class", "confidence", "box", "track_id"}
TRACK_KEYS = {
    "track_id",
    "class",
    "start_time",
    "end_time",
    "start_frame",
    "end_frame",
    "samples",
    "best_confidence",
    "first_box",
    "last_box",
}


class Code:
    """A QR code picture (gray, white quiet zone) and where its dark modules
    lie inside it."""

    def __init__(self, payload: str, module_px: int = 4) -> None:
        modules = cv2.QRCodeEncoder.create().encode(payload)
        # The encoder leaves a 2-module margin; the standard asks for 4.
        modules = cv2.copyMakeBorder(modules, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=255)
        self.payload = payload
        self.image = cv2.resize(
            modules, None, fx=module_px, fy=module_px, interpolation=cv2.INTER_NEAREST
        )
        ys, xs = np.nonzero(self.image == 0)
        # The code proper: from the first to one past the last dark pixel.
        self.left, self.top = int(xs.min()), int(ys.min())
        self.size = int(xs.max()) + 1 - self.left
        assert self.size == int(ys.max()) + 1 - self.top

    def draw(self, frame: np.ndarray, x: int, y: int) -> tuple[int, int, int, int]:
        """Pastes the picture with its top-left corner at (x, y); returns
        the code's own box (x, y, width, height) in the frame."""
        h, w = self.image.shape
        frame[y : y + h, x : x + w] = self.image[:, :, None]
        return (x + self.left, y + self.top, self.size, self.size)


def blank() -> np.ndarray:
    frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    frame[:] = BACKGROUND
    return frame


def run_detect(
    path: Path, tmp_path: Path, parameters: dict[str, Any] | None = None, **sampling: Any
):
    """Decodes `path` for real and feeds every sample to a fresh analyzer;
    returns ([(frame index, time, findings)] for every sample, result)."""
    samples = []
    store = LocalBlobStore(tmp_path / "store")
    with open(path, "rb") as source, open_media(source) as container:
        stream, info = video_info(container)
        context = AnalysisContext(
            store=store, output_prefix=StorageKey("jobs/j1/detect"), video=info
        )
        analyzer = PIPELINE.analyzer(SPEC.validate(parameters or {}), context)
        for frame in sample_frames(
            container, stream, SAMPLING_SPEC.validate(sampling), SamplingReport()
        ):
            found = analyzer.process(frame)
            json.dumps(found)
            samples.append((frame.index, frame.time, found))
    result = analyzer.finish()
    json.dumps(result.section)
    json.dumps(result.summary)
    assert result.artifacts == []
    return samples, result


def assert_box_near(box: dict, drawn: tuple[int, int, int, int], tolerance: int) -> None:
    x, y, w, h = drawn
    found = (box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"])
    expected = (x, y, x + w, y + h)
    assert all(abs(a - b) <= tolerance for a, b in zip(found, expected, strict=True)), (
        f"box {found} is not within {tolerance} px of the drawn code {expected}"
    )


def box_tuple(box: dict) -> tuple[int, int, int, int]:
    return (box["x"], box["y"], box["width"], box["height"])


# --- the pipeline on video ------------------------------------------------


def test_moving_code_is_found_and_decoded_in_every_frame_under_one_track(tmp_path) -> None:
    """A code moving 8 px right and 3 px down per frame: every one of the 30
    samples holds exactly that code, decoded, its box on the drawn code, and
    the same track id; the section's track spans the whole video."""
    code = Code("videojobs/detect:moving")
    drawn, frames = [], []
    for i in range(30):
        frame = blank()
        drawn.append(code.draw(frame, 20 + 8 * i, 40 + 3 * i))
        frames.append(frame)
    path = tmp_path / "moving.mp4"
    write_frames(path, frames, fps=FPS)

    samples, result = run_detect(path, tmp_path, {"classes": "qr_code"})

    assert [index for index, _, _ in samples] == list(range(30))
    track_ids = set()
    for index, _, findings in samples:
        assert len(findings) == 1, f"frame {index}: {findings}"
        finding = findings[0]
        assert set(finding) == FINDING_KEYS | {"payload"}
        assert finding["class"] == "qr_code"
        assert finding["payload"] == code.payload
        assert finding["confidence"] == 1.0
        assert_box_near(finding["box"], drawn[index], TOLERANCE_PX)
        track_ids.add(finding["track_id"])
    assert track_ids == {1}

    (track,) = result.section["tracks"]
    assert set(track) == TRACK_KEYS | {"payload"}
    assert track["track_id"] == 1
    assert track["class"] == "qr_code"
    assert track["payload"] == code.payload
    assert (track["start_frame"], track["end_frame"], track["samples"]) == (0, 29, 30)
    assert track["start_time"] == pytest.approx(0.0)
    assert track["end_time"] == pytest.approx(29 / FPS)
    assert track["best_confidence"] == 1.0
    assert track["first_box"] == samples[0][2][0]["box"]
    assert track["last_box"] == samples[-1][2][0]["box"]
    assert_box_near(track["last_box"], drawn[29], TOLERANCE_PX)
    assert result.summary == {"objects": 1, "by_class": {"qr_code": 1}}
    assert set(result.section["classes"]) == {"qr_code"}


def test_code_jumping_far_between_samples_keeps_its_track_by_payload(tmp_path) -> None:
    """A code drawn at spots far apart (boxes do not even overlap from one
    sample to the next) keeps one track because its payload stays the same."""
    code = Code("jumper")
    spots = [(10, 10), (400, 150), (30, 190), (420, 20), (200, 100), (10, 10)]
    drawn, frames = [], []
    for x, y in spots:
        frame = blank()
        drawn.append(code.draw(frame, x, y))
        frames.append(frame)
    assert all(iou(a, b) == 0.0 for a, b in zip(drawn, drawn[1:], strict=False))
    path = tmp_path / "jumps.mp4"
    write_frames(path, frames, fps=FPS)

    samples, result = run_detect(path, tmp_path, {"classes": "qr_code"})

    for index, _, findings in samples:
        assert [f["payload"] for f in findings] == ["jumper"]
        assert findings[0]["track_id"] == 1
        assert_box_near(findings[0]["box"], drawn[index], TOLERANCE_PX)
    assert len(result.section["tracks"]) == 1
    assert result.section["tracks"][0]["samples"] == len(spots)


def test_two_codes_at_once_get_two_tracks(tmp_path) -> None:
    """Two codes with different payloads moving in opposite directions: both
    found in every sample, each with its own id that never changes."""
    top, bottom = Code("first code"), Code("second code")
    drawn, frames = [], []
    for i in range(20):
        frame = blank()
        a = top.draw(frame, 20 + 10 * i, 10)
        b = bottom.draw(frame, 460 - 10 * i, 190)
        drawn.append({top.payload: a, bottom.payload: b})
        frames.append(frame)
    path = tmp_path / "two.mp4"
    write_frames(path, frames, fps=FPS)

    samples, result = run_detect(path, tmp_path, {"classes": "qr_code"})

    ids_by_payload: dict[str, set[int]] = {top.payload: set(), bottom.payload: set()}
    for index, _, findings in samples:
        assert sorted(f["payload"] for f in findings) == [top.payload, bottom.payload]
        for finding in findings:
            ids_by_payload[finding["payload"]].add(finding["track_id"])
            assert_box_near(finding["box"], drawn[index][finding["payload"]], TOLERANCE_PX)
    assert ids_by_payload == {top.payload: {1}, bottom.payload: {2}} or ids_by_payload == {
        top.payload: {2},
        bottom.payload: {1},
    }
    tracks = result.section["tracks"]
    assert [t["track_id"] for t in tracks] == [1, 2]
    assert {t["payload"] for t in tracks} == {top.payload, bottom.payload}
    assert all(t["samples"] == 20 for t in tracks)
    assert result.summary == {"objects": 2, "by_class": {"qr_code": 2}}


@pytest.fixture(scope="module")
def gap_video(tmp_path_factory) -> Path:
    """A code in frames 0-9 and 45-54 (same place), absent in 10-44: seen last
    at 0.36 s, again at 1.80 s, a gap of 1.44 s."""
    code = Code("comes back")
    frames = []
    for i in range(55):
        frame = blank()
        if i < 10 or i >= 45:
            code.draw(frame, 200, 100)
        frames.append(frame)
    path = tmp_path_factory.mktemp("detect") / "gap.mp4"
    write_frames(path, frames, fps=FPS)
    return path


def test_code_gone_longer_than_max_missed_seconds_gets_a_new_track(gap_video, tmp_path) -> None:
    samples, result = run_detect(
        gap_video, tmp_path, {"classes": "qr_code", "max_missed_seconds": 1.0}
    )

    ids = {index: [f["track_id"] for f in findings] for index, _, findings in samples}
    assert all(ids[i] == [1] for i in range(10))
    assert all(ids[i] == [] for i in range(10, 45))
    assert all(ids[i] == [2] for i in range(45, 55))
    first, second = result.section["tracks"]
    assert (first["start_frame"], first["end_frame"], first["samples"]) == (0, 9, 10)
    assert (second["start_frame"], second["end_frame"], second["samples"]) == (45, 54, 10)
    assert first["payload"] == second["payload"] == "comes back"
    assert second["start_time"] == pytest.approx(45 / FPS)
    assert result.summary == {"objects": 2, "by_class": {"qr_code": 2}}


def test_code_gone_shorter_than_max_missed_seconds_keeps_its_track(gap_video, tmp_path) -> None:
    """The same video with a longer allowance: one track across the gap."""
    samples, result = run_detect(
        gap_video, tmp_path, {"classes": "qr_code", "max_missed_seconds": 2.0}
    )

    assert {f["track_id"] for _, _, findings in samples for f in findings} == {1}
    (track,) = result.section["tracks"]
    assert (track["start_frame"], track["end_frame"], track["samples"]) == (0, 54, 20)


def test_downscaled_detection_reports_boxes_in_frame_pixels(tmp_path) -> None:
    """With max_side 320 the 640x360 frames are analysed at half size, yet the
    boxes come back in frame pixels, on the drawn code."""
    code = Code("half size", module_px=6)
    drawn, frames = [], []
    for i in range(6):
        frame = blank()
        drawn.append(code.draw(frame, 60 + 40 * i, 30 + 10 * i))
        frames.append(frame)
    path = tmp_path / "scaled.mp4"
    write_frames(path, frames, fps=FPS)

    samples, _ = run_detect(path, tmp_path, {"classes": "qr_code", "max_side": 320})

    for index, _, findings in samples:
        assert [f["payload"] for f in findings] == ["half size"]
        # One detection pixel is two frame pixels.
        assert_box_near(findings[0]["box"], drawn[index], 2 * TOLERANCE_PX)


@pytest.fixture(scope="module")
def plain_with_code(tmp_path_factory) -> Path:
    """Six plain frames with one still QR code and nothing else."""
    code = Code("no people here")
    frames = []
    for _ in range(6):
        frame = blank()
        code.draw(frame, 250, 90)
        frames.append(frame)
    path = tmp_path_factory.mktemp("detect") / "plain.mp4"
    write_frames(path, frames, fps=FPS)
    return path


def test_class_filter_face_reports_no_qr_codes(plain_with_code, tmp_path) -> None:
    """classes="face" on frames that hold a QR code (and no face): nothing."""
    samples, result = run_detect(plain_with_code, tmp_path, {"classes": "face"})

    assert len(samples) == 6
    assert all(findings == [] for _, _, findings in samples)
    assert result.section["tracks"] == []
    assert set(result.section["classes"]) == {"face"}
    assert result.summary == {"objects": 0, "by_class": {"face": 0}}


def test_all_classes_find_only_the_code_on_a_plain_frame(plain_with_code, tmp_path) -> None:
    """Default classes on a plain frame with one code: the code, and no face or
    person (even with min_confidence 0); the section describes every class."""
    samples, result = run_detect(plain_with_code, tmp_path, {"min_confidence": 0.0})

    for _, _, findings in samples:
        assert [(f["class"], f["payload"], f["track_id"]) for f in findings] == [
            ("qr_code", "no people here", 1)
        ]
        box = findings[0]["box"]
        assert set(box) == {"x", "y", "width", "height"}
        assert all(type(v) is int for v in box.values())
        assert type(findings[0]["confidence"]) is float
    assert result.summary == {"objects": 1, "by_class": {"qr_code": 1, "face": 0, "person": 0}}
    notes = result.section["classes"]
    assert list(notes) == list(CLASSES)
    for note in notes.values():
        assert set(note) == {"detector", "confidence", "reliability", "note"}
        assert note["reliability"] in {"high", "moderate", "low"}


# --- parameters -------------------------------------------------------------


def test_classes_parameter_is_checked_at_validation() -> None:
    assert SPEC.validate({})["classes"] == "qr_code,face,person"
    assert parse_classes(" Person, qr_code ,") == ("qr_code", "person")
    with pytest.raises(ParameterError) as caught:
        SPEC.validate({"classes": "qr_code,cars", "min_confidence": 2})
    fields = {f for f, _ in caught.value.violations}
    assert fields == {"parameters.classes", "parameters.min_confidence"}
    with pytest.raises(ParameterError):
        SPEC.validate({"classes": " , "})


def test_analyzer_refuses_unknown_classes(tmp_path) -> None:
    parameters = SPEC.validate({})
    parameters["classes"] = "dogs"  # as if validation had been skipped
    context = AnalysisContext(
        store=LocalBlobStore(tmp_path), output_prefix=StorageKey("jobs/j/detect"), video=None
    )
    with pytest.raises(PipelineFailure) as caught:
        PIPELINE.analyzer(parameters, context)
    assert caught.value.reason == "INVALID_PARAMETER"


# --- the tracker alone --------------------------------------------------------


def qr(box, payload="", confidence=1.0) -> Detection:
    return Detection("qr_code", box, confidence, payload)


def face(box, confidence=0.8) -> Detection:
    return Detection("face", box, confidence)


def test_tracker_keeps_ids_across_small_moves() -> None:
    tracker = IoUTracker(iou_threshold=0.3, max_missed_seconds=1.0)
    ids = [
        tracker.update(
            i * 0.04, i, [face((100 + 5 * i, 50, 60, 60)), face((400, 200 - 4 * i, 50, 50))]
        )
        for i in range(10)
    ]
    assert ids == [[1, 2]] * 10
    first, second = tracker.tracks
    assert (first.samples, first.start_frame, first.end_frame) == (10, 0, 9)
    assert first.first_box == (100, 50, 60, 60)
    assert first.last_box == (145, 50, 60, 60)
    assert second.last_box == (400, 164, 50, 50)


def test_tracker_needs_iou_above_threshold() -> None:
    tracker = IoUTracker(iou_threshold=0.5, max_missed_seconds=1.0)
    assert tracker.update(0.0, 0, [face((0, 0, 100, 100))]) == [1]
    # Shift 30 px: IoU 70/130 = 0.54 >= 0.5, same track.
    assert tracker.update(0.04, 1, [face((30, 0, 100, 100))]) == [1]
    # Shift 40 px more: IoU 60/140 = 0.43 < 0.5, a new track.
    assert tracker.update(0.08, 2, [face((70, 0, 100, 100))]) == [2]


def test_tracker_matches_highest_iou_first() -> None:
    """Two tracks side by side, one detection overlapping both: it goes to
    the one it overlaps more; the other detection, overlapping only the
    first track less, then starts a new track rather than stealing it."""
    tracker = IoUTracker(iou_threshold=0.3, max_missed_seconds=1.0)
    assert tracker.update(0.0, 0, [face((0, 0, 100, 100)), face((60, 0, 100, 100))]) == [1, 2]
    near_second = face((55, 0, 100, 100))  # IoU 0.9 with track 2, 0.29 with track 1
    near_first = face((-40, 0, 100, 100))  # IoU 0.43 with track 1
    assert tracker.update(0.04, 1, [near_first, near_second]) == [1, 2]
    tracker2 = IoUTracker(iou_threshold=0.3, max_missed_seconds=1.0)
    tracker2.update(0.0, 0, [face((0, 0, 100, 100))])
    # Both overlap track 1; the better overlap (IoU 0.82 over 0.54) wins it.
    assert tracker2.update(0.04, 1, [face((30, 0, 100, 100)), face((10, 0, 100, 100))]) == [2, 1]


def test_tracker_keeps_classes_apart() -> None:
    tracker = IoUTracker(iou_threshold=0.3, max_missed_seconds=1.0)
    assert tracker.update(0.0, 0, [face((10, 10, 80, 80))]) == [1]
    person = Detection("person", (10, 10, 80, 80), 0.7)
    assert tracker.update(0.04, 1, [person, face((12, 10, 80, 80))]) == [2, 1]
    assert {t.cls for t in tracker.tracks} == {"face", "person"}


def test_tracker_qr_payloads() -> None:
    """Same payload matches whatever the distance; a different payload never
    matches, however close; an undecoded code matches by IoU and teaches the
    track its payload once decoded."""
    tracker = IoUTracker(iou_threshold=0.3, max_missed_seconds=1.0)
    assert tracker.update(0.0, 0, [qr((0, 0, 80, 80), "A")]) == [1]
    assert tracker.update(0.04, 1, [qr((500, 250, 80, 80), "A")]) == [1]
    assert tracker.update(0.08, 2, [qr((500, 250, 80, 80), "B")]) == [2]
    assert tracker.update(0.12, 3, [qr((100, 100, 80, 80), "")]) == [3]
    assert tracker.update(0.16, 4, [qr((104, 100, 80, 80), "C")]) == [3]
    assert tracker.update(0.20, 5, [qr((300, 10, 80, 80), "C")]) == [3]
    assert [t.payload for t in tracker.tracks] == ["A", "B", "C"]
    section = [t.to_dict() for t in tracker.tracks]
    assert section[2]["payload"] == "C"
    assert section[2]["first_box"] == {"x": 100, "y": 100, "width": 80, "height": 80}


def test_tracker_max_missed_seconds() -> None:
    tracker = IoUTracker(iou_threshold=0.3, max_missed_seconds=0.5)
    assert tracker.update(0.0, 0, [face((0, 0, 50, 50))]) == [1]
    assert tracker.update(0.5, 12, [face((0, 0, 50, 50))]) == [1]  # gap exactly 0.5
    assert tracker.update(1.04, 26, [face((0, 0, 50, 50))]) == [2]  # gap 0.54
    one, two = tracker.tracks
    assert (one.start_time, one.end_time, one.samples) == (0.0, 0.5, 2)
    assert (two.start_frame, two.end_frame) == (26, 26)
    face_track = two.to_dict()
    assert "payload" not in face_track
    assert set(face_track) == TRACK_KEYS
