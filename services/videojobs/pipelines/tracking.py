"""A small IoU tracker: gives detections a stable id across sampled frames.

Pure logic, no OpenCV: `IoUTracker.update` takes one frame's detections and
returns a track id for each.

Matching, per frame and per class (a face never continues a person track):

- Candidate pairs are (live track, detection) of the same class whose boxes
  overlap with IoU >= `iou_threshold`, measured against the track's last box.
- For `qr_code`, a pair whose decoded payloads are equal (both non-empty) is
  a candidate whatever the IoU, so a code that moved fast between samples
  keeps its id; a pair whose payloads are both known and differ is never a
  candidate, however much the boxes overlap (two different codes).
- Pairs are taken greedily: payload matches first, then highest IoU first;
  each track and each detection is used at most once. Detections left over
  start new tracks.

A track is live while the gap since its last detection is at most
`max_missed_seconds`; after that it is closed and an object that shows up
again gets a new id. Ids start at 1 and are unique per tracker (per job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Boxes are (x, y, width, height) in frame pixels.
Box = tuple[int, int, int, int]

# Times come from decoded timestamps rounded to microseconds: a gap of exactly
# max_missed_seconds must not be lost to float noise.
_TIME_EPSILON = 1e-6


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, width, height) boxes; 0 when
    either is empty."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    if aw <= 0 or ah <= 0 or bw <= 0 or bh <= 0:
        return 0.0
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def box_dict(box: Box) -> dict[str, int]:
    """The JSON shape of a box."""
    return {"x": box[0], "y": box[1], "width": box[2], "height": box[3]}


@dataclass(frozen=True)
class Detection:
    """One object found in one frame. `payload` is the decoded text of a QR
    code ("" when located but not decoded), None for other classes."""

    cls: str
    box: Box
    confidence: float
    payload: str | None = None


@dataclass
class Track:
    """One object followed over time."""

    track_id: int
    cls: str
    payload: str | None
    start_time: float
    end_time: float
    start_frame: int
    end_frame: int
    first_box: Box
    last_box: Box
    best_confidence: float
    samples: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape used in the pipeline's section."""
        out: dict[str, Any] = {"track_id": self.track_id, "class": self.cls}
        if self.payload is not None:
            out["payload"] = self.payload
        out.update(
            start_time=round(self.start_time, 6),
            end_time=round(self.end_time, 6),
            start_frame=self.start_frame,
            end_frame=self.end_frame,
            samples=self.samples,
            best_confidence=round(self.best_confidence, 4),
            first_box=box_dict(self.first_box),
            last_box=box_dict(self.last_box),
        )
        return out


class IoUTracker:
    """Greedy per-class IoU tracker; see the module docstring."""

    def __init__(self, iou_threshold: float, max_missed_seconds: float) -> None:
        self.iou_threshold = iou_threshold
        self.max_missed_seconds = max_missed_seconds
        self._live: list[Track] = []
        self._closed: list[Track] = []
        self._next_id = 1

    def update(self, time: float, frame_index: int, detections: list[Detection]) -> list[int]:
        """Matches one frame's detections to live tracks (opening new ones as
        needed) and returns the track id of each detection, in order. Frames
        must come in increasing time."""
        self._close_stale(time)
        ids: list[int | None] = [None] * len(detections)
        used_tracks: set[int] = set()
        pairs: list[tuple[bool, float, int, int]] = []
        for ti, track in enumerate(self._live):
            for di, det in enumerate(detections):
                if det.cls != track.cls:
                    continue
                same_payload = False
                if det.payload and track.payload:
                    if det.payload != track.payload:
                        continue  # two different codes, however close
                    same_payload = True
                overlap = iou(track.last_box, det.box)
                if same_payload or overlap >= self.iou_threshold:
                    pairs.append((same_payload, overlap, ti, di))
        # Greedy: payload matches first, then by overlap. Sorting on the
        # indexes too keeps the outcome independent of sort stability.
        pairs.sort(key=lambda p: (not p[0], -p[1], p[2], p[3]))
        for _, _, ti, di in pairs:
            if ids[di] is not None or ti in used_tracks:
                continue
            used_tracks.add(ti)
            track = self._live[ti]
            self._extend(track, time, frame_index, detections[di])
            ids[di] = track.track_id
        for di, det in enumerate(detections):
            if ids[di] is None:
                ids[di] = self._open(time, frame_index, det).track_id
        return [i for i in ids if i is not None]

    @property
    def tracks(self) -> list[Track]:
        """Every track so far (closed and live), by id."""
        return sorted(self._closed + self._live, key=lambda t: t.track_id)

    def _close_stale(self, time: float) -> None:
        live = []
        for track in self._live:
            if time - track.end_time > self.max_missed_seconds + _TIME_EPSILON:
                self._closed.append(track)
            else:
                live.append(track)
        self._live = live

    def _open(self, time: float, frame_index: int, det: Detection) -> Track:
        track = Track(
            track_id=self._next_id,
            cls=det.cls,
            payload=det.payload,
            start_time=time,
            end_time=time,
            start_frame=frame_index,
            end_frame=frame_index,
            first_box=det.box,
            last_box=det.box,
            best_confidence=det.confidence,
        )
        self._next_id += 1
        self._live.append(track)
        return track

    @staticmethod
    def _extend(track: Track, time: float, frame_index: int, det: Detection) -> None:
        track.end_time = time
        track.end_frame = frame_index
        track.last_box = det.box
        track.samples += 1
        track.best_confidence = max(track.best_confidence, det.confidence)
        if det.payload and not track.payload:
            # Located before, decoded now: the track learns what it is.
            track.payload = det.payload
