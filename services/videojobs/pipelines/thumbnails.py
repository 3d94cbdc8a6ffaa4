"""`thumbnails`: JPEG stills of the video, stored as artifacts.

Modes (`mode` parameter):

- `shot` (default): one image per shot, taken from the first sampled frame of
  the shot. Shots are found exactly as the `scenes` pipeline finds them (the
  shared `ShotDetector`, tuned by the same `threshold` and `min_shot_seconds`
  parameters). The first frame is chosen over the middle one because it is
  known the moment it arrives: the image is written and reported while
  decoding, without holding pictures back until the shot ends.
- `interval`: one image per `interval_seconds` of video time, from the first
  sampled frame at or after each multiple of the interval (0, 5, 10, ... s for
  the default 5.0); a sampling `start_time` inside the video starts at the
  first multiple after it.

Each image is scaled down to at most `max_width` pixels wide (aspect ratio
kept, never scaled up), encoded as JPEG at `quality`, and written through the
job's BlobStore as `<output prefix>/thumbnails/0000.jpg`, `0001.jpg`, ... At
most `max_thumbnails` images are made; later frames are skipped.

Per-frame findings, only on frames that produced an image:
`{"thumbnail": key, "index": i}`. Section: `{"images": [{"key", "index",
"time", "frame", "width", "height", "size_bytes"}]}` (width and height of the
stored image). Summary: `{"thumbnails": n}`. Each image is also reported as
an `ArtifactOut(key, "image/jpeg", size_bytes, extra={"index", "time",
"frame", "width", "height"})`.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from videojobs.pipelines.base import PipelineFailure
from videojobs.pipelines.frames import AnalysisContext, ArtifactOut, SampledFrame, SectionResult
from videojobs.pipelines.scenes import ShotDetector
from videojobs.pipelines.specs import (
    MAX_THUMBNAILS_LIMIT,  # noqa: F401 (re-exported)
    THUMBNAIL_MODES,
    THUMBNAILS_SPEC,
    check_mode,  # noqa: F401 (re-exported)
)
from videojobs.storage.blobstore import put_bytes

MODES = THUMBNAIL_MODES
MEDIA_TYPE = "image/jpeg"
# Declared in `specs`, which job-service reads without importing this module.
SPEC = THUMBNAILS_SPEC


def scaled_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """(width, height) no wider than `max_width`, same aspect, never larger."""
    if width <= max_width:
        return width, height
    return max_width, max(1, int(height * max_width / width + 0.5))


class ThumbnailsAnalyzer:
    """One job's thumbnails: decides per frame, writes each image at once."""

    def __init__(self, parameters: dict[str, Any], context: AnalysisContext) -> None:
        self._mode = parameters["mode"]
        if self._mode not in MODES:
            raise PipelineFailure(
                f"thumbnails mode must be one of: {', '.join(MODES)}",
                reason="INVALID_PARAMETER",
            )
        self._context = context
        self._interval = parameters["interval_seconds"]
        self._max_width = parameters["max_width"]
        self._encode_options = [cv2.IMWRITE_JPEG_QUALITY, parameters["quality"]]
        self._max_thumbnails = parameters["max_thumbnails"]
        self._detector = (
            ShotDetector(parameters["threshold"], parameters["min_shot_seconds"])
            if self._mode == "shot"
            else None
        )
        self._next_due = 0.0
        self._images: list[dict[str, Any]] = []
        self._artifacts: list[ArtifactOut] = []

    def process(self, frame: SampledFrame) -> list[dict[str, Any]]:
        """`[{"thumbnail": key, "index": i}]` if this frame became an image, else []."""
        if len(self._images) >= self._max_thumbnails:
            return []  # nothing more will be made: skip even the shot detection
        if self._detector is not None:
            if self._detector.observe(frame) is None:
                return []
        else:
            # Microsecond tolerance: sample times are rounded to 6 decimals.
            if frame.time < self._next_due - 1e-6:
                return []
            self._next_due = (math.floor(frame.time / self._interval + 1e-6) + 1) * self._interval
        index = len(self._images)
        key = self._write(index, frame)
        return [{"thumbnail": key, "index": index}]

    def _write(self, index: int, frame: SampledFrame) -> str:
        image: np.ndarray = frame.image
        width, height = scaled_size(frame.width, frame.height, self._max_width)
        if (width, height) != (frame.width, frame.height):
            # INTER_AREA: the alias-free choice for shrinking.
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        encoded, buffer = cv2.imencode(".jpg", image, self._encode_options)
        if not encoded:
            raise PipelineFailure(
                f"frame {frame.index} could not be encoded as JPEG",
                code="INTERNAL",
                reason="THUMBNAIL_ENCODE_FAILED",
            )
        key = self._context.output_prefix.child("thumbnails", f"{index:04d}.jpg")
        size_bytes = put_bytes(self._context.store, key, buffer.tobytes()).size_bytes
        extra = {
            "index": index,
            "time": frame.time,
            "frame": frame.index,
            "width": width,
            "height": height,
        }
        self._artifacts.append(ArtifactOut(key, MEDIA_TYPE, size_bytes, extra=extra))
        self._images.append({"key": key.value, **extra, "size_bytes": size_bytes})
        return key.value

    def finish(self) -> SectionResult:
        """The images made, in order."""
        return SectionResult(
            section={"images": list(self._images)},
            summary={"thumbnails": len(self._images)},
            artifacts=list(self._artifacts),
        )


class ThumbnailsPipeline:
    """The `thumbnails` frame pipeline."""

    spec = SPEC

    def analyzer(self, parameters: dict[str, Any], context: AnalysisContext) -> ThumbnailsAnalyzer:
        """A fresh analyzer for one job."""
        return ThumbnailsAnalyzer(parameters, context)


PIPELINE = ThumbnailsPipeline()
