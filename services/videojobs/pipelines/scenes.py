"""`scenes`: shot boundaries (hard cuts) found by content change.

Every sampled frame is reduced to a cheap signature: the frame downscaled to
64 pixels wide, an HSV colour histogram of that small picture, and its
grayscale pixels. The change score between a sample and the previous sample is

    score = (histogram_change + pixel_change) / 2        (0..1)

where `histogram_change` is half the L1 distance of the normalised histograms
(0: same colour distribution, 1: no colour in common) and `pixel_change` is the
mean absolute difference of the grayscale thumbnails divided by 255. The
histogram half is blind to layout and steady under motion; the pixel half sees
a cut between two shots of the same palette. A sample starts a new shot when
its score exceeds `threshold` and at least `min_shot_seconds` of video time
passed since the current shot started, so a cut is reported at the first
sample of the new shot: frame-exact when every frame is sampled, within one
sample otherwise. Gradual transitions (fades, dissolves) spread the change over
many samples and are not reported as cuts.

Per-frame findings, only on a sample that starts a shot (the first sample
starts shot 0, with score 0.0 because it has nothing to be compared with):
`{"shot_start": true, "score": float}`.

Section: `{"shots": [{"index", "start_time", "end_time", "start_frame",
"end_frame"}], "cuts": [{"time", "frame", "score"}]}`. Shots tile the sampled
range: a shot ends (`end_time`, exclusive) where the next one starts and its
`end_frame` (inclusive) is the frame before the next shot's first frame; the
last shot ends one frame duration after the last sample. Summary:
`{"shots": n}`.

`ShotDetector` holds the detection logic; the `thumbnails` pipeline uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from videojobs.pipelines.frames import AnalysisContext, SampledFrame, SectionResult
from videojobs.pipelines.specs import (
    DEFAULT_MIN_SHOT_SECONDS,
    DEFAULT_THRESHOLD,
    MIN_SHOT_SECONDS_PARAMETER,  # noqa: F401 (re-exported)
    SCENES_SPEC,
    THRESHOLD_PARAMETER,  # noqa: F401 (re-exported)
)

# Declared in `specs`, which job-service reads without importing this module.
SPEC = SCENES_SPEC

# Signature size: 64 pixels wide is enough to tell shots apart and makes the
# per-frame cost independent of the video's resolution (after one resize).
SIGNATURE_WIDTH = 64
# Histogram layout: 16 hues x 3 saturations x 4 values for coloured pixels, and
# 8 value bins for grey pixels, whose hue is noise (it flickers between bins
# from compression alone and would look like a colour change).
_HUE_BINS, _SAT_BINS, _VAL_BINS, _GREY_BINS = 16, 3, 4, 8
_GREY_SATURATION = 32  # below this (of 255) a pixel counts as grey
_COLOUR_BINS = _HUE_BINS * _SAT_BINS * _VAL_BINS
_HISTOGRAM_BINS = _COLOUR_BINS + _GREY_BINS


@dataclass(frozen=True)
class ShotStart:
    """A sample that starts a shot: its frame index, time, change score
    (rounded to 4 decimals) and whether it is a cut (False only for the first
    sample, which starts shot 0 with score 0.0)."""

    frame: int
    time: float
    score: float
    is_cut: bool


class ShotDetector:
    """Finds hard cuts in a stream of sampled frames, one frame at a time.

    Feed every sampled frame, in order, to `observe`; it returns a `ShotStart`
    when that frame starts a shot (always for the first frame), else None.
    Keeps only the previous frame's signature (a few kilobytes).
    """

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        min_shot_seconds: float = DEFAULT_MIN_SHOT_SECONDS,
    ) -> None:
        self.threshold = float(threshold)
        self.min_shot_seconds = float(min_shot_seconds)
        self._size: tuple[int, int] | None = None
        self._previous: tuple[np.ndarray, np.ndarray] | None = None
        self._shot_start_time = 0.0

    def signature(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (normalised histogram, grayscale thumbnail) of a BGR image."""
        if self._size is None:
            height, width = image.shape[:2]
            small_width = min(SIGNATURE_WIDTH, width)
            self._size = (small_width, max(1, round(height * small_width / width)))
        # INTER_AREA averages blocks: it also suppresses sensor and codec noise.
        small = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
        hue = hsv[..., 0].astype(np.int32)
        sat = hsv[..., 1].astype(np.int32)
        val = hsv[..., 2].astype(np.int32)
        colour_bin = (
            (hue * _HUE_BINS // 180) * (_SAT_BINS * _VAL_BINS)
            + ((sat - _GREY_SATURATION).clip(0) * _SAT_BINS // (256 - _GREY_SATURATION)) * _VAL_BINS
            + val * _VAL_BINS // 256
        )
        grey_bin = _COLOUR_BINS + val * _GREY_BINS // 256
        bins = np.where(sat < _GREY_SATURATION, grey_bin, colour_bin)
        histogram = np.bincount(bins.ravel(), minlength=_HISTOGRAM_BINS).astype(np.float32)
        histogram /= bins.size
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        return histogram, gray

    @staticmethod
    def difference(
        first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray]
    ) -> float:
        """Change score between two signatures, 0 (same) to 1 (nothing in common)."""
        histogram_change = 0.5 * float(np.abs(first[0] - second[0]).sum())
        pixel_change = float(cv2.absdiff(first[1], second[1]).mean()) / 255.0
        return min(1.0, 0.5 * (histogram_change + pixel_change))

    def observe(self, frame: SampledFrame) -> ShotStart | None:
        """Takes the next sampled frame; returns a ShotStart if it starts a shot."""
        current = self.signature(frame.image)
        previous, self._previous = self._previous, current
        if previous is None:
            self._shot_start_time = frame.time
            return ShotStart(frame=frame.index, time=frame.time, score=0.0, is_cut=False)
        score = self.difference(previous, current)
        if score <= self.threshold:
            return None
        # The tolerance absorbs timestamps rounded to microseconds.
        if frame.time - self._shot_start_time < self.min_shot_seconds - 1e-6:
            return None
        self._shot_start_time = frame.time
        return ShotStart(frame=frame.index, time=frame.time, score=round(score, 4), is_cut=True)


def frame_duration(
    fps: float, last: tuple[int, float] | None, before_last: tuple[int, float] | None
) -> float:
    """One frame's duration: from the stream's rate, else estimated from the
    last two samples' (index, time) (their time gap per frame), else 0."""
    if fps > 0:
        return 1.0 / fps
    if last is not None and before_last is not None and last[0] > before_last[0]:
        return (last[1] - before_last[1]) / (last[0] - before_last[0])
    return 0.0


class ScenesAnalyzer:
    """One job's shot detection over its sampled frames."""

    def __init__(self, parameters: dict[str, Any], context: AnalysisContext) -> None:
        self._context = context
        self._detector = ShotDetector(parameters["threshold"], parameters["min_shot_seconds"])
        self._starts: list[ShotStart] = []
        # (index, time) of the last two samples, for the end of the last shot.
        self._last: tuple[int, float] | None = None
        self._before_last: tuple[int, float] | None = None

    def process(self, frame: SampledFrame) -> list[dict[str, Any]]:
        """`[{"shot_start": true, "score": s}]` if the frame starts a shot, else []."""
        start = self._detector.observe(frame)
        self._before_last, self._last = self._last, (frame.index, frame.time)
        if start is None:
            return []
        self._starts.append(start)
        return [{"shot_start": True, "score": start.score}]

    def finish(self) -> SectionResult:
        """The shots and cuts found."""
        shots: list[dict[str, Any]] = []
        for number, start in enumerate(self._starts):
            if number + 1 < len(self._starts):
                following = self._starts[number + 1]
                end_time, end_frame = following.time, following.frame - 1
            else:
                assert self._last is not None  # a shot exists only after a frame
                duration = frame_duration(self._context.video.fps, self._last, self._before_last)
                end_frame, last_time = self._last
                end_time = last_time + duration
            shots.append(
                {
                    "index": number,
                    "start_time": start.time,
                    "end_time": round(end_time, 6),
                    "start_frame": start.frame,
                    "end_frame": end_frame,
                }
            )
        cuts = [
            {"time": start.time, "frame": start.frame, "score": start.score}
            for start in self._starts[1:]
        ]
        return SectionResult(
            section={"shots": shots, "cuts": cuts}, summary={"shots": len(shots)}, artifacts=[]
        )


class ScenesPipeline:
    """The `scenes` frame pipeline."""

    spec = SPEC

    def analyzer(self, parameters: dict[str, Any], context: AnalysisContext) -> ScenesAnalyzer:
        """A fresh analyzer for one job."""
        return ScenesAnalyzer(parameters, context)


PIPELINE = ScenesPipeline()
