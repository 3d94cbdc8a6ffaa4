"""`ocr`: text in sampled frames, read with RapidOCR (PP-OCRv4 models run by
ONNX Runtime; the models ship inside the `rapidocr-onnxruntime` wheel).

Per frame it reports every text line read with at least `min_confidence`, with
its axis-aligned box in frame pixels. Frames whose longer side exceeds
`max_side` are downscaled first (OCR time grows with the pixel count), and the
boxes are scaled back.

Across frames it builds *text tracks*: a line of text seen in several samples
is one track with the span it was visible in. A sighting continues a track when
its text is the same after normalisation (case-folded, whitespace removed) and
its box overlaps the track's latest box (IoU > 0.3) or lies within about one
text height of it, and the track was seen either in the previous sample or at
most `merge_gap_seconds` earlier. So consecutive samples always merge, however
sparse the sampling, and short dropouts (a missed read, a flicker) are bridged.
"""

from __future__ import annotations

import importlib.metadata
import math
import re
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from videojobs.pipelines.frames import AnalysisContext, SampledFrame, SectionResult
from videojobs.pipelines.specs import OCR_SPEC

ENGINE = "rapidocr-onnxruntime"

# Declared in `specs`, which job-service reads without importing this module.
SPEC = OCR_SPEC

# Tracks match when their boxes overlap more than this (intersection over union) ...
MATCH_IOU = 0.3
# ... or when their centres are at most this many text heights apart.
MATCH_CENTRE_HEIGHTS = 1.0
# Far beyond any frame: the detector must only round the size to its stride of
# 32, never rescale (we downscale ourselves, by `max_side`, before OCR).
_NO_LIMIT = 1_000_000
_WHITESPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """The key under which two readings count as the same text: case-folded,
    whitespace removed (the recogniser drops or inserts spaces between
    samples of the same line, e.g. "VIDEO JOBS" and "VIDEOJOBS")."""
    return _WHITESPACE.sub("", text).casefold()


def _engine_version() -> str | None:
    try:
        return importlib.metadata.version("rapidocr-onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return None


def _make_engine(min_confidence: float):
    # Imported here: loading ONNX Runtime is only worth it when OCR is wanted.
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR(
        # The engine drops reads below text_score itself; we filter again (its
        # test is >=, ours too), so both agree.
        text_score=min_confidence,
        # RapidOCR's default ("min" 736) upscales a 640x360 frame to 1312x736
        # for detection, 4x the pixels and time; frames are detected as given.
        det_limit_type="max",
        det_limit_side_len=_NO_LIMIT,
        max_side_len=_NO_LIMIT,
    )


@dataclass
class _Track:
    id: int
    key: str
    text: str
    confidence: float
    box: dict[str, int]
    last_box: dict[str, int]
    start_time: float
    end_time: float
    start_frame: int
    end_frame: int
    samples: int
    last_sample: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "confidence": self.confidence,
            "box": self.box,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "start_frame": self.start_frame,
            "end_frame": self.end_frame,
            "samples": self.samples,
        }


def box_iou(a: dict[str, int], b: dict[str, int]) -> float:
    """Intersection over union of two `{x, y, width, height}` boxes."""
    ix = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    iy = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = a["width"] * a["height"] + b["width"] * b["height"] - inter
    return inter / union if union > 0 else 0.0


def _boxes_match(a: dict[str, int], b: dict[str, int]) -> tuple[bool, float]:
    """Whether two boxes are the same place, and a score to prefer the best match."""
    iou = box_iou(a, b)
    if iou > MATCH_IOU:
        return True, 1.0 + iou
    dx = (a["x"] + a["width"] / 2) - (b["x"] + b["width"] / 2)
    dy = (a["y"] + a["height"] / 2) - (b["y"] + b["height"] / 2)
    reach = MATCH_CENTRE_HEIGHTS * max(a["height"], b["height"], 1)
    distance = math.hypot(dx, dy)
    if distance <= reach:
        return True, 1.0 - distance / reach / 2
    return False, 0.0


class OcrAnalyzer:
    """OCR over one job's sampled frames; see the module docstring."""

    def __init__(self, parameters: dict[str, Any], context: AnalysisContext) -> None:
        self._min_confidence = float(parameters["min_confidence"])
        self._max_side = int(parameters["max_side"])
        self._merge_gap = float(parameters["merge_gap_seconds"])
        self._engine = _make_engine(self._min_confidence)
        self._sample = -1
        self._frames_with_text = 0
        self._tracks: list[_Track] = []
        # Tracks that can still be continued, by normalised text.
        self._open: dict[str, list[_Track]] = {}

    def process(self, frame: SampledFrame) -> list[dict[str, Any]]:
        """Text lines read in `frame`: `{"text", "confidence", "box", "track"}`."""
        self._sample += 1
        readings = self._read(frame.image)
        if self._sample % 32 == 0:
            self._close_stale(frame.time)
        findings = []
        claimed: set[int] = set()
        for text, confidence, box in readings:
            track = self._continue_track(text, confidence, box, frame, claimed)
            claimed.add(track.id)
            findings.append({"text": text, "confidence": confidence, "box": box, "track": track.id})
        if findings:
            self._frames_with_text += 1
        return findings

    def finish(self) -> SectionResult:
        """The text tracks in order of first appearance."""
        section = {
            "tracks": [track.as_dict() for track in self._tracks],
            "engine": ENGINE,
            "engine_version": _engine_version(),
        }
        summary = {"text_tracks": len(self._tracks), "frames_with_text": self._frames_with_text}
        return SectionResult(section=section, summary=summary, artifacts=[])

    def _read(self, image: np.ndarray) -> list[tuple[str, float, dict[str, int]]]:
        """(text, confidence, box in frame pixels) for each line the engine reads."""
        height, width = image.shape[:2]
        scale = 1.0
        longer = max(height, width)
        if self._max_side and longer > self._max_side:
            scale = self._max_side / longer
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        result, _ = self._engine(image)
        readings = []
        for quad, raw_text, score in result or ():
            text = _WHITESPACE.sub(" ", raw_text).strip()
            confidence = float(score)
            if not text or not confidence >= self._min_confidence:
                continue
            points = np.asarray(quad, dtype=np.float64) / scale
            x0 = min(max(0, math.floor(points[:, 0].min())), width)
            y0 = min(max(0, math.floor(points[:, 1].min())), height)
            x1 = min(max(x0, math.ceil(points[:, 0].max())), width)
            y1 = min(max(y0, math.ceil(points[:, 1].max())), height)
            box = {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}
            readings.append((text, round(confidence, 4), box))
        return readings

    def _continue_track(
        self,
        text: str,
        confidence: float,
        box: dict[str, int],
        frame: SampledFrame,
        claimed: set[int],
    ) -> _Track:
        """Adds the sighting to the best matching open track, or opens a new one."""
        key = normalise_text(text)
        best, best_score = None, 0.0
        for track in self._open.get(key, ()):
            if track.id in claimed or not self._within_gap(track, frame.time):
                continue
            matches, score = _boxes_match(track.last_box, box)
            if matches and score > best_score:
                best, best_score = track, score
        if best is None:
            best = _Track(
                id=len(self._tracks),
                key=key,
                text=text,
                confidence=confidence,
                box=box,
                last_box=box,
                start_time=frame.time,
                end_time=frame.time,
                start_frame=frame.index,
                end_frame=frame.index,
                samples=1,
                last_sample=self._sample,
            )
            self._tracks.append(best)
            self._open.setdefault(key, []).append(best)
            return best
        if confidence > best.confidence:
            # The most confident reading spells the track's text.
            best.confidence, best.text = confidence, text
        best.last_box = box
        best.end_time, best.end_frame = frame.time, frame.index
        best.samples += 1
        best.last_sample = self._sample
        return best

    def _within_gap(self, track: _Track, time: float) -> bool:
        return (
            track.last_sample == self._sample - 1 or time - track.end_time <= self._merge_gap + 1e-6
        )

    def _close_stale(self, time: float) -> None:
        """Forgets open tracks that can no longer continue (keeps matching cheap)."""
        for key in list(self._open):
            alive = [
                t
                for t in self._open[key]
                if t.last_sample >= self._sample - 1 or time - t.end_time <= self._merge_gap + 1e-6
            ]
            if alive:
                self._open[key] = alive
            else:
                del self._open[key]


class OcrPipeline:
    """The `ocr` frame pipeline."""

    spec = SPEC

    def analyzer(self, parameters: dict[str, Any], context: AnalysisContext) -> OcrAnalyzer:
        """A fresh analyzer (with its own OCR engine, ~0.3-0.5 s to load) for one job."""
        return OcrAnalyzer(parameters, context)


PIPELINE = OcrPipeline()
