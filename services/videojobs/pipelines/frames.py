"""Frame sampling shared by every frame pipeline: decode once per job, hand
each sampled frame to all the job's pipelines.

Sampling parameters (common to all pipelines of a job):
`frame_stride` (every n-th decoded frame), `max_frames` (stop after that many
samples), `start_time` / `end_time` (seconds), `target_fps` (at most this many
samples per second of video, by presentation time). Each sample carries its
frame index (0-based, in presentation order) and its time in seconds. They are
declared in `specs` (`SAMPLING_SPEC`, re-exported here), so job-service
validates them without PyAV.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import av
import av.error
import cv2
import numpy as np

from videojobs.pipelines.base import PipelineFailure, PipelineSpec
from videojobs.pipelines.media import (
    check_frame_size,
    check_stream_size,
    ffmpeg_reason,
    open_media,
)
from videojobs.pipelines.specs import SAMPLING_PARAMETERS, SAMPLING_SPEC
from videojobs.storage import BlobStore, StorageKey

# Corrupt packets tolerated before a stream counts as undecodable.
MAX_DECODE_ERRORS = 50


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: `image` is H x W x 3 uint8 in BGR order (OpenCV's)."""

    index: int
    time: float
    image: np.ndarray

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.image.shape[0])


@dataclass(frozen=True)
class VideoInfo:
    """What is known about the video before decoding."""

    width: int
    height: int
    fps: float
    duration: float | None
    frame_count: int | None
    codec: str


@dataclass
class ArtifactOut:
    """A file a pipeline wrote under the attempt's output prefix."""

    key: StorageKey
    media_type: str
    size_bytes: int
    extra: dict[str, Any]


@dataclass
class AnalysisContext:
    """What an analyzer may use besides frames: where to write files."""

    store: BlobStore
    output_prefix: StorageKey
    video: VideoInfo


@dataclass
class SectionResult:
    """A pipeline's section of the result document, its summary and files."""

    section: dict[str, Any]
    summary: dict[str, Any]
    artifacts: list[ArtifactOut]


class FrameAnalyzer(Protocol):
    """One pipeline's state over one job's sampled frames."""

    def process(self, frame: SampledFrame) -> list[dict[str, Any]]:
        """Findings in this frame (JSON-shaped); they go into the frame's entry
        of the result and out as partial results."""

    def finish(self) -> SectionResult:
        """The pipeline's section of the result, after the last frame."""


class FramePipeline(Protocol):
    """A pipeline that analyses sampled frames."""

    spec: PipelineSpec

    def analyzer(self, parameters: dict[str, Any], context: AnalysisContext) -> FrameAnalyzer:
        """A fresh analyzer for one job."""


@dataclass
class SamplingReport:
    """How sampling went: counts and any recovered problems."""

    decoded_frames: int = 0
    sampled_frames: int = 0
    decode_errors: int = 0
    warnings: list[str] | None = None


def video_info(
    container: av.container.InputContainer,
) -> tuple[av.video.stream.VideoStream, VideoInfo]:
    """The first video stream and what its header says.

    Raises PipelineFailure: NO_VIDEO_STREAM, UNSUPPORTED_CODEC, or
    FRAME_TOO_LARGE when the stream's size is over the container's pixel cap
    (see `media.open_media`), so a job fails before any frame is decoded.
    """
    streams = [s for s in container.streams if s.type == "video"]
    if not streams:
        raise PipelineFailure("input has no video stream", reason="NO_VIDEO_STREAM")
    stream = streams[0]
    if stream.codec_context is None or stream.codec_context.name is None:
        raise PipelineFailure("the video codec is not supported", reason="UNSUPPORTED_CODEC")
    check_stream_size(stream)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    return stream, VideoInfo(
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        fps=float(rate) if rate else 0.0,
        duration=duration,
        frame_count=stream.frames or None,
        codec=stream.codec_context.name,
    )


def sample_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    sampling: dict[str, Any],
    report: SamplingReport,
) -> Iterator[SampledFrame]:
    """Decodes `stream` once and yields the sampled frames.

    Corrupt packets in the middle are skipped and counted (a warning in
    `report`); a stream that yields no frame at all, or breaks down
    completely, raises PipelineFailure (INPUT_NOT_DECODABLE). A stream or a
    decoded frame over the pixel cap raises PipelineFailure (FRAME_TOO_LARGE).
    Running out of memory is never a decode error: MemoryError (FFmpeg's
    ENOMEM included) propagates.
    """
    max_frame_pixels = check_stream_size(stream)
    stride = sampling["frame_stride"]
    max_frames = sampling["max_frames"]
    start = sampling["start_time"]
    end = sampling["end_time"] or math.inf
    min_gap = 1.0 / sampling["target_fps"] if sampling["target_fps"] else 0.0
    stream.thread_type = "AUTO"  # frame and slice threads: decoding is the hot path
    time_base = stream.time_base
    counter = -1
    last_sample_time = -math.inf
    if start > 0:
        # Seek to the keyframe before start; frames are then skipped by time.
        container.seek(int(start / time_base), stream=stream, backward=True, any_frame=False)
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except MemoryError:
            raise
        except av.error.FFmpegError as exc:
            report.decode_errors += 1
            if report.decode_errors > MAX_DECODE_ERRORS or report.decoded_frames == 0:
                raise _undecodable(stream, exc) from None
            break  # the container breaks off here: keep what was decoded
        try:
            frames = packet.decode()
        except MemoryError:
            raise
        except av.error.FFmpegError as exc:
            report.decode_errors += 1
            if report.decode_errors > MAX_DECODE_ERRORS:
                raise _undecodable(stream, exc) from None
            continue
        for frame in frames:
            check_frame_size(frame, max_frame_pixels, stream.index)
            if frame.pts is None:
                continue
            report.decoded_frames += 1
            time = float(frame.pts * time_base)
            counter += 1
            index = _frame_index(frame, stream, counter)
            if time < start - 1e-6:
                continue
            if time > end + 1e-6:
                return
            if index % stride:
                continue
            if time - last_sample_time < min_gap - 1e-6:
                continue
            last_sample_time = time
            report.sampled_frames += 1
            yield SampledFrame(index=index, time=round(time, 6), image=to_bgr(frame))
            if max_frames and report.sampled_frames >= max_frames:
                return
    if report.decoded_frames == 0:
        raise PipelineFailure(
            f"video stream {stream.index} holds no decodable frame", reason="INPUT_NOT_DECODABLE"
        )


def to_bgr(frame: av.VideoFrame) -> np.ndarray:
    """The frame as an H x W x 3 BGR array. Planar 4:2:0 (nearly every H.264
    stream) is converted by OpenCV's SIMD, multi-threaded routine, which keeps
    sampling close to the decoder's own speed; anything else goes through
    swscale."""
    if (
        frame.format.name in ("yuv420p", "yuvj420p")
        and frame.width % 2 == 0
        and frame.height % 2 == 0
    ):
        return cv2.cvtColor(frame.to_ndarray(format=frame.format.name), cv2.COLOR_YUV2BGR_I420)
    return frame.to_ndarray(format="bgr24")


def _frame_index(frame: av.VideoFrame, stream, counter: int) -> int:
    """The frame's index in presentation order: from its timestamp where the
    frame rate is known (so it stays right after a seek), else by counting."""
    rate = stream.average_rate or stream.guessed_rate
    if rate and stream.time_base is not None:
        start = stream.start_time or 0
        return max(0, round(float((frame.pts - start) * stream.time_base * rate)))
    return counter


def _undecodable(stream, exc: Exception) -> PipelineFailure:
    return PipelineFailure(
        f"video stream {stream.index} does not decode ({ffmpeg_reason(exc)})",
        reason="INPUT_NOT_DECODABLE",
    )


__all__ = [
    "SAMPLING_PARAMETERS",
    "SAMPLING_SPEC",
    "AnalysisContext",
    "ArtifactOut",
    "FrameAnalyzer",
    "FramePipeline",
    "SampledFrame",
    "SamplingReport",
    "SectionResult",
    "VideoInfo",
    "open_media",
    "sample_frames",
    "video_info",
]
