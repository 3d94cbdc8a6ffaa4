"""The `thumbnails` pipeline on real encoded videos: the JPEGs it stores decode,
have the stated size and byte count, show the shot they came from, respect
`max_width` and the aspect ratio, and come at the stated times."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from videojobs.pipelines.base import ParameterError, PipelineFailure
from videojobs.pipelines.frames import (
    SAMPLING_SPEC,
    AnalysisContext,
    SamplingReport,
    open_media,
    sample_frames,
    video_info,
)
from videojobs.pipelines.thumbnails import PIPELINE, SPEC
from videojobs.stack.sample_video import write_frames
from videojobs.storage import StorageKey
from videojobs.storage.local import LocalBlobStore

WIDTH, HEIGHT, FPS = 640, 360, 25
PREFIX = StorageKey("jobs/x/attempts/1")
# Background colours (BGR) of the three shots; each also has its own shapes.
SHOT_COLOURS = ((200, 80, 30), (40, 40, 210), (60, 200, 220))
CUTS = (25, 60)


def draw_frame(shot: int, frame: int, rng: np.random.Generator) -> np.ndarray:
    """Shot `shot`'s picture at `frame`: background colour, shapes, a moving
    square and fresh noise."""
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    image[:] = SHOT_COLOURS[shot % 3]
    if shot % 3 == 0:
        cv2.circle(image, (320, 160), 90, (255, 255, 255), -1)
    elif shot % 3 == 1:
        cv2.rectangle(image, (60, 40), (260, 300), (40, 200, 40), -1)
    else:
        for x in range(0, WIDTH, 80):
            cv2.rectangle(image, (x, 0), (x + 30, HEIGHT), (90, 90, 90), -1)
    left = 20 + 4 * frame
    cv2.rectangle(image, (left, 250), (left + 50, 300), (0, 0, 0), -1)
    noisy = image.astype(np.int16) + rng.normal(0, 6, image.shape).astype(np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def draw_video(path: Path, frames: int, cuts: tuple[int, ...]) -> tuple[Path, list[np.ndarray]]:
    """Writes the video and returns it with the pictures as drawn."""
    rng = np.random.default_rng(11)
    drawn = [draw_frame(sum(i >= c for c in cuts), i, rng) for i in range(frames)]
    write_frames(path, drawn, fps=FPS)
    return path, drawn


@pytest.fixture(scope="module")
def three_shots(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """3.6 s, 90 frames, cuts at frames 25 and 60."""
    return draw_video(tmp_path_factory.mktemp("thumbs") / "three.mp4", 90, CUTS)


@pytest.fixture(scope="module")
def four_seconds(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """4.0 s, 100 frames, one cut at frame 50."""
    return draw_video(tmp_path_factory.mktemp("thumbs") / "four.mp4", 100, (50,))


def run_thumbnails(
    path: Path, store: LocalBlobStore, parameters: dict | None = None, **sampling: Any
):
    """Decodes `path` for real and feeds every sample to a fresh analyzer;
    returns (findings by frame index, result)."""
    findings: dict[int, list[dict]] = {}
    with open(path, "rb") as source, open_media(source) as container:
        stream, info = video_info(container)
        context = AnalysisContext(store=store, output_prefix=PREFIX, video=info)
        analyzer = PIPELINE.analyzer(SPEC.validate(parameters or {}), context)
        for frame in sample_frames(
            container, stream, SAMPLING_SPEC.validate(sampling), SamplingReport()
        ):
            found = analyzer.process(frame)
            json.dumps(found)
            if found:
                findings[frame.index] = found
    result = analyzer.finish()
    json.dumps(result.section)
    json.dumps(result.summary)
    return findings, result


def stored_image(store: LocalBlobStore, key: str) -> tuple[bytes, np.ndarray]:
    with store.open_read(StorageKey(key)) as blob:
        data = blob.read()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, f"{key} does not decode as an image"
    return data, image


def mean_colour(image: np.ndarray) -> np.ndarray:
    return image.reshape(-1, 3).mean(axis=0)


def test_one_jpeg_per_shot_from_the_first_frame_of_each_shot(three_shots, tmp_path) -> None:
    """Three shots give three JPEGs of frames 0, 25 and 60; each decodes at the
    stated size, has the stated byte count, and shows its shot's colours."""
    video, drawn = three_shots
    store = LocalBlobStore(tmp_path / "store")
    findings, result = run_thumbnails(video, store)
    images = result.section["images"]
    assert result.summary == {"thumbnails": 3}
    assert [i["index"] for i in images] == [0, 1, 2]
    assert [i["frame"] for i in images] == [0, 25, 60]
    assert [i["time"] for i in images] == pytest.approx([0.0, 1.0, 2.4], abs=1e-6)
    shot_means = [mean_colour(drawn[i["frame"]].astype(np.float64)) for i in images]
    for number, image in enumerate(images):
        key = StorageKey(image["key"])  # a valid, hence relative, key
        assert key == PREFIX.child("thumbnails", f"{number:04d}.jpg")
        assert key.is_within(PREFIX)
        data, decoded = stored_image(store, image["key"])
        assert image["size_bytes"] == len(data) == store.stat(key).size_bytes
        assert (image["width"], image["height"]) == (320, 180)  # 640x360 halved
        assert decoded.shape == (image["height"], image["width"], 3)
        # The JPEG looks like the frame it came from, and unlike the other shots.
        distances = [np.abs(mean_colour(decoded) - m).max() for m in shot_means]
        assert distances[number] < 6, distances
        assert all(d > 30 for n, d in enumerate(distances) if n != number), distances
        assert findings[image["frame"]] == [{"thumbnail": image["key"], "index": number}]
    assert sorted(findings) == [0, 25, 60]
    # The artifacts are the same images, and exactly these are stored.
    assert [(a.key.value, a.media_type, a.size_bytes, a.extra) for a in result.artifacts] == [
        (
            i["key"],
            "image/jpeg",
            i["size_bytes"],
            {k: i[k] for k in ("index", "time", "frame", "width", "height")},
        )
        for i in images
    ]
    assert [b.key.value for b in store.list(PREFIX)] == [i["key"] for i in images]


@pytest.mark.parametrize(
    ("max_width", "expected"),
    [
        (200, (200, 113)),
        (320, (320, 180)),
        (639, (639, 359)),
        (640, (640, 360)),
        (1000, (640, 360)),
    ],
)
def test_max_width_keeps_the_aspect_ratio_and_never_upscales(
    three_shots, tmp_path, max_width: int, expected: tuple[int, int]
) -> None:
    """Width is capped at max_width, height follows the 16:9 aspect (rounded)."""
    video, _ = three_shots
    store = LocalBlobStore(tmp_path / "store")
    _, result = run_thumbnails(
        video, store, {"mode": "interval", "max_width": max_width, "max_thumbnails": 1}
    )
    (image,) = result.section["images"]
    assert (image["width"], image["height"]) == expected
    assert abs(image["height"] / image["width"] - HEIGHT / WIDTH) < 1 / image["width"]
    _, decoded = stored_image(store, image["key"])
    assert decoded.shape[:2] == (expected[1], expected[0])


def test_interval_mode_takes_one_image_per_interval(four_seconds, tmp_path) -> None:
    """4 s at 1 s intervals: images at 0, 1, 2 and 3 s (frames 0, 25, 50, 75),
    the last two showing the second shot."""
    video, drawn = four_seconds
    store = LocalBlobStore(tmp_path / "store")
    findings, result = run_thumbnails(video, store, {"mode": "interval", "interval_seconds": 1.0})
    images = result.section["images"]
    assert result.summary == {"thumbnails": 4}
    assert [i["time"] for i in images] == pytest.approx([0.0, 1.0, 2.0, 3.0], abs=1e-6)
    assert [i["frame"] for i in images] == [0, 25, 50, 75]
    assert sorted(findings) == [0, 25, 50, 75]
    for image in images:
        _, decoded = stored_image(store, image["key"])
        drawn_mean = mean_colour(drawn[image["frame"]].astype(np.float64))
        assert np.abs(mean_colour(decoded) - drawn_mean).max() < 6


def test_interval_mode_takes_the_first_sample_at_or_after_each_interval(
    four_seconds, tmp_path
) -> None:
    """Every 3rd frame sampled (0, 3, ... 99): 0 s, then 27 (1.08 s), 51 (2.04 s), 75 (3.0 s)."""
    video, _ = four_seconds
    store = LocalBlobStore(tmp_path / "store")
    _, result = run_thumbnails(
        video, store, {"mode": "interval", "interval_seconds": 1.0}, frame_stride=3
    )
    assert [i["frame"] for i in result.section["images"]] == [0, 27, 51, 75]


def test_max_thumbnails_caps_the_images_made_and_stored(four_seconds, tmp_path) -> None:
    """Half-second intervals would give 8 images; the cap of 3 keeps the first 3."""
    video, _ = four_seconds
    store = LocalBlobStore(tmp_path / "store")
    findings, result = run_thumbnails(
        video, store, {"mode": "interval", "interval_seconds": 0.5, "max_thumbnails": 3}
    )
    assert result.summary == {"thumbnails": 3}
    # 0.5 s falls between frames 12 and 13: the first sample at or after it is 13 (0.52 s).
    assert [i["time"] for i in result.section["images"]] == pytest.approx([0.0, 0.52, 1.0])
    assert sorted(findings) == [0, 13, 25]
    assert len(list(store.list(PREFIX))) == 3
    assert len(result.artifacts) == 3


def test_quality_changes_the_size(four_seconds, tmp_path) -> None:
    """The same frame at quality 20 is much smaller than at quality 95."""
    video, _ = four_seconds
    sizes = {}
    for quality in (20, 95):
        store = LocalBlobStore(tmp_path / f"store-{quality}")
        _, result = run_thumbnails(
            video, store, {"mode": "interval", "quality": quality, "max_thumbnails": 1}
        )
        sizes[quality] = result.section["images"][0]["size_bytes"]
    assert sizes[20] * 2 < sizes[95]


def test_an_unknown_mode_is_refused(tmp_path) -> None:
    """At submit (validation names the field) and, as a last guard, by the analyzer."""
    with pytest.raises(ParameterError) as caught:
        SPEC.validate({"mode": "middle", "quality": 0})
    assert dict(caught.value.violations).keys() == {"parameters.mode", "parameters.quality"}
    parameters = {**SPEC.validate({}), "mode": "middle"}
    context = AnalysisContext(
        store=LocalBlobStore(tmp_path / "store"), output_prefix=PREFIX, video=None
    )
    with pytest.raises(PipelineFailure):
        PIPELINE.analyzer(parameters, context)


def test_defaults() -> None:
    """Shot mode, 5 s intervals, 320 px, quality 85, at most 100 images."""
    defaults = SPEC.validate({})
    assert SPEC.name == "thumbnails"
    assert {k: defaults[k] for k in ("mode", "interval_seconds", "max_width", "quality")} == {
        "mode": "shot",
        "interval_seconds": 5.0,
        "max_width": 320,
        "quality": 85,
    }
    assert defaults["max_thumbnails"] == 100
