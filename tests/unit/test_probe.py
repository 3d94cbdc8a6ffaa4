"""The `probe` pipeline on real files with known content: the numbers it reports
come from the file, progress only grows, and bad input fails cleanly."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import av
import pytest

from videojobs.pipelines.base import PipelineFailure, PipelineOutput
from videojobs.pipelines.media import MediaSource
from videojobs.pipelines.probe import PIPELINE, SPEC
from videojobs.stack.sample_video import write_audio_only, write_sample_video

NOT_MEDIA_REASONS = {"INPUT_NOT_MEDIA", "INPUT_NOT_DECODABLE"}


class RecordingReporter:
    """Keeps everything a run reports, in order."""

    def __init__(self) -> None:
        self.progress_calls: list[tuple[float, str]] = []
        self.partials: list[dict] = []

    def progress(self, fraction: float, stage: str) -> None:
        self.progress_calls.append((fraction, stage))

    def partial_result(self, data: dict) -> None:
        self.partials.append(data)

    @property
    def fractions(self) -> list[float]:
        return [fraction for fraction, _ in self.progress_calls]


def run_probe(
    path: Path, parameters: dict[str, Any] | None = None
) -> tuple[PipelineOutput, RecordingReporter]:
    reporter = RecordingReporter()
    with open(path, "rb") as source:
        output = PIPELINE.run(source, SPEC.validate(parameters or {}), reporter)
    return output, reporter


def run_failing(path: Path, parameters: dict[str, Any] | None = None) -> PipelineFailure:
    reporter = RecordingReporter()
    with open(path, "rb") as source, pytest.raises(PipelineFailure) as caught:
        PIPELINE.run(source, SPEC.validate(parameters or {}), reporter)
    return caught.value


def streams_of(output: PipelineOutput, kind: str) -> list[dict]:
    return [s for s in output.result["streams"] if s["type"] == kind]


def assert_progress_well_formed(reporter: RecordingReporter) -> None:
    fractions = reporter.fractions
    assert fractions, "no progress reported"
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert all(b >= a for a, b in zip(fractions, fractions[1:], strict=False)), fractions
    assert fractions[-1] == 1.0


def top_level_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, start, end) of each top-level ISO-BMFF box."""
    boxes = []
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        kind = bytes(data[offset + 4 : offset + 8])
        header = 8
        if size == 1:
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
            header = 16
        elif size == 0:
            size = len(data) - offset
        boxes.append((kind, offset + header, offset + size))
        offset += size
    return boxes


# -- success ------------------------------------------------------------------


def test_mp4_h264_with_aac_audio(tmp_path: Path) -> None:
    """An H.264 mp4 with stereo AAC: format, duration, codec, size, rate, frame
    count and audio layout are what was written."""
    width, height, fps, frames, sample_rate, channels = 320, 240, 25, 50, 44100, 2
    path = tmp_path / "sample.mp4"
    write_sample_video(
        path,
        width=width,
        height=height,
        fps=fps,
        frames=frames,
        codec="libx264",
        container_format="mp4",
        audio_sample_rate=sample_rate,
        audio_channels=channels,
    )
    output, reporter = run_probe(path)

    container = output.result["container"]
    assert "mp4" in container["format"]
    assert container["duration_seconds"] == pytest.approx(frames / fps, abs=1 / fps)
    assert container["stream_count"] == 2
    assert output.result["pipeline"] == SPEC.name
    assert output.result["version"] == SPEC.version

    [video] = streams_of(output, "video")
    assert video["codec"] == "h264"
    assert (video["width"], video["height"]) == (width, height)
    assert video["frame_rate"] == pytest.approx(fps)
    assert video["frame_count"] == frames
    assert video["pixel_format"] == "yuv420p"
    assert video["rotation"] == 0

    [audio] = streams_of(output, "audio")
    assert audio["codec"] == "aac"
    assert audio["sample_rate"] == sample_rate
    assert audio["channels"] == channels

    summary = output.summary
    assert summary["video_codec"] == "h264"
    assert (summary["width"], summary["height"]) == (width, height)
    assert summary["frame_rate"] == pytest.approx(fps)
    assert summary["frame_count"] == frames
    assert summary["stream_count"] == 2
    assert summary["format"] == container["format"]
    assert summary["duration_seconds"] == container["duration_seconds"]
    assert_progress_well_formed(reporter)


def test_mono_audio_reports_one_channel(tmp_path: Path) -> None:
    """The channel count comes from the file: a mono track reports 1 channel."""
    path = tmp_path / "mono.mp4"
    write_sample_video(path, frames=10, audio_sample_rate=22050, audio_channels=1)
    output, _ = run_probe(path)
    [audio] = streams_of(output, "audio")
    assert (audio["sample_rate"], audio["channels"]) == (22050, 1)


def test_matroska_without_frame_count_is_counted_by_demuxing(tmp_path: Path) -> None:
    """Matroska headers state no frame count: probe counts packets and says so."""
    fps, frames = 25, 37
    path = tmp_path / "sample.mkv"
    write_sample_video(path, fps=fps, frames=frames, container_format="matroska")
    with av.open(str(path)) as container:
        assert not container.streams.video[0].frames, "precondition: header has no count"

    output, reporter = run_probe(path)
    assert "matroska" in output.result["container"]["format"]
    [video] = streams_of(output, "video")
    assert video["frame_count"] == frames
    assert video["frame_count_source"] == "demux"
    assert output.summary["frame_count"] == frames
    assert output.result["container"]["duration_seconds"] == pytest.approx(
        frames / fps, abs=1 / fps
    )
    assert_progress_well_formed(reporter)
    assert any(stage == "counting frames" for _, stage in reporter.progress_calls)


def test_mp4_frame_count_from_header_by_default(tmp_path: Path) -> None:
    """An mp4 header states the frame count; without count_frames it is used as is."""
    frames = 30
    path = tmp_path / "header.mp4"
    write_sample_video(path, frames=frames)
    output, reporter = run_probe(path)
    [video] = streams_of(output, "video")
    assert video["frame_count"] == frames
    assert video["frame_count_source"] == "header"
    assert all(stage != "counting frames" for _, stage in reporter.progress_calls)


def test_count_frames_forces_demux_count(tmp_path: Path) -> None:
    """With count_frames=True an mp4 is counted by demuxing and gives the same number."""
    frames = 41
    path = tmp_path / "count.mp4"
    write_sample_video(path, frames=frames, audio_sample_rate=48000)
    output, reporter = run_probe(path, {"count_frames": True})
    [video] = streams_of(output, "video")
    assert video["frame_count"] == frames
    assert video["frame_count_source"] == "demux"
    assert_progress_well_formed(reporter)


def test_numbers_come_from_the_file(tmp_path: Path) -> None:
    """A different size, rate and length give different numbers."""
    width, height, fps, frames = 160, 120, 10, 23
    path = tmp_path / "small.mp4"
    write_sample_video(path, width=width, height=height, fps=fps, frames=frames)
    output, reporter = run_probe(path)
    [video] = streams_of(output, "video")
    assert (video["width"], video["height"]) == (width, height)
    assert video["frame_rate"] == pytest.approx(fps)
    assert video["frame_count"] == frames
    assert output.result["container"]["stream_count"] == 1
    assert output.result["container"]["duration_seconds"] == pytest.approx(
        frames / fps, abs=1 / fps
    )
    assert streams_of(output, "audio") == []
    assert_progress_well_formed(reporter)


def test_partial_results_cover_container_and_every_stream(tmp_path: Path) -> None:
    """The container section comes first, then one partial result per stream,
    matching the final result."""
    path = tmp_path / "parts.mp4"
    write_sample_video(path, frames=12, audio_sample_rate=44100)
    output, reporter = run_probe(path)
    sections = [p["section"] for p in reporter.partials]
    assert sections[0] == "container"
    assert sections.count("container") == 1
    assert reporter.partials[0]["container"] == output.result["container"]
    stream_parts = [p["stream"] for p in reporter.partials if p["section"] == "stream"]
    assert len(stream_parts) == len(output.result["streams"]) == 2
    assert stream_parts == output.result["streams"]
    assert sorted(s["index"] for s in stream_parts) == [0, 1]


def test_verify_frames_zero_skips_decoding(tmp_path: Path) -> None:
    """verify_frames=0 decodes nothing (no decoding stage) but still probes."""
    path = tmp_path / "nodecode.mp4"
    write_sample_video(path, frames=8)
    output, reporter = run_probe(path, {"verify_frames": 0})
    assert all(stage != "decoding" for _, stage in reporter.progress_calls)
    assert output.summary["frame_count"] == 8
    assert_progress_well_formed(reporter)


def test_verify_frames_more_than_the_file_has(tmp_path: Path) -> None:
    """Asking to verify more frames than exist is fine: all there are decode."""
    path = tmp_path / "short.mp4"
    write_sample_video(path, frames=5)
    output, _ = run_probe(path, {"verify_frames": 1000})
    assert output.summary["frame_count"] == 5


# -- failures -----------------------------------------------------------------


def _assert_clean_failure(failure: PipelineFailure, reasons: set[str], tmp_path: Path) -> None:
    assert failure.reason in reasons, failure.reason
    assert failure.retryable is False
    assert failure.message
    assert str(tmp_path) not in failure.message
    assert str(tmp_path) not in str(failure)


def test_empty_input_is_not_media(tmp_path: Path) -> None:
    """Zero bytes: not a media container."""
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    _assert_clean_failure(run_failing(path), NOT_MEDIA_REASONS, tmp_path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_are_not_media(tmp_path: Path, seed: int) -> None:
    """Random bytes: not a media container."""
    path = tmp_path / "random.mp4"
    path.write_bytes(random.Random(seed).randbytes(64 * 1024))
    _assert_clean_failure(run_failing(path), NOT_MEDIA_REASONS, tmp_path)


def test_text_file_is_not_media(tmp_path: Path) -> None:
    """A plain text file (which FFmpeg may open as a 'tty' file) is refused."""
    path = tmp_path / "notes.txt"
    path.write_text("This is a plain text file.\nIt has lines.\n" * 100, encoding="utf-8")
    _assert_clean_failure(run_failing(path), NOT_MEDIA_REASONS, tmp_path)


def test_truncated_mp4_fails(tmp_path: Path) -> None:
    """An mp4 cut after its first 2000 bytes fails cleanly."""
    whole = tmp_path / "whole.mp4"
    write_sample_video(whole, frames=50)
    data = whole.read_bytes()
    assert len(data) > 2000
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[:2000])
    _assert_clean_failure(run_failing(truncated), NOT_MEDIA_REASONS, tmp_path)


def test_undecodable_video_data_fails(tmp_path: Path) -> None:
    """A well-formed mp4 whose picture data is zeroed opens but does not decode:
    INPUT_NOT_DECODABLE, not a report of nonsense."""
    whole = tmp_path / "whole.mp4"
    write_sample_video(whole, frames=10)
    data = bytearray(whole.read_bytes())
    [(start, end)] = [(s, e) for kind, s, e in top_level_boxes(data) if kind == b"mdat"]
    assert end - start > 0
    data[start:end] = bytes(end - start)
    zeroed = tmp_path / "zeroed.mp4"
    zeroed.write_bytes(bytes(data))
    _assert_clean_failure(run_failing(zeroed), {"INPUT_NOT_DECODABLE"}, tmp_path)


def test_audio_only_has_no_video_stream(tmp_path: Path) -> None:
    """An mp4 with only an audio track fails with NO_VIDEO_STREAM (after having
    reported the container)."""
    path = tmp_path / "audio.mp4"
    write_audio_only(path)
    with av.open(str(path)) as container:
        assert [s.type for s in container.streams] == ["audio"], "precondition"
    reporter = RecordingReporter()
    with open(path, "rb") as source, pytest.raises(PipelineFailure) as caught:
        PIPELINE.run(source, SPEC.validate({}), reporter)
    _assert_clean_failure(caught.value, {"NO_VIDEO_STREAM"}, tmp_path)
    assert [p["section"] for p in reporter.partials] == ["container"]
    assert reporter.partials[0]["container"]["stream_count"] == 1


@pytest.mark.parametrize(
    ("muxer", "codec", "expected"),
    [
        ("mp4", "libx264", "mp4"),
        ("mov", "libx264", "mp4"),
        ("matroska", "libx264", "matroska"),
        ("mpegts", "libx264", "mpegts"),
        ("avi", "mpeg4", "avi"),
    ],
)
def test_container_format_is_the_recorded_name(tmp_path: Path, muxer, codec, expected) -> None:
    """The format is the stable name jobs record (`mp4`, `matroska`...), not
    FFmpeg's demuxer name."""
    path = tmp_path / "clip"
    write_sample_video(path, frames=5, codec=codec, container_format=muxer)
    output, _ = run_probe(path)
    assert output.result["container"]["format"] == expected
    assert output.summary["format"] == expected


def test_recorded_format_is_forced(tmp_path: Path) -> None:
    """A MediaSource is opened with the format it carries, never guessed:
    Matroska bytes recorded as `mp4` do not open."""
    path = tmp_path / "clip.mkv"
    write_sample_video(path, frames=5, container_format="matroska")
    with open(path, "rb") as raw:
        output = PIPELINE.run(MediaSource(raw, "matroska"), SPEC.validate({}), RecordingReporter())
        assert output.summary["format"] == "matroska"
        raw.seek(0)
        with pytest.raises(PipelineFailure) as caught:
            PIPELINE.run(MediaSource(raw, "mp4"), SPEC.validate({}), RecordingReporter())
    _assert_clean_failure(caught.value, {"INPUT_NOT_MEDIA"}, tmp_path)
