"""Makes small videos with known content, with PyAV only (no numpy needed).

Used by `make demo` and by the tests: the probe numbers of such a video are
known exactly (size, frame rate, frame count, codec, audio layout).
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import BinaryIO

import av


def _frame_bytes(width: int, height: int, index: int, frames: int) -> bytes:
    """An RGB picture: a background whose hue moves with time and a bar that sweeps across."""
    background = bytes(((index * 7) % 256, (64 + index * 3) % 256, (200 - index) % 256))
    bar = b"\xff\xff\xff"
    bar_width = max(2, width // 10)
    bar_left = (index * (width - bar_width)) // max(1, frames - 1)
    row = background * bar_left + bar * bar_width + background * (width - bar_left - bar_width)
    return row * height


def write_sample_video(
    target: str | os.PathLike[str] | BinaryIO,
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    frames: int = 50,
    codec: str = "libx264",
    container_format: str = "mp4",
    audio_sample_rate: int | None = None,
    audio_channels: int = 2,
) -> None:
    """Encodes `frames` frames of `width`x`height` at `fps` into `target`.

    With `audio_sample_rate`, adds an AAC track of silence as long as the video.
    """
    with av.open(target, mode="w", format=container_format) as container:
        video = container.add_stream(codec, rate=fps)
        video.width = width
        video.height = height
        video.pix_fmt = "yuv420p"
        # Small GOP and no B-frame reordering keep short files simple to reason about.
        video.codec_context.gop_size = fps
        video.codec_context.max_b_frames = 0
        audio = None
        if audio_sample_rate:
            layout = "stereo" if audio_channels == 2 else "mono"
            audio = container.add_stream("aac", rate=audio_sample_rate, layout=layout)
        for index in range(frames):
            frame = av.VideoFrame(width, height, "rgb24")
            plane = frame.planes[0]
            data = _frame_bytes(width, height, index, frames)
            if plane.line_size != width * 3:
                stride = plane.line_size
                padded = bytearray(stride * height)
                for y in range(height):
                    padded[y * stride : y * stride + width * 3] = data[
                        y * width * 3 : (y + 1) * width * 3
                    ]
                data = bytes(padded)
            plane.update(data)
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            for packet in video.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            _write_silence(container, audio, seconds=frames / fps)


def _write_silence(container, audio, seconds: float) -> None:
    samples_per_frame = audio.codec_context.frame_size or 1024
    total = int(audio.codec_context.sample_rate * seconds)
    layout = audio.codec_context.layout.name
    pts = 0
    while pts < total:
        count = min(samples_per_frame, total - pts)
        frame = av.AudioFrame(format="fltp", layout=layout, samples=count)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate = audio.codec_context.sample_rate
        frame.pts = pts
        pts += count
        for packet in audio.encode(frame):
            container.mux(packet)
    for packet in audio.encode():
        container.mux(packet)


def write_frames(
    target: str | os.PathLike[str] | BinaryIO,
    frames,
    *,
    fps: int = 25,
    codec: str = "libx264",
    container_format: str = "mp4",
    crf: int = 18,
) -> int:
    """Encodes BGR uint8 numpy frames (all the same size, even dimensions)
    into `target`; returns how many were written. For tests and benchmarks that
    draw known content (text, codes, cuts) into each frame."""
    written = 0
    with av.open(target, mode="w", format=container_format) as container:
        stream = None
        for image in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.codec_context.gop_size = fps
                stream.codec_context.max_b_frames = 0
                if codec == "libx264":
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = written
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
            written += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return written


def write_audio_only(
    target: str | os.PathLike[str] | BinaryIO,
    *,
    seconds: float = 1.0,
    sample_rate: int = 44100,
    channels: int = 1,
) -> None:
    """An MP4 with one AAC track of silence and no video stream."""
    with av.open(target, mode="w", format="mp4") as container:
        layout = "stereo" if channels == 2 else "mono"
        audio = container.add_stream("aac", rate=sample_rate, layout=layout)
        _write_silence(container, audio, seconds=seconds)


def main() -> None:
    """`python -m videojobs.stack.sample_video OUT.mp4`: writes a 2 s 320x240 sample."""
    import sys

    write_sample_video(sys.argv[1], audio_sample_rate=44100)


if __name__ == "__main__":
    main()
