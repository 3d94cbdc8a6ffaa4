"""`probe`: container and stream metadata, read with PyAV.

Reports the container format, duration and bit rate, and per stream the codec,
picture size, frame rate, frame count (counted by demuxing when the header
lacks it, or always with `count_frames`), rotation, audio sample rate and
channels. It decodes the first frames of the first video stream, so a file that
opens but does not decode fails the job instead of reporting nonsense.

The input is opened with its recorded container format and the pixel cap
(`media.open_media`). A video stream over the cap is still described from its
headers (its size is what a client wants to know, and reading headers
allocates no picture), but proving that it decodes is refused before any frame
is decoded: with `verify_frames` above 0 (the default) the job fails with
FRAME_TOO_LARGE. Counting frames only demuxes, so it is allowed either way.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from typing import Any, BinaryIO

import av
import av.error

from videojobs.pipelines.base import (
    PipelineFailure,
    PipelineOutput,
    PipelineReporter,
)
from videojobs.pipelines.media import (
    check_frame_size,
    check_stream_size,
    ffmpeg_reason,
    format_name_of,
    open_media,
)
from videojobs.pipelines.specs import PROBE_SPEC

log = logging.getLogger(__name__)

# Declared in `specs`, which job-service reads without importing this module.
SPEC = PROBE_SPEC


def _rate(value: Fraction | None) -> float | None:
    return round(float(value), 6) if value else None


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return round(float(value * time_base), 6)


def _describe_stream(stream: av.stream.Stream) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "index": stream.index,
        "type": stream.type,
        "codec": stream.codec_context.name if stream.codec_context else None,
        "duration_seconds": _seconds(stream.duration, stream.time_base),
        "bit_rate": stream.codec_context.bit_rate or None if stream.codec_context else None,
        "language": stream.language,
    }
    if stream.type == "video":
        ctx = stream.codec_context
        entry.update(
            width=ctx.width,
            height=ctx.height,
            frame_rate=_rate(stream.average_rate or stream.guessed_rate or stream.base_rate),
            pixel_format=ctx.pix_fmt,
            frame_count=stream.frames or None,
            frame_count_source="header" if stream.frames else None,
            rotation=_rotation_from_metadata(stream),
        )
    elif stream.type == "audio":
        ctx = stream.codec_context
        entry.update(sample_rate=ctx.sample_rate, channels=ctx.channels)
    return entry


def _rotation_from_metadata(stream: av.video.stream.VideoStream) -> int:
    try:
        return int(float(stream.metadata.get("rotate", 0))) % 360
    except ValueError:
        return 0


class ProbePipeline:
    """The `probe` pipeline."""

    spec = SPEC

    def run(self, source: BinaryIO, parameters: dict, reporter: PipelineReporter) -> PipelineOutput:
        """Probes `source`; see the module docstring. A `media.MediaSource`
        is opened with the format and pixel cap it carries; any other file
        object with the format identified from its first bytes."""
        reporter.progress(0.0, "opening")
        with open_media(source) as container:
            streams = [_describe_stream(s) for s in container.streams]
            container_info = {
                # The stable name jobs record (`mp4`, `matroska`...), not
                # FFmpeg's demuxer name.
                "format": format_name_of(container),
                "format_long_name": container.format.long_name,
                "duration_seconds": _seconds(container.duration, Fraction(1, av.time_base)),
                "bit_rate": container.bit_rate or None,
                "stream_count": len(streams),
            }
            reporter.partial_result({"section": "container", "container": container_info})
            video = [s for s in container.streams if s.type == "video"]
            if not video:
                raise PipelineFailure(
                    "input has no video stream", reason="NO_VIDEO_STREAM", retryable=False
                )
            first_video = video[0]
            main_index = first_video.index
            verify = parameters["verify_frames"]
            if verify:
                reporter.progress(0.05, "decoding")
                rotation = self._verify_decodes(container, first_video, verify)
                if rotation is not None:
                    streams[first_video.index]["rotation"] = rotation
            needs_count = [
                s.index
                for s in video
                if parameters["count_frames"] or not streams[s.index]["frame_count"]
            ]
            if needs_count:
                counts = self._count_frames(
                    container, needs_count, container_info["duration_seconds"], reporter
                )
                for index, count in counts.items():
                    streams[index]["frame_count"] = count
                    streams[index]["frame_count_source"] = "demux"
            for stream in streams:
                reporter.partial_result({"section": "stream", "stream": stream})
        reporter.progress(1.0, "done")
        result = {
            "pipeline": SPEC.name,
            "version": SPEC.version,
            "container": container_info,
            "streams": streams,
        }
        main = streams[main_index]
        summary = {
            "format": container_info["format"],
            "duration_seconds": container_info["duration_seconds"],
            "stream_count": len(streams),
            "video_codec": main["codec"],
            "width": main["width"],
            "height": main["height"],
            "frame_rate": main["frame_rate"],
            "frame_count": main["frame_count"],
        }
        return PipelineOutput(result=result, summary=summary)

    @staticmethod
    def _verify_decodes(container, stream, frames_wanted: int) -> int | None:
        """Decodes the first frames; returns the display rotation of the first one.
        A stream or frame over the pixel cap fails (FRAME_TOO_LARGE) before
        the decoder allocates it."""
        max_frame_pixels = check_stream_size(stream)
        rotation = None
        decoded = 0
        try:
            container.seek(0)
            for frame in container.decode(stream):
                check_frame_size(frame, max_frame_pixels, stream.index)
                if rotation is None:
                    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
                decoded += 1
                if decoded >= frames_wanted:
                    break
        except MemoryError:
            raise  # the memory limit, not a broken stream
        except av.error.FFmpegError as exc:
            raise PipelineFailure(
                f"video stream {stream.index} does not decode ({ffmpeg_reason(exc)})",
                reason="INPUT_NOT_DECODABLE",
            ) from None
        if decoded == 0:
            raise PipelineFailure(
                f"video stream {stream.index} holds no decodable frame",
                reason="INPUT_NOT_DECODABLE",
            )
        return rotation

    @staticmethod
    def _count_frames(container, indexes: list[int], duration: float | None, reporter) -> dict:
        """Counts packets that carry a frame, per video stream, by demuxing (no decode)."""
        counts = dict.fromkeys(indexes, 0)
        wanted = [container.streams[i] for i in indexes]
        last_reported = 0.0
        try:
            container.seek(0)
            for packet in container.demux(*wanted):
                if packet.size == 0:
                    continue  # the flush packet at the end of each stream
                counts[packet.stream.index] += 1
                if duration and packet.pts is not None and packet.time_base is not None:
                    done = min(0.99, 0.1 + 0.89 * float(packet.pts * packet.time_base) / duration)
                    if done - last_reported >= 0.05:
                        reporter.progress(done, "counting frames")
                        last_reported = done
        except MemoryError:
            raise  # the memory limit, not a broken stream
        except av.error.FFmpegError as exc:
            raise PipelineFailure(
                f"input breaks off while demuxing ({ffmpeg_reason(exc)})",
                reason="INPUT_NOT_DECODABLE",
            ) from None
        return counts


PIPELINE = ProbePipeline()
