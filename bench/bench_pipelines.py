"""`make bench` (part 2): frames per second of frame sampling and of each
pipeline on a 720p, 30 s clip made here, next to Debian's `ffmpeg -i clip -f
null -` decoding the same clip in the same run.

Numbers are printed, never asserted.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from videojobs.pipelines import builtin_catalogue
from videojobs.pipelines.frames import (
    SAMPLING_SPEC,
    AnalysisContext,
    SamplingReport,
    open_media,
    sample_frames,
    video_info,
)
from videojobs.stack.sample_video import write_frames
from videojobs.storage import StorageKey
from videojobs.storage.local import LocalBlobStore

WIDTH, HEIGHT, FPS, SECONDS = 1280, 720, 30, 30
# Slow pipelines are timed on a prefix of the clip so the benchmark ends in
# minutes; fps is per analysed frame either way.
FRAME_BUDGET = {"ocr": 40, "detect": 150}


def make_clip(path: Path) -> None:
    """Moving shapes, a QR code, a caption and a hard cut every 5 s."""
    code = cv2.QRCodeEncoder.create().encode("videojobs-bench")
    code = cv2.resize(code, (code.shape[1] * 8, code.shape[0] * 8), interpolation=cv2.INTER_NEAREST)
    code = cv2.cvtColor(code, cv2.COLOR_GRAY2BGR)
    rng = np.random.default_rng(7)
    texture = rng.integers(0, 60, (HEIGHT, WIDTH, 3), dtype=np.uint8)

    def frames():
        for index in range(FPS * SECONDS):
            shot = index // (5 * FPS)
            image = texture.copy()
            image += np.uint8((shot * 40) % 160)
            x = (index * 7) % (WIDTH - 300)
            cv2.circle(image, (x + 100, 300), 80, (0, 200, 255), -1)
            side = code.shape[0]
            qx = (index * 3) % (WIDTH - side)
            image[HEIGHT - side - 20 : HEIGHT - 20, qx : qx + side] = code
            cv2.putText(
                image,
                f"SCENE {shot} FRAME {index}",
                (40, 80),
                cv2.FONT_HERSHEY_SIMPLEX,
                2,
                (255, 255, 255),
                4,
            )
            yield image

    write_frames(path, frames(), fps=FPS, crf=23)


def ffmpeg_fps(path: Path, frames: int) -> float | None:
    """Decode speed of Debian's ffmpeg, or None when it is not installed."""
    if shutil.which("ffmpeg") is None:
        return None
    started = time.perf_counter()
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], check=True)
    return frames / (time.perf_counter() - started)


def sampling_fps(path: Path) -> tuple[float, int]:
    """Decode + conversion to BGR arrays of every frame, as the pipelines get them."""
    with open(path, "rb") as source, open_media(source) as container:
        stream, _ = video_info(container)
        report = SamplingReport()
        started = time.perf_counter()
        count = sum(1 for _ in sample_frames(container, stream, SAMPLING_SPEC.validate({}), report))
        return count / (time.perf_counter() - started), count


def pipeline_fps(path: Path, name: str, scratch: Path) -> tuple[float, int]:
    """Frames per second of one pipeline's `process` (decode excluded)."""
    pipeline = builtin_catalogue().get(name)
    budget = FRAME_BUDGET.get(name, 0)
    with open(path, "rb") as source, open_media(source) as container:
        stream, info = video_info(container)
        frames = list(
            sample_frames(
                container, stream, SAMPLING_SPEC.validate({"max_frames": budget}), SamplingReport()
            )
        )
    store = LocalBlobStore(scratch / name)
    context = AnalysisContext(store, StorageKey("bench/attempts/1"), info)
    analyzer = pipeline.analyzer(pipeline.spec.validate({}), context)
    started = time.perf_counter()
    for frame in frames:
        analyzer.process(frame)
    analyzer.finish()
    return len(frames) / (time.perf_counter() - started), len(frames)


def probe_seconds(path: Path) -> float:
    """Wall time of the container pipeline `probe` with frame counting."""

    class Quiet:
        def progress(self, fraction, stage):
            pass

        def partial_result(self, data):
            pass

    probe = builtin_catalogue().get("probe")
    started = time.perf_counter()
    with open(path, "rb") as source:
        probe.run(source, probe.spec.validate({"count_frames": True}), Quiet())
    return time.perf_counter() - started


def main() -> None:
    """Runs the measurements and prints them."""
    with tempfile.TemporaryDirectory(prefix="videojobs-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        clip = scratch / "clip-720p-30s.mp4"
        print(f"making a {WIDTH}x{HEIGHT} {FPS} fps {SECONDS} s H.264 clip...", flush=True)
        make_clip(clip)
        frames = FPS * SECONDS
        # Best of three for both, interleaved, so a cold cache or a busy moment
        # does not decide the ratio.
        references, samplings = [], []
        for _ in range(3):
            references.append(ffmpeg_fps(clip, frames))
            samplings.append(sampling_fps(clip))
        reference = None if references[0] is None else max(references)
        sampled, count = max(samplings)
        print(f"frame sampling (PyAV decode + BGR arrays): {sampled:.1f} fps over {count} frames")
        if reference is None:
            print("ffmpeg: not installed (apt-get install ffmpeg) - no reference figure")
        else:
            print(
                f"ffmpeg -i clip -f null -: {reference:.1f} fps; sampling / ffmpeg = "
                f"{sampled / reference:.0%}"
            )
        print(f"probe (count_frames=true): {probe_seconds(clip):.2f} s for the whole clip")
        for name in ("scenes", "thumbnails", "detect", "ocr"):
            fps, analysed = pipeline_fps(clip, name, scratch)
            print(f"{name}: {fps:.1f} frames/s of analysis ({analysed} frames, decode excluded)")


if __name__ == "__main__":
    main()
