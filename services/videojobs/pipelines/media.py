"""Opening inputs with PyAV, locked down: shared by the pipelines and by
job-service's upload check (is this really a video container?).

An upload is a program for the demuxer and the decoders, so nothing about an
open is left to the file:

- the demuxer is forced to the container format recorded for the job (see
  `containers`), never guessed by FFmpeg's probing;
- FFmpeg sees no file name: PyAV would hand a file object's `.name` to FFmpeg
  as the input's URL, which FFmpeg prints in errors and resolves a playlist's
  relative entries against;
- every nested open a demuxer attempts (playlist segments, QuickTime data
  references) is refused and logged, and only the `file` protocol is allowed;
- frames have a pixel cap: a video stream whose size is over it is refused
  before any of its frames is decoded (FRAME_TOO_LARGE), and the decoders are
  told the cap too (`max_pixels`), so a size change in the middle of a stream
  cannot make them allocate larger pictures either.

FFmpeg decodes the first frames of a stream while it opens a container (to
learn the pixel format, the reordering delay...). So every input is first
opened from its headers alone, with no decoder allowed; only when no video
stream is over the cap is it opened again the usual way, with the cap handed
to those opening decoders. One gap remains: a stream that FLV or MPEG-PS
demuxers only discover while reading packets gets no decoder options from
PyAV, and if no header states its size (Sorenson Spark or VP6 in FLV; codec
parsers give the size of nearly everything else) FFmpeg decodes its first
pictures at whatever size they claim. The worker's per-job memory limit bounds
that case; job-service's upload check (`check_is_media_container`) never
allows a decoder at all.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

import av
import av.error

from videojobs.pipelines.base import PipelineFailure
from videojobs.pipelines.containers import (
    ALLOWED_FORMATS,
    SNIFF_BYTES,
    ContainerFormat,
    NotAContainer,
    UnsupportedContainer,
    sniff_container,
)

log = logging.getLogger(__name__)

# The largest picture decoded: 8K UHD. A decoder's memory grows with the
# picture size times the frames it keeps (references, one per frame thread),
# and a stream states its own size: a 750 KB file can claim 16000x16000.
DEFAULT_MAX_FRAME_PIXELS = 7680 * 4320

# Formats FFmpeg can "open" that are not video containers: still images and
# text that its probing mistakes for ANSI art or subtitles. Opens are forced to
# an allowed demuxer, so this is a second line of defence.
NON_CONTAINER_FORMATS = frozenset({"image2", "tty", "txt", "lrc", "srt", "ass", "webvtt", "mpjpeg"})

# A decoder name that matches no decoder: FFmpeg opens no decoder while it
# reads the headers (`codec_whitelist` is the only switch that reaches the
# decoders of streams a demuxer finds while opening).
_NO_DECODER = "none"
_FORMAT_BY_DEMUXER = {f.demuxer: f.name for f in ALLOWED_FORMATS.values()}
# Longest part of a refused URL written to the log (it is the file's text).
_LOGGED_URL_CHARS = 120


def ffmpeg_reason(exc: Exception) -> str:
    """The library's own words for an FFmpeg error, without the file name
    (which, for file objects, is a repr that may mention a host path)."""
    return getattr(exc, "strerror", None) or type(exc).__name__


class MediaSource:
    """A job's input as the pipelines receive it: a read-only, seekable view
    of the bytes that carries the container format recorded for them and the
    pixel cap, so `open_media(source)` opens it exactly as the job says.

    It has no `name` on purpose (see the module docstring). It does not own
    the underlying file: closing it leaves `raw` open for its owner to close.
    A pipeline that reads the container opens it with `open_media(source)`,
    never with `av.open`, which would let FFmpeg guess the format.
    """

    def __init__(
        self,
        raw: BinaryIO,
        format_name: str,
        max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
    ) -> None:
        self._raw = raw
        self.format_name = format_name
        self.max_frame_pixels = max_frame_pixels

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that is left when negative)."""
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Moves the read position like `io.IOBase.seek`."""
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        """The read position."""
        return self._raw.tell()

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Always seekable (blob stores hand out seekable readers)."""
        return True

    def writable(self) -> bool:
        """Never writable."""
        return False

    def close(self) -> None:
        """Does nothing: the underlying file belongs to whoever opened it."""


def identify_container(source: BinaryIO) -> str:
    """The allowed container format (its name in `ALLOWED_FORMATS`) that the
    bytes of `source` start with (from its first byte, wherever its position
    is), by the same rules job-service applies at upload; `source` is left at
    the position it had.

    For jobs accepted before the format was recorded. Raises PipelineFailure:
    UNSUPPORTED_CONTAINER for a recognised format that is not opened (a
    playlist, an image...), INPUT_NOT_MEDIA for anything else.
    """
    position = source.tell()
    try:
        source.seek(0)
        head = source.read(SNIFF_BYTES)
    finally:
        source.seek(position)
    try:
        return sniff_container(head).name
    except UnsupportedContainer as exc:
        raise PipelineFailure(
            f"the input is {exc.format_label}, which is not accepted: {exc.why}",
            reason="UNSUPPORTED_CONTAINER",
        ) from None
    except NotAContainer as exc:
        raise PipelineFailure(
            f"the input is not a video container: {exc}", reason="INPUT_NOT_MEDIA"
        ) from None


def allowed_container(format_name: str) -> ContainerFormat:
    """The allowed container format called `format_name`, or PipelineFailure
    (UNSUPPORTED_CONTAINER, not retryable) for any other name."""
    container_format = ALLOWED_FORMATS.get(format_name)
    if container_format is None:
        raise PipelineFailure(
            f"the container format {format_name[:40]!r} is not supported "
            f"(supported: {', '.join(sorted(ALLOWED_FORMATS))})",
            reason="UNSUPPORTED_CONTAINER",
        )
    return container_format


def open_media(
    source: BinaryIO,
    format_name: str | None = None,
    *,
    max_frame_pixels: int | None = None,
) -> av.container.InputContainer:
    """Opens `source` (seekable, binary) with the demuxer of
    `ALLOWED_FORMATS[format_name]` forced, locked down as the module docstring
    describes, or raises PipelineFailure.

    `format_name` and `max_frame_pixels` default to those a `MediaSource`
    carries; for any other file object, the format is identified from its
    first bytes (`identify_container`) and the cap is DEFAULT_MAX_FRAME_PIXELS.

    Failures (none retryable): an unknown format name (UNSUPPORTED_CONTAINER);
    bytes the demuxer cannot read, or holding no stream (INPUT_NOT_MEDIA).
    The returned container's video streams carry the cap: `check_stream_size`
    and the decoders read it from there. When a video stream is over the cap
    the container is the one opened from the headers alone (sizes, durations
    and codecs as the headers state them; pixel formats may be unknown).
    """
    if isinstance(source, MediaSource):
        format_name = format_name if format_name is not None else source.format_name
        if max_frame_pixels is None:
            max_frame_pixels = source.max_frame_pixels
    if format_name is None:
        format_name = identify_container(source)
    if max_frame_pixels is None:
        max_frame_pixels = DEFAULT_MAX_FRAME_PIXELS
    if max_frame_pixels < 1:
        raise ValueError(f"max_frame_pixels must be positive, not {max_frame_pixels}")
    container_format = allowed_container(format_name)
    # FFmpeg sees this nameless view, never `source`, whose name may be a host path.
    reader = MediaSource(source, format_name, max_frame_pixels)
    start = reader.tell()
    headers = _open_checked(reader, container_format.demuxer, decoder_options=None)
    if any(_pixels(stream) > max_frame_pixels for stream in headers.streams.video):
        return _with_pixel_cap(headers, max_frame_pixels)
    headers.close()
    reader.seek(start)
    container = _open_checked(
        reader, container_format.demuxer, decoder_options={"max_pixels": str(max_frame_pixels)}
    )
    return _with_pixel_cap(container, max_frame_pixels)


def check_is_media_container(source: BinaryIO, format_name: str) -> str:
    """Opens `source` from its headers alone, with the demuxer of `format_name`
    forced and no decoder allowed, as job-service checks a finished upload:
    the server process never decodes a picture of a client's file (the
    workers do, in memory-limited child processes). Returns the format's name
    (`format_name` itself), or raises PipelineFailure."""
    container_format = allowed_container(format_name)
    with _open_checked(
        MediaSource(source, format_name), container_format.demuxer, decoder_options=None
    ) as container:
        return format_name_of(container)


def format_name_of(container: av.container.InputContainer) -> str:
    """The name in `ALLOWED_FORMATS` of the format `container` was opened
    with by `open_media` (FFmpeg's demuxer name for any other container)."""
    return _FORMAT_BY_DEMUXER.get(container.format.name, container.format.name)


def frame_pixel_cap(stream: av.video.stream.VideoStream) -> int:
    """The pixel cap `open_media` gave `stream` (DEFAULT_MAX_FRAME_PIXELS for a
    stream of a container opened otherwise)."""
    context = stream.codec_context
    options = context.options if context is not None else {}
    try:
        return int(options["max_pixels"])
    except (KeyError, ValueError):
        return DEFAULT_MAX_FRAME_PIXELS


def check_stream_size(stream: av.video.stream.VideoStream) -> int:
    """Raises PipelineFailure (FRAME_TOO_LARGE) when the size `stream`'s
    header states is over its pixel cap; call before decoding any of its
    frames. Returns the cap, for `check_frame_size`."""
    cap = frame_pixel_cap(stream)
    if _pixels(stream) > cap:
        context = stream.codec_context
        raise _too_large(f"video stream {stream.index}", context.width, context.height, cap)
    return cap


def check_frame_size(frame: av.VideoFrame, cap: int, stream_index: int) -> None:
    """Raises PipelineFailure (FRAME_TOO_LARGE) for a decoded frame over `cap`
    pixels (a stream whose size changes after its header)."""
    if frame.width * frame.height > cap:
        raise _too_large(f"a frame of video stream {stream_index}", frame.width, frame.height, cap)


def _too_large(what: str, width: int, height: int, cap: int) -> PipelineFailure:
    return PipelineFailure(
        f"{what} is {width}x{height} ({width * height:,} pixels), over the limit of "
        f"{cap:,} pixels per frame",
        code="INVALID_ARGUMENT",
        reason="FRAME_TOO_LARGE",
        retryable=False,
    )


def _pixels(stream: av.stream.Stream) -> int:
    context = stream.codec_context
    if context is None:
        return 0
    return max(0, context.width or 0) * max(0, context.height or 0)


def refuse_nested_open(url: str, flags: int, options: dict) -> None:
    """The `io_open` of every open: a demuxer wants to open another file or
    URL (a playlist's segment, a data reference). Logged and refused, always;
    PyAV re-raises the PipelineFailure (UNSUPPORTED_CONTAINER) from the call
    that asked for the open."""
    log.warning("refused a nested open by the demuxer: %.*r", _LOGGED_URL_CHARS, url)
    raise PipelineFailure(
        "the input refers to other files or URLs, which are never opened",
        reason="UNSUPPORTED_CONTAINER",
    )


def _open_checked(
    reader: MediaSource, demuxer: str, decoder_options: dict[str, str] | None
) -> av.container.InputContainer:
    """One forced open. Without `decoder_options` no decoder may open (the
    headers alone); with them, FFmpeg's opening decoders get these options
    (for the streams its demuxer knows before reading packets)."""
    options = {"protocol_whitelist": "file"}
    if demuxer == "mov":
        # QuickTime data references name other files to read samples from.
        options["enable_drefs"] = "0"
    if decoder_options is None:
        options["codec_whitelist"] = _NO_DECODER
    else:
        options.update(decoder_options)
    try:
        container = av.open(
            reader, mode="r", format=demuxer, options=options, io_open=refuse_nested_open
        )
    except MemoryError:
        raise
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


def _with_pixel_cap(
    container: av.container.InputContainer, max_frame_pixels: int
) -> av.container.InputContainer:
    # PyAV opens each stream's decoder at the first decode, with these options;
    # options given to av.open never reach those decoders.
    for stream in container.streams.video:
        context = stream.codec_context
        if context is not None:
            context.options = {**context.options, "max_pixels": str(max_frame_pixels)}
    return container
