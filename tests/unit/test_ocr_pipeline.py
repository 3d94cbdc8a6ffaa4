"""The `ocr` pipeline on real videos with drawn text: the strings it reads,
the boxes, and the time spans of its text tracks come from what the test drew.

OCR costs about 0.1-0.5 s per 640x360 frame, so every test samples at most
~20 frames (frame_stride)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from videojobs.pipelines.base import ParameterError
from videojobs.pipelines.frames import (
    SAMPLING_SPEC,
    AnalysisContext,
    SamplingReport,
    SectionResult,
    open_media,
    sample_frames,
    video_info,
)
from videojobs.pipelines.ocr import PIPELINE, SPEC, box_iou, normalise_text
from videojobs.stack.sample_video import write_frames
from videojobs.storage import StorageKey
from videojobs.storage.local import LocalBlobStore

FONT = cv2.FONT_HERSHEY_SIMPLEX
WIDTH, HEIGHT = 640, 360
FPS = 10
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)

# Glyphs the recogniser legitimately confuses in this font: zero and the
# letter O, one / lower-case L and the letter I. Only these are mapped, and
# only in the comparison (never in the pipeline). Whitespace is dropped because
# the recogniser drops or keeps the gap between words from frame to frame.
CONFUSABLE = str.maketrans({"0": "O", "1": "I", "l": "I"})


def same_text(read: str, drawn: str) -> bool:
    """Whether the OCR reading spells the drawn string, up to the confusions above."""

    def canonical(text: str) -> str:
        return "".join(text.translate(CONFUSABLE).split()).upper()

    return canonical(read) == canonical(drawn)


def canvas(dark: bool = False, size: tuple[int, int] = (WIDTH, HEIGHT)) -> np.ndarray:
    """A plain frame: white, or dark grey for white-on-dark text."""
    width, height = size
    return np.full((height, width, 3), 30 if dark else 255, np.uint8)


def draw(
    image: np.ndarray, text: str, org: tuple[int, int], scale: float = 2.0, thickness: int = 5
) -> np.ndarray:
    """Draws `text` with its baseline starting at `org`, black on light, white on dark."""
    color = BLACK if image[0, 0, 0] > 128 else WHITE
    cv2.putText(image, text, org, FONT, scale, color, thickness, cv2.LINE_AA)
    return image


def ink_box(image: np.ndarray) -> dict[str, int]:
    """The bounding box of every pixel that differs clearly from the background."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.int16)
    ys, xs = np.nonzero(np.abs(gray - gray[0, 0]) > 100)
    return {
        "x": int(xs.min()),
        "y": int(ys.min()),
        "width": int(xs.max() - xs.min() + 1),
        "height": int(ys.max() - ys.min() + 1),
    }


def run_ocr(
    path: Path, tmp_path: Path, parameters: dict[str, Any] | None = None, **sampling: Any
) -> tuple[dict[int, tuple[float, list[dict]]], SectionResult]:
    """Decodes `path` for real and feeds every sampled frame to a fresh analyzer.
    Returns {frame index: (time, findings)} and the analyzer's section."""
    store = LocalBlobStore(tmp_path / "store")
    by_frame: dict[int, tuple[float, list[dict]]] = {}
    with open(path, "rb") as source, open_media(source) as container:
        stream, info = video_info(container)
        context = AnalysisContext(store=store, output_prefix=StorageKey("jobs/j1/ocr"), video=info)
        analyzer = PIPELINE.analyzer(SPEC.validate(parameters or {}), context)
        report = SamplingReport()
        for frame in sample_frames(container, stream, SAMPLING_SPEC.validate(sampling), report):
            by_frame[frame.index] = (frame.time, analyzer.process(frame))
    return by_frame, analyzer.finish()


def test_spec_defaults_and_bounds() -> None:
    assert SPEC.name == "ocr"
    assert SPEC.validate({}) == {"min_confidence": 0.5, "max_side": 960, "merge_gap_seconds": 1.0}
    with pytest.raises(ParameterError) as caught:
        SPEC.validate({"min_confidence": 1.5, "max_side": -1, "merge_gap_seconds": -0.5})
    assert {field for field, _ in caught.value.violations} == {
        "parameters.min_confidence",
        "parameters.max_side",
        "parameters.merge_gap_seconds",
    }


def test_normalise_text_folds_case_and_whitespace() -> None:
    assert normalise_text("Video  Jobs") == normalise_text("VIDEOJOBS") == "videojobs"
    assert normalise_text("HELLO 2026") != normalise_text("HELLO 2025")


def test_reads_two_texts_with_their_time_spans(tmp_path: Path) -> None:
    # "HELLO 2026" in frames 0-29, "VIDEO JOBS" in 40-69, blank otherwise; 10 fps.
    hello = draw(canvas(), "HELLO 2026", (60, 200))
    video_jobs = draw(canvas(), "VIDEO JOBS", (80, 120))
    blank = canvas()
    frames = [hello if i < 30 else video_jobs if 40 <= i < 70 else blank for i in range(80)]
    path = tmp_path / "two_texts.mp4"
    write_frames(path, frames, fps=FPS)

    stride = 4  # 20 samples, 0.4 s apart
    by_frame, result = run_ocr(path, tmp_path, frame_stride=stride)
    interval = stride / FPS

    assert sorted(by_frame) == list(range(0, 80, stride))
    for index, (_, findings) in by_frame.items():
        texts = [f["text"] for f in findings]
        if index < 30:
            assert len(texts) == 1 and same_text(texts[0], "HELLO 2026"), (index, texts)
        elif 40 <= index < 70:
            assert len(texts) == 1 and same_text(texts[0], "VIDEO JOBS"), (index, texts)
        else:
            assert texts == [], (index, texts)
        for finding in findings:
            assert set(finding) == {"text", "confidence", "box", "track"}
            assert 0.5 <= finding["confidence"] <= 1.0

    tracks = result.section["tracks"]
    assert result.section["engine"] == "rapidocr-onnxruntime"
    assert [t["id"] for t in tracks] == [0, 1]
    hello_track, jobs_track = tracks
    assert same_text(hello_track["text"], "HELLO 2026")
    assert same_text(jobs_track["text"], "VIDEO JOBS")
    # Drawn spans: 0.0-2.9 s and 4.0-6.9 s; samples fall every 0.4 s.
    assert hello_track["start_time"] == pytest.approx(0.0, abs=interval)
    assert hello_track["end_time"] == pytest.approx(2.9, abs=interval)
    assert jobs_track["start_time"] == pytest.approx(4.0, abs=interval)
    assert jobs_track["end_time"] == pytest.approx(6.9, abs=interval)
    assert (hello_track["start_frame"], hello_track["end_frame"]) == (0, 28)
    assert (jobs_track["start_frame"], jobs_track["end_frame"]) == (40, 68)
    assert hello_track["samples"] == jobs_track["samples"] == 8
    # The best confidence of the track is the best of its sightings.
    hello_confidences = [
        f["confidence"] for _, fs in by_frame.values() for f in fs if f["track"] == 0
    ]
    assert hello_track["confidence"] == max(hello_confidences)
    # Boxes sit on the drawn ink (the detector pads them a little).
    assert box_iou(hello_track["box"], ink_box(hello)) > 0.6
    assert box_iou(jobs_track["box"], ink_box(video_jobs)) > 0.6
    assert result.summary == {"text_tracks": 2, "frames_with_text": 16}
    assert result.artifacts == []
    json.dumps(result.section)  # JSON-shaped, as the result document needs


def test_moving_text_stays_one_track(tmp_path: Path) -> None:
    # White on dark, drifting 4 px right and 1 px down per frame for 3 s.
    frames = [draw(canvas(dark=True), "MOVING ON", (40 + 4 * i, 150 + i)) for i in range(30)]
    path = tmp_path / "moving.mp4"
    write_frames(path, frames, fps=FPS)

    by_frame, result = run_ocr(path, tmp_path, frame_stride=3)  # 10 samples

    tracks = result.section["tracks"]
    assert len(tracks) == 1, tracks
    track = tracks[0]
    assert same_text(track["text"], "MOVING ON")
    assert (track["start_frame"], track["end_frame"], track["samples"]) == (0, 27, 10)
    # The track keeps the box of its first appearance; each sighting has its own.
    assert box_iou(track["box"], ink_box(frames[0])) > 0.6
    last_findings = by_frame[27][1]
    assert len(last_findings) == 1
    assert box_iou(last_findings[0]["box"], ink_box(frames[27])) > 0.6
    moved = last_findings[0]["box"]["x"] - track["box"]["x"]
    assert moved == pytest.approx(4 * 27, abs=6)


def test_gaps_bridge_or_split_tracks(tmp_path: Path) -> None:
    # Text in frames 0-14, a 0.5 s dropout, again 20-29, a 3 s absence, again 60-69.
    shown = draw(canvas(), "HELLO 2026", (60, 200))
    visible = set(range(0, 15)) | set(range(20, 30)) | set(range(60, 70))
    frames = [shown if i in visible else canvas() for i in range(70)]
    path = tmp_path / "gaps.mp4"
    write_frames(path, frames, fps=FPS)

    # Samples every 0.4 s: sightings 0-1.2 s, 2.0-2.8 s (gap 0.8 s), 6.0-6.8 s (gap 3.2 s).
    _, result = run_ocr(path, tmp_path, {"merge_gap_seconds": 1.0}, frame_stride=4)

    tracks = result.section["tracks"]
    assert [(t["start_frame"], t["end_frame"], t["samples"]) for t in tracks] == [
        (0, 28, 7),
        (60, 68, 3),
    ]
    assert all(same_text(t["text"], "HELLO 2026") for t in tracks)
    assert tracks[1]["start_time"] == pytest.approx(6.0, abs=0.4)
    assert result.summary == {"text_tracks": 2, "frames_with_text": 10}


def test_min_confidence_drops_weak_readings(tmp_path: Path) -> None:
    # A crisp line and a line whose top half is cut off: the second reads worse.
    image = draw(canvas(), "CLEAR TEXT", (40, 100), scale=1.8, thickness=4)
    draw(image, "HALF WORDS", (40, 260), scale=1.5, thickness=3)
    image[200:240] = 255
    path = tmp_path / "confidence.mp4"
    write_frames(path, [image] * 2, fps=FPS)

    everything, _ = run_ocr(path, tmp_path, {"min_confidence": 0.0})
    readings = everything[0][1]
    clear = [f for f in readings if same_text(f["text"], "CLEAR TEXT")]
    weak = [f for f in readings if not same_text(f["text"], "CLEAR TEXT")]
    assert len(clear) == 1 and weak, readings
    strongest_weak = max(f["confidence"] for f in weak)
    assert clear[0]["confidence"] - strongest_weak > 0.02, readings

    threshold = round((clear[0]["confidence"] + strongest_weak) / 2, 4)
    kept, result = run_ocr(path, tmp_path, {"min_confidence": threshold})
    for _, findings in kept.values():
        assert [f["text"] for f in findings] == [clear[0]["text"]]
        assert all(f["confidence"] >= threshold for f in findings)
    assert [t["text"] for t in result.section["tracks"]] == [clear[0]["text"]]


def test_max_side_downscales_but_boxes_stay_in_frame_pixels(tmp_path: Path) -> None:
    # One word: at this size the detector may split words into separate boxes.
    image = draw(canvas(size=(1280, 720)), "PANORAMA", (200, 400), scale=4.0, thickness=10)
    path = tmp_path / "large.mp4"
    write_frames(path, [image], fps=FPS)
    expected = ink_box(image)

    # 640: OCR sees a 640x360 picture, the boxes are scaled back; 0: full size.
    for max_side in (640, 0):
        by_frame, _ = run_ocr(path, tmp_path, {"max_side": max_side})
        findings = by_frame[0][1]
        assert len(findings) == 1 and same_text(findings[0]["text"], "PANORAMA"), findings
        assert box_iou(findings[0]["box"], expected) > 0.6, (max_side, findings[0]["box"], expected)


def test_blank_video_has_no_text(tmp_path: Path) -> None:
    path = tmp_path / "blank.mp4"
    write_frames(path, [canvas(dark=True)] * 20, fps=FPS)

    by_frame, result = run_ocr(path, tmp_path, frame_stride=4)

    assert len(by_frame) == 5
    assert all(findings == [] for _, findings in by_frame.values())
    assert result.section["tracks"] == []
    assert result.summary == {"text_tracks": 0, "frames_with_text": 0}
