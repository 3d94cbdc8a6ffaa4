"""`detect`: QR codes, faces and people per sampled frame, tracked over time.

Only detectors shipped inside OpenCV 4.x are used (nothing is downloaded):

- `qr_code`: `detectAndDecodeMulti` of `cv2.QRCodeDetectorAruco` and of
  `cv2.QRCodeDetector`, which also decode the payload. The ArUco-based one
  runs first; the classic one runs too unless the first located codes and
  decoded them all, and when the classic multi-code search finds nothing its
  single-code `detectAndDecode` is tried (a result kept only if decoded:
  undecoded single-code hits on textures are mostly false). Confidence 1.0
  when decoded, 0.5 when located but not decoded (payload "").
- `face`: the Haar cascade `haarcascade_frontalface_default.xml` from
  `cv2.data.haarcascades` (upright frontal faces, histogram-equalised gray,
  scaleFactor 1.1, minNeighbors 5, faces of at least 30 px in the detection
  image). Confidence from `detectMultiScale3`'s level weight `w` (the boosted
  sum of the cascade's last stage; it is above that stage's threshold, about
  -3.0, for every detection): `confidence = 1 / (1 + exp(-w / 2))`, so the
  stage threshold maps to about 0.18, w = 0 to 0.5, w = 4 to 0.88. If the
  weights are unavailable the confidence is the constant 0.5.
- `person`: HOG with `cv2.HOGDescriptor_getDefaultPeopleDetector()` (the
  Dalal-Triggs 64x128 pedestrian SVM; winStride 8, padding 8, scale 1.1).
  Confidence from the SVM decision value `w` (>= 0 for every hit):
  `confidence = tanh(w)`, so w = 0.31 maps to 0.3 and w = 1 to 0.76.

None of these confidences is a calibrated probability; they only rank the
detections of one class. Detections below `min_confidence` are dropped, then
overlapping boxes of one class (IoU > 0.5) are merged, keeping the most
confident. Frames larger than `max_side` on their longer side are scaled
down for detection (INTER_AREA) and boxes scaled back to frame pixels.

Each kept detection gets a `track_id` from an IoU tracker (see `tracking`):
stable across frames for the same object, starting at 1, unique per job.

Per-frame findings: `{"class", "confidence", "box": {"x", "y", "width",
"height"}, "track_id"}` plus `"payload"` for `qr_code` ("" when not decoded).
Section: `{"tracks": [{"track_id", "class", "payload" (qr_code only),
"start_time", "end_time", "start_frame", "end_frame", "samples",
"best_confidence", "first_box", "last_box"}], "classes": {name: {"detector",
"confidence", "reliability", "note"}}}` for the requested classes. Summary:
`{"objects": number of tracks, "by_class": {name: tracks}}`. No artifacts.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from videojobs.pipelines.base import PipelineFailure
from videojobs.pipelines.frames import AnalysisContext, SampledFrame, SectionResult
from videojobs.pipelines.specs import DETECT_CLASSES, DETECT_SPEC, parse_classes
from videojobs.pipelines.tracking import Box, Detection, IoUTracker, box_dict, iou

CLASSES = DETECT_CLASSES
FACE_CASCADE = "haarcascade_frontalface_default.xml"
# Used when detectMultiScale3 gives no level weights.
FACE_FALLBACK_CONFIDENCE = 0.5
QR_DECODED_CONFIDENCE = 1.0
QR_UNDECODED_CONFIDENCE = 0.5
# Same-class boxes overlapping more than this are one object seen twice.
DUPLICATE_IOU = 0.5
# The HOG people window; a smaller detection image cannot hold a person.
HOG_WINDOW = (64, 128)

CLASS_NOTES: dict[str, dict[str, str]] = {
    "qr_code": {
        "detector": "cv2.QRCodeDetectorAruco and cv2.QRCodeDetector",
        "confidence": "1.0 decoded, 0.5 located but not decoded",
        "reliability": "high",
        "note": (
            "Reliable for sharp, roughly frontal codes with a quiet zone and at least "
            "~3 px per module in the detection image; payloads are exact when decoded. "
            "Blurred, strongly tilted, tiny or partly hidden codes are missed."
        ),
    },
    "face": {
        "detector": f"cv2.CascadeClassifier ({FACE_CASCADE})",
        "confidence": "1 / (1 + exp(-w / 2)), w = detectMultiScale3 level weight",
        "reliability": "low",
        "note": (
            "Haar cascade: upright frontal faces of at least 30 px only; profiles, tilted, "
            "small, dark or partly hidden faces are missed, and textures can give false "
            "faces. Confidence ranks detections; it is not a probability."
        ),
    },
    "person": {
        "detector": "cv2.HOGDescriptor with the default people SVM",
        "confidence": "tanh(w), w = SVM decision value",
        "reliability": "low",
        "note": (
            "HOG pedestrian detector: standing, mostly visible people at least 64x128 px "
            "in the detection image; seated, partial, crowded or small people are missed, "
            "and vertical structures can give false people. Boxes include a margin "
            "around the body. Confidence ranks detections; it is not a probability."
        ),
    },
}


# Declared in `specs`, which job-service reads without importing this module.
SPEC = DETECT_SPEC


def _squash_face(weight: float) -> float:
    return 1.0 / (1.0 + math.exp(-weight / 2.0))


class _QrDetector:
    """Both OpenCV QR detectors, each covering the other's misses (measured
    on synthetic frames: the ArUco-based one finds small, crowded and moving
    codes the classic one drops in about one frame in six; the classic one
    finds blurred and strongly tilted codes the ArUco one misses)."""

    def __init__(self) -> None:
        self._aruco = cv2.QRCodeDetectorAruco()
        self._classic = cv2.QRCodeDetector()

    def detect(self, gray: np.ndarray) -> list[tuple[np.ndarray, str]]:
        """(corner points, payload or "") per code, points in `gray` pixels.
        May list one code twice; the caller merges overlapping boxes."""
        found = _multi(self._aruco, gray)
        if found and all(text for _, text in found):
            return found  # everything located was read: no need for a second opinion
        classic = _multi(self._classic, gray)
        if not classic:
            # The single-code search finds some lone codes the multi-code one
            # misses, but on textures it also "locates" codes that are not
            # there: only a decoded result counts.
            text, points, _ = self._classic.detectAndDecode(gray)
            if points is not None and text:
                classic = [(points.reshape(-1, 2), text)]
        return found + classic


def _multi(detector, gray: np.ndarray) -> list[tuple[np.ndarray, str]]:
    ok, texts, points, _ = detector.detectAndDecodeMulti(gray)
    if not ok or points is None:
        return []
    return [(pts.reshape(-1, 2), text or "") for pts, text in zip(points, texts, strict=True)]


class DetectAnalyzer:
    """Detects the requested classes in each frame and tracks them."""

    def __init__(self, parameters: dict[str, Any], context: AnalysisContext) -> None:
        try:
            self._classes = parse_classes(parameters["classes"])
        except ValueError as exc:
            raise PipelineFailure(f"classes: {exc}", reason="INVALID_PARAMETER") from None
        self._min_confidence = parameters["min_confidence"]
        self._max_side = parameters["max_side"]
        self._tracker = IoUTracker(parameters["iou_threshold"], parameters["max_missed_seconds"])
        # Models load once per analyzer: OpenCV detectors are not safe to
        # share between threads, and loading costs far less than one video.
        self._qr = _QrDetector() if "qr_code" in self._classes else None
        self._face = None
        if "face" in self._classes:
            self._face = cv2.CascadeClassifier(cv2.data.haarcascades + FACE_CASCADE)
            if self._face.empty():
                raise PipelineFailure(
                    "the OpenCV face cascade could not be loaded",
                    code="INTERNAL",
                    reason="MODEL_UNAVAILABLE",
                    retryable=False,
                )
        self._hog = None
        if "person" in self._classes:
            self._hog = cv2.HOGDescriptor()
            self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def process(self, frame: SampledFrame) -> list[dict[str, Any]]:
        """Findings for one frame; see the module docstring."""
        image = frame.image
        height, width = image.shape[:2]
        scale = min(1.0, self._max_side / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        # Factors from detection pixels back to frame pixels, per axis
        # (rounding the size makes them differ slightly).
        fx = width / image.shape[1]
        fy = height / image.shape[0]
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        detections: list[Detection] = []
        if self._qr is not None:
            for points, text in self._qr.detect(gray):
                confidence = QR_DECODED_CONFIDENCE if text else QR_UNDECODED_CONFIDENCE
                box = _points_box(points, fx, fy, width, height)
                if box is not None:
                    detections.append(Detection("qr_code", box, confidence, text))
        if self._face is not None:
            detections.extend(self._faces(gray, fx, fy, width, height))
        if self._hog is not None:
            detections.extend(self._people(image, fx, fy, width, height))
        detections = _dedupe([d for d in detections if d.confidence >= self._min_confidence])
        ids = self._tracker.update(frame.time, frame.index, detections)
        findings = []
        for det, track_id in zip(detections, ids, strict=True):
            finding: dict[str, Any] = {
                "class": det.cls,
                "confidence": round(det.confidence, 4),
                "box": box_dict(det.box),
                "track_id": track_id,
            }
            if det.payload is not None:
                finding["payload"] = det.payload
            findings.append(finding)
        return findings

    def _faces(self, gray, fx, fy, width, height) -> list[Detection]:
        equalized = cv2.equalizeHist(gray)
        try:
            rects, _, weights = self._face.detectMultiScale3(
                equalized,
                scaleFactor=1.1,
                minNeighbors=5,
                minSize=(30, 30),
                outputRejectLevels=True,
            )
            weights = np.ravel(weights) if weights is not None else np.empty(0)
        except cv2.error:
            # Builds without reject levels: plain detection, constant confidence.
            rects = self._face.detectMultiScale(
                equalized, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30)
            )
            weights = np.empty(0)
        out = []
        for i, rect in enumerate(rects):
            confidence = (
                _squash_face(float(weights[i]))
                if len(weights) == len(rects)
                else FACE_FALLBACK_CONFIDENCE
            )
            box = _rect_box(rect, fx, fy, width, height)
            if box is not None:
                out.append(Detection("face", box, confidence))
        return out

    def _people(self, image, fx, fy, width, height) -> list[Detection]:
        if image.shape[1] < HOG_WINDOW[0] or image.shape[0] < HOG_WINDOW[1]:
            return []
        rects, weights = self._hog.detectMultiScale(
            image, winStride=(8, 8), padding=(8, 8), scale=1.1
        )
        weights = np.ravel(weights)
        out = []
        for rect, weight in zip(rects, weights, strict=True):
            box = _rect_box(rect, fx, fy, width, height)
            if box is not None:
                out.append(Detection("person", box, math.tanh(max(0.0, float(weight)))))
        return out

    def finish(self) -> SectionResult:
        """The tracks and per-class notes; see the module docstring."""
        tracks = self._tracker.tracks
        by_class = dict.fromkeys(self._classes, 0)
        for track in tracks:
            by_class[track.cls] += 1
        section = {
            "tracks": [track.to_dict() for track in tracks],
            "classes": {name: dict(CLASS_NOTES[name]) for name in self._classes},
        }
        return SectionResult(
            section=section,
            summary={"objects": len(tracks), "by_class": by_class},
            artifacts=[],
        )


def _clip_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> Box | None:
    """Integer box covering [x0, x1) x [y0, y1), clipped to the frame; None if empty."""
    left = max(0, math.floor(x0))
    top = max(0, math.floor(y0))
    right = min(width, math.ceil(x1))
    bottom = min(height, math.ceil(y1))
    if right <= left or bottom <= top:
        return None
    return (left, top, right - left, bottom - top)


def _points_box(points: np.ndarray, fx: float, fy: float, width: int, height: int) -> Box | None:
    """The axis-aligned box around a QR code's corners. Corners are pixel
    positions, so the far edge is one pixel past the largest one."""
    xs = points[:, 0]
    ys = points[:, 1]
    return _clip_box(
        float(xs.min()) * fx,
        float(ys.min()) * fy,
        (float(xs.max()) + 1) * fx,
        (float(ys.max()) + 1) * fy,
        width,
        height,
    )


def _rect_box(rect, fx: float, fy: float, width: int, height: int) -> Box | None:
    x, y, w, h = (float(v) for v in rect)
    return _clip_box(x * fx, y * fy, (x + w) * fx, (y + h) * fy, width, height)


def _dedupe(detections: list[Detection]) -> list[Detection]:
    """Drops a detection that overlaps a more confident one of its class by
    more than DUPLICATE_IOU (detectors sometimes report one object twice)."""
    if len(detections) < 2:
        return detections
    order = sorted(range(len(detections)), key=lambda i: -detections[i].confidence)
    kept: list[int] = []
    for i in order:
        det = detections[i]
        if not any(_same_object(detections[k], det) for k in kept):
            kept.append(i)
    # Back in detector order so findings read qr_code, face, person.
    return [detections[i] for i in sorted(kept)]


def _same_object(a: Detection, b: Detection) -> bool:
    if a.cls != b.cls:
        return False
    if a.payload and b.payload and a.payload != b.payload:
        return False  # two different codes side by side
    return iou(a.box, b.box) > DUPLICATE_IOU


class DetectPipeline:
    """The `detect` frame pipeline."""

    spec = SPEC

    def analyzer(self, parameters: dict[str, Any], context: AnalysisContext) -> DetectAnalyzer:
        """A fresh analyzer (and fresh tracker) for one job."""
        return DetectAnalyzer(parameters, context)


PIPELINE = DetectPipeline()
