"""`make bench`: measures the service pair as real processes on this machine.

- upload throughput of SubmitVideo (a large, noisy H.264 file made here),
- end-to-end latency of small `probe` jobs (submit -> RUNNING -> SUCCEEDED)
  and throughput with one worker of concurrency 2.

Numbers are printed, never asserted: speed is a measurement, not a test.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av

from videojobs.client import JobClient
from videojobs.stack.__main__ import _start_pair, _stop_pair
from videojobs.stack.sample_video import write_sample_video
from videojobs.v1 import job_pb2

TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}


def noisy_video(path: Path, frames: int = 240, width: int = 640, height: int = 480) -> None:
    """Random pixels compress badly: a big file from few frames, made quickly."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "0"}
        for index in range(frames):
            frame = av.VideoFrame(width, height, "gray")
            frame.planes[0].update(os.urandom(frame.planes[0].buffer_size))
            frame.pts, frame.time_base = index, Fraction(1, 24)
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    """Runs the measurements and prints them."""
    with tempfile.TemporaryDirectory(prefix="videojobs-bench-") as scratch:
        root = Path(scratch)
        env = dict(
            os.environ,
            VIDEOJOBS_DATA_DIR=str(root / "data"),
            VIDEOJOBS_LISTEN="127.0.0.1:0",
            VIDEOJOBS_WORKER_LISTEN="127.0.0.1:0",
            VIDEOJOBS_WORKER_CONCURRENCY="2",
            VIDEOJOBS_LOG_LEVEL="WARNING",
        )
        big = root / "big.mp4"
        noisy_video(big)
        small = root / "small.mp4"
        write_sample_video(small, width=320, height=240, fps=25, frames=50, audio_sample_rate=44100)
        server, worker = _start_pair(env)
        try:
            with JobClient(server.address) as client:
                size = big.stat().st_size
                started = time.perf_counter()
                client.submit(big, pipeline="probe", chunk_size=1024 * 1024)
                upload_seconds = time.perf_counter() - started
                print(
                    f"upload: {size / 2**20:.1f} MiB in {upload_seconds:.2f} s = "
                    f"{size / 2**20 / upload_seconds:.1f} MiB/s (1 MiB chunks, sha256 checked, "
                    "container check included)"
                )
                client.wait(client.list_jobs(page_size=1)[0][0].job_id)

                count = 30
                started = time.perf_counter()
                submitted = [client.submit(small).job_id for _ in range(count)]
                submit_seconds = time.perf_counter() - started
                latencies, queue_waits = [], []
                for job_id in submitted:
                    job = client.wait(job_id)
                    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job
                    created = job.create_time.ToDatetime()
                    latencies.append((job.end_time.ToDatetime() - created).total_seconds())
                    queue_waits.append((job.start_time.ToDatetime() - created).total_seconds())
                total = time.perf_counter() - started
                print(
                    f"submit: {count} small uploads in {submit_seconds:.2f} s "
                    f"({count / submit_seconds:.1f}/s)"
                )
                print(
                    f"probe jobs: {count} in {total:.2f} s = {count / total:.1f} jobs/s "
                    "(1 worker, concurrency 2, one child process per job)"
                )
                print(
                    f"job latency create->end: median {statistics.median(latencies) * 1000:.0f} ms, "
                    f"max {max(latencies) * 1000:.0f} ms; queue wait median "
                    f"{statistics.median(queue_waits) * 1000:.0f} ms"
                )
        finally:
            _stop_pair(server, worker)


if __name__ == "__main__":
    main()
