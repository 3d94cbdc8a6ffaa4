"""Frame sampling: one decode, every parameter, indices and times from the
file, BGR conversion, and the batching of findings."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from videojobs.pipelines.base import ParameterError, PipelineFailure
from videojobs.pipelines.frames import (
    SAMPLING_SPEC,
    SamplingReport,
    open_media,
    sample_frames,
    to_bgr,
    video_info,
)
from videojobs.pipelines.media import check_frame_size
from videojobs.pipelines.runner import FrameBatcher
from videojobs.stack.sample_video import write_frames

FPS, FRAMES = 20, 60


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """60 frames at 20 fps; frame i has grey level 4*i in its left half."""
    path = tmp_path_factory.mktemp("sampling") / "numbered.mp4"

    def frames():
        for index in range(FRAMES):
            image = np.zeros((120, 160, 3), np.uint8)
            image[:, :80] = 4 * index
            image[:, 80:] = (0, 0, 255)  # pure red on the right (BGR)
            yield image

    write_frames(path, frames(), fps=FPS, crf=10)
    return path


def _sample(path, **parameters):
    report = SamplingReport()
    with open(path, "rb") as source, open_media(source) as container:
        stream, info = video_info(container)
        frames = list(sample_frames(container, stream, SAMPLING_SPEC.validate(parameters), report))
    return frames, report, info


def test_every_frame_with_its_index_and_time(numbered):
    frames, report, info = _sample(numbered)
    assert (info.width, info.height, info.fps, info.frame_count) == (160, 120, FPS, FRAMES)
    assert [f.index for f in frames] == list(range(FRAMES))
    assert [f.time for f in frames] == pytest.approx([i / FPS for i in range(FRAMES)])
    assert report.decoded_frames == report.sampled_frames == FRAMES
    # The picture is the one drawn for that index (grey level 4*i, red right half).
    for frame in frames:
        assert frame.image.shape == (120, 160, 3) and frame.image.dtype == np.uint8
        assert abs(int(frame.image[60, 40].mean()) - 4 * frame.index) <= 4
        blue, green, red = frame.image[60, 120]
        assert red > 200 and blue < 50 and green < 50


def test_stride_max_frames_window_and_rate(numbered):
    frames, _, _ = _sample(numbered, frame_stride=7)
    assert [f.index for f in frames] == list(range(0, FRAMES, 7))
    frames, report, _ = _sample(numbered, max_frames=5)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4] and report.sampled_frames == 5
    frames, _, _ = _sample(numbered, start_time=1.0, end_time=2.0)
    assert [f.index for f in frames] == list(range(20, 41))
    frames, _, _ = _sample(numbered, target_fps=4)
    assert [f.index for f in frames] == list(range(0, FRAMES, 5))
    frames, _, _ = _sample(numbered, start_time=0.5, frame_stride=2, target_fps=5, max_frames=3)
    assert [f.index for f in frames] == [10, 14, 18]


def test_sampling_parameters_are_checked():
    with pytest.raises(ParameterError) as caught:
        SAMPLING_SPEC.validate({"frame_stride": 0, "target_fps": -1, "max_frames": 1.5})
    assert {field for field, _ in caught.value.violations} == {
        "parameters.frame_stride",
        "parameters.target_fps",
        "parameters.max_frames",
    }


def test_fast_conversion_matches_swscale(numbered):
    with av.open(str(numbered)) as container:
        frame = next(container.decode(video=0))
        fast = to_bgr(frame)
        reference = frame.to_ndarray(format="bgr24")
    assert fast.shape == reference.shape
    assert np.abs(fast.astype(int) - reference.astype(int)).mean() < 2.0
    # A format other than 4:2:0 takes the general path.
    other = frame.reformat(format="rgb24")
    assert np.array_equal(to_bgr(other), cv2.cvtColor(other.to_ndarray(), cv2.COLOR_RGB2BGR))


def test_video_info_refuses_a_stream_over_the_pixel_cap(numbered):
    with open(numbered, "rb") as source:
        with open_media(source, "mp4", max_frame_pixels=160 * 120) as container:
            assert video_info(container)[1].width == 160  # at the cap: fine
        with open_media(source, "mp4", max_frame_pixels=160 * 120 - 1) as container:
            with pytest.raises(PipelineFailure) as caught:
                video_info(container)
    assert caught.value.reason == "FRAME_TOO_LARGE"
    assert "160x120 (19,200 pixels)" in caught.value.message
    assert "19,199 pixels" in caught.value.message


def test_a_decoded_frame_over_the_cap_is_refused(numbered):
    with open(numbered, "rb") as source, open_media(source, "mp4") as container:
        frame = next(container.decode(video=0))
    check_frame_size(frame, 160 * 120, 0)
    with pytest.raises(PipelineFailure) as caught:
        check_frame_size(frame, 160 * 120 - 1, 3)
    assert caught.value.reason == "FRAME_TOO_LARGE" and not caught.value.retryable
    assert caught.value.message.startswith("a frame of video stream 3 is 160x120")


def test_open_media_shows_ffmpeg_no_file_name(numbered):
    """PyAV hands a file object's name to FFmpeg as the input's URL."""
    with open(numbered, "rb") as source, open_media(source, "mp4") as container:
        assert str(numbered.parent) not in container.name
        assert "numbered" not in container.name


class Recorder:
    def __init__(self):
        self.partials = []

    def progress(self, fraction, stage):
        pass

    def partial_result(self, data):
        self.partials.append(data)


def test_findings_are_batched(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("videojobs.pipelines.runner.time.monotonic", lambda: clock[0])
    recorder = Recorder()
    batcher = FrameBatcher(recorder)
    for index in range(10):  # 10 entries within 0.1 s: no flush yet
        clock[0] += 0.01
        batcher.add({"index": index})
    assert recorder.partials == []
    clock[0] += 0.2  # now past 0.25 s since the last flush
    batcher.add({"index": 10})
    assert [len(p["frames"]) for p in recorder.partials] == [11]
    batcher.add({"index": 11})
    batcher.flush()
    assert [e["index"] for p in recorder.partials for e in p["frames"]] == list(range(12))


def test_batches_stay_within_what_job_service_accepts(monkeypatch):
    """Big findings are split into batches of at most PARTIAL_MAX_JSON_BYTES,
    sent at most every PARTIAL_MIN_INTERVAL_SECONDS; a single oversized entry
    goes out without its findings (counted)."""
    import json

    from videojobs.pipelines import runner

    clock = [100.0]
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr("videojobs.pipelines.runner.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("videojobs.pipelines.runner.time.sleep", sleep)
    recorder = Recorder()
    batcher = FrameBatcher(recorder)
    sent_at = []
    original = recorder.partial_result
    recorder.partial_result = lambda data: (sent_at.append(clock[0]), original(data))
    text = "T" * 1000
    for index in range(400):  # 400 entries of ~1 KB arrive at once: ~400 KB
        batcher.add({"index": index, "time": index / 25, "ocr": [{"text": text}]})
    batcher.add({"index": 400, "time": 16.0, "ocr": [{"text": "x" * 300_000}]})
    batcher.flush()
    sizes = [len(json.dumps(p, separators=(",", ":"))) for p in recorder.partials]
    assert max(sizes) <= runner.PARTIAL_MAX_JSON_BYTES + 100
    gaps = [later - earlier for earlier, later in zip(sent_at, sent_at[1:], strict=False)]
    assert min(gaps) >= runner.PARTIAL_MIN_INTERVAL_SECONDS - 1e-9
    frames = [e for p in recorder.partials for e in p["frames"]]
    assert [e["index"] for e in frames] == list(range(401))
    assert frames[-1] == {"index": 400, "time": 16.0, "truncated": {"ocr": 1}}
