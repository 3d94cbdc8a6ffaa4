"""Opening inputs with PyAV, shared by the pipelines and by job-service's
upload check (is this really a video container?)."""

from __future__ import annotations

from typing import BinaryIO

import av
import av.error

from videojobs.pipelines.base import PipelineFailure

# Formats FFmpeg can "open" that are not video containers: still images and
# text that its probing mistakes for ANSI art or subtitles.
NON_CONTAINER_FORMATS = frozenset({"image2", "tty", "txt", "lrc", "srt", "ass", "webvtt", "mpjpeg"})


def ffmpeg_reason(exc: Exception) -> str:
    """The library's own words for an FFmpeg error, without the file name
    (which, for file objects, is a repr that may mention a host path)."""
    return getattr(exc, "strerror", None) or type(exc).__name__


def open_media(source: BinaryIO) -> av.container.InputContainer:
    """Opens `source` as a media container or raises PipelineFailure (INPUT_NOT_MEDIA)."""
    try:
        container = av.open(source, mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise PipelineFailure(
            f"input is not a readable media container ({ffmpeg_reason(exc)})",
            reason="INPUT_NOT_MEDIA",
        ) from None
    format_name = container.format.name
    if format_name in NON_CONTAINER_FORMATS or format_name.endswith("_pipe"):
        container.close()
        raise PipelineFailure(
            f"input is a {format_name!r} file, not a video container", reason="INPUT_NOT_MEDIA"
        )
    if not container.streams:
        container.close()
        raise PipelineFailure("input container holds no stream", reason="INPUT_NOT_MEDIA")
    return container


def check_is_media_container(source: BinaryIO) -> str:
    """Returns the container format name of `source`, or raises PipelineFailure."""
    with open_media(source) as container:
        return container.format.name
