"""Test inputs with known content."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

from videojobs.stack.sample_video import write_sample_video

__all__ = ["write_audio_only", "write_sample_video"]


def write_audio_only(path: Path, seconds: float = 1.0, sample_rate: int = 44100) -> None:
    """An MP4 with one AAC track of silence and no video."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        total = int(sample_rate * seconds)
        pts = 0
        while pts < total:
            count = min(1024, total - pts)
            frame = av.AudioFrame(format="fltp", layout="mono", samples=count)
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.sample_rate = sample_rate
            frame.pts = pts
            frame.time_base = Fraction(1, sample_rate)
            pts += count
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
