"""Test inputs with known content (made with PyAV by the product's own sample
writer, so tests and `make demo` share one implementation)."""

from videojobs.stack.sample_video import write_audio_only, write_sample_video

__all__ = ["write_audio_only", "write_sample_video"]
