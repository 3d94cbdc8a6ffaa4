"""Fixtures for every suite."""

from __future__ import annotations

import pytest

from support.videos import write_sample_video


@pytest.fixture(scope="session")
def sample_mp4(tmp_path_factory) -> bytes:
    """A 2 s, 320x240, 25 fps H.264 MP4 (50 frames) with stereo AAC at 44.1 kHz."""
    path = tmp_path_factory.mktemp("videos") / "sample.mp4"
    write_sample_video(path, width=320, height=240, fps=25, frames=50, audio_sample_rate=44100)
    return path.read_bytes()
