"""The `scenes` pipeline on real encoded videos with hard cuts at known frames:
cuts land on the first frame of the new shot, motion inside a shot is no cut,
sparser sampling finds the cut at the next sample, and `min_shot_seconds`
suppresses a cut that comes too soon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from videojobs.pipelines.frames import (
    SAMPLING_SPEC,
    AnalysisContext,
    SampledFrame,
    SamplingReport,
    VideoInfo,
    open_media,
    sample_frames,
    video_info,
)
from videojobs.pipelines.scenes import DEFAULT_THRESHOLD, PIPELINE, SPEC, ShotDetector
from videojobs.stack.sample_video import write_frames
from videojobs.storage import StorageKey
from videojobs.storage.local import LocalBlobStore

WIDTH, HEIGHT, FPS = 640, 360, 25
CUTS = (25, 60)
FRAMES = 90


def draw_shot(shot: int, frame: int, rng: np.random.Generator) -> np.ndarray:
    """Shot `shot`'s picture at `frame`: its own background colour and shapes,
    a black square that moves 5 px per frame through every shot, and fresh
    noise in every frame (so no two frames are identical)."""
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    kind = shot % 3
    if kind == 0:
        image[:] = (200, 80, 30)  # blue (BGR)
        cv2.circle(image, (320, 160), 90, (255, 255, 255), -1)
    elif kind == 1:
        image[:] = (40, 40, 210)  # red
        cv2.rectangle(image, (60, 40), (260, 300), (40, 200, 40), -1)
    else:
        image[:] = (60, 200, 220)  # yellow with grey stripes
        for x in range(0, WIDTH, 80):
            cv2.rectangle(image, (x, 0), (x + 30, HEIGHT), (90, 90, 90), -1)
    left = 20 + 5 * frame
    cv2.rectangle(image, (left, 250), (left + 50, 300), (0, 0, 0), -1)
    noisy = image.astype(np.int16) + rng.normal(0, 6, image.shape).astype(np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def shot_of(frame: int, cuts: tuple[int, ...]) -> int:
    """Which shot `frame` belongs to, given the first frames of shots 1, 2..."""
    return sum(frame >= cut for cut in cuts)


def write_video(path: Path, cuts: tuple[int, ...], frames: int) -> Path:
    rng = np.random.default_rng(7)
    write_frames(path, (draw_shot(shot_of(i, cuts), i, rng) for i in range(frames)), fps=FPS)
    return path


@pytest.fixture(scope="module")
def three_shots(tmp_path_factory) -> Path:
    """3.6 s, cuts at frames 25 (1.0 s) and 60 (2.4 s)."""
    return write_video(tmp_path_factory.mktemp("scenes") / "three.mp4", CUTS, FRAMES)


@pytest.fixture(scope="module")
def one_shot(tmp_path_factory) -> Path:
    """3 s of one shot with a moving square."""
    return write_video(tmp_path_factory.mktemp("scenes") / "one.mp4", (), 75)


def decoded_frames(path: Path, **sampling: Any) -> tuple[list[SampledFrame], VideoInfo]:
    with open(path, "rb") as source, open_media(source) as container:
        stream, info = video_info(container)
        frames = list(
            sample_frames(container, stream, SAMPLING_SPEC.validate(sampling), SamplingReport())
        )
    return frames, info


def run_scenes(
    path: Path, tmp_path: Path, parameters: dict | None = None, fps: float | None = None, **sampling
):
    """Feeds every sampled frame to a fresh analyzer; returns (findings by frame, result)."""
    frames, info = decoded_frames(path, **sampling)
    if fps is not None:
        info = VideoInfo(info.width, info.height, fps, info.duration, info.frame_count, info.codec)
    context = AnalysisContext(
        store=LocalBlobStore(tmp_path / "store"),
        output_prefix=StorageKey("jobs/x/attempts/1"),
        video=info,
    )
    analyzer = PIPELINE.analyzer(SPEC.validate(parameters or {}), context)
    findings = {}
    for frame in frames:
        found = analyzer.process(frame)
        json.dumps(found)  # findings must be JSON-shaped
        if found:
            findings[frame.index] = found
    result = analyzer.finish()
    json.dumps(result.section)
    json.dumps(result.summary)
    return findings, result


def test_cuts_are_reported_at_the_first_frame_of_each_new_shot(three_shots, tmp_path) -> None:
    """All frames sampled: cuts exactly at frames 25 and 60 (1.0 s and 2.4 s)."""
    findings, result = run_scenes(three_shots, tmp_path)
    cuts = result.section["cuts"]
    assert [c["frame"] for c in cuts] == [25, 60]
    assert [c["time"] for c in cuts] == pytest.approx([1.0, 2.4], abs=1e-6)
    assert all(DEFAULT_THRESHOLD < c["score"] <= 1.0 for c in cuts)
    assert result.summary == {"shots": 3}
    assert result.artifacts == []
    # Only shot starts carry findings: the first frame (score 0) and the two cuts.
    assert sorted(findings) == [0, 25, 60]
    assert findings[0] == [{"shot_start": True, "score": 0.0}]
    assert findings[25] == [{"shot_start": True, "score": cuts[0]["score"]}]
    assert findings[60] == [{"shot_start": True, "score": cuts[1]["score"]}]


def test_shots_tile_the_video_and_the_last_ends_one_frame_after_the_last_sample(
    three_shots, tmp_path
) -> None:
    """Shot i ends where shot i+1 starts; the last ends at 89/25 + 1/25 = 3.6 s."""
    _, result = run_scenes(three_shots, tmp_path)
    shots = result.section["shots"]
    assert [(s["index"], s["start_frame"], s["end_frame"]) for s in shots] == [
        (0, 0, 24),
        (1, 25, 59),
        (2, 60, 89),
    ]
    starts = [s["start_time"] for s in shots]
    ends = [s["end_time"] for s in shots]
    assert starts == pytest.approx([0.0, 1.0, 2.4], abs=1e-6)
    assert ends == pytest.approx([1.0, 2.4, 3.6], abs=1e-6)


def test_without_a_stream_rate_the_last_shot_ends_one_estimated_frame_later(
    three_shots, tmp_path
) -> None:
    """fps 0 in the header: the frame duration comes from the last two samples."""
    _, result = run_scenes(three_shots, tmp_path, fps=0.0, frame_stride=3)
    last = result.section["shots"][-1]
    assert last["end_frame"] == 87
    assert last["end_time"] == pytest.approx(87 / FPS + 1 / FPS, abs=1e-6)


def test_motion_inside_a_shot_is_no_cut(one_shot, tmp_path) -> None:
    """A square moving 5 px per frame over noise: one shot, no cut, and the
    change between neighbouring samples stays far below the threshold."""
    findings, result = run_scenes(one_shot, tmp_path)
    assert result.section["cuts"] == []
    assert result.summary == {"shots": 1}
    assert result.section["shots"] == [
        {"index": 0, "start_time": 0.0, "end_time": 3.0, "start_frame": 0, "end_frame": 74}
    ]
    assert list(findings) == [0]
    frames, _ = decoded_frames(one_shot)
    detector = ShotDetector()
    signatures = [detector.signature(f.image) for f in frames]
    changes = [detector.difference(a, b) for a, b in zip(signatures, signatures[1:], strict=False)]
    assert max(changes) < DEFAULT_THRESHOLD / 3


def test_sparser_sampling_finds_each_cut_at_the_next_sample(three_shots, tmp_path) -> None:
    """frame_stride=2 samples even frames: the cut at 25 shows at 26, the one at 60 at 60."""
    _, result = run_scenes(three_shots, tmp_path, frame_stride=2)
    frames = [c["frame"] for c in result.section["cuts"]]
    assert frames == [26, 60]
    for found, drawn in zip(frames, CUTS, strict=True):
        assert 0 <= found - drawn < 2
    assert [s["end_frame"] for s in result.section["shots"]] == [25, 59, 88]


def test_a_cut_sooner_than_min_shot_seconds_is_suppressed(tmp_path) -> None:
    """Cuts at frames 25 and 35 are 0.4 s apart: kept with min 0.3 s, the
    second dropped with the default 0.5 s."""
    video = write_video(tmp_path / "close.mp4", (25, 35), 60)
    _, kept = run_scenes(video, tmp_path, {"min_shot_seconds": 0.3})
    assert [c["frame"] for c in kept.section["cuts"]] == [25, 35]
    findings, suppressed = run_scenes(video, tmp_path)
    assert [c["frame"] for c in suppressed.section["cuts"]] == [25]
    assert sorted(findings) == [0, 25]
    assert [(s["start_frame"], s["end_frame"]) for s in suppressed.section["shots"]] == [
        (0, 24),
        (25, 59),
    ]


def test_threshold_one_finds_no_cut(three_shots, tmp_path) -> None:
    """No score exceeds 1, so threshold 1.0 keeps the whole video as one shot."""
    _, result = run_scenes(three_shots, tmp_path, {"threshold": 1.0})
    assert result.section["cuts"] == []
    assert result.summary == {"shots": 1}


def test_no_frames_give_no_shots(tmp_path) -> None:
    """An analyzer that saw nothing reports nothing."""
    context = AnalysisContext(
        store=LocalBlobStore(tmp_path / "store"),
        output_prefix=StorageKey("jobs/x/attempts/1"),
        video=VideoInfo(WIDTH, HEIGHT, FPS, None, None, "h264"),
    )
    result = PIPELINE.analyzer(SPEC.validate({}), context).finish()
    assert result.section == {"shots": [], "cuts": []}
    assert result.summary == {"shots": 0}


def test_spec_declares_threshold_and_min_shot_seconds() -> None:
    """Both parameters are floats; the threshold lives on the 0..1 score scale."""
    params = {p.name: p for p in SPEC.parameters}
    assert SPEC.name == "scenes"
    assert {name: p.type for name, p in params.items()} == {
        "threshold": "float",
        "min_shot_seconds": "float",
    }
    assert (params["threshold"].minimum, params["threshold"].maximum) == (0.0, 1.0)
    assert SPEC.validate({}) == {"threshold": DEFAULT_THRESHOLD, "min_shot_seconds": 0.5}
