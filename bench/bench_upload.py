"""`make bench` (upload): a 1 GiB SubmitVideo against a raw grpc.aio stream
of the same bytes into a servicer that drops them, in one run, and how much
job-service's resident memory grows meanwhile.

The file is a real MP4 (a short clip) followed by a 1 GiB `free` box, so
job-service accepts it as a video and creates the job. The raw stream sends
the same bytes, in chunks of the same size, to a grpc.aio server in a
process of its own whose handler only counts them. Both run twice, in turns;
the best of each is shown. Numbers are printed, never asserted (targets:
upload >= 80 % of the raw stream; RSS growth <= 64 MiB for 1 GiB).
"""

from __future__ import annotations

import asyncio
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
from benchkit import job_service, report_only, service_env

from videojobs.client import DEFAULT_CHUNK_SIZE, AsyncJobClient
from videojobs.stack.__main__ import Child
from videojobs.stack.sample_video import write_sample_video

MIB = 1024 * 1024
PADDING = 1024 * MIB
RUNS = 2
SINK_METHOD = "/bench.Sink/Drop"


def make_big_mp4(path: Path) -> int:
    """A playable clip followed by a `free` box of PADDING zero bytes."""
    write_sample_video(path, width=160, height=120, fps=10, frames=10)
    with open(path, "ab") as out:
        out.write(struct.pack(">I4sQ", 1, b"free", 16 + PADDING))  # 64-bit box size
        zeros = bytes(8 * MIB)
        for _ in range(PADDING // len(zeros)):
            out.write(zeros)
    return path.stat().st_size


def _chunks(path: Path, size: int):
    with open(path, "rb") as source:
        while chunk := source.read(size):
            yield chunk


async def raw_stream(address: str, path: Path) -> float:
    """Seconds to stream the file's bytes to the sink."""
    async with grpc.aio.insecure_channel(address) as channel:
        drop = channel.stream_unary(SINK_METHOD)

        async def requests():
            for chunk in _chunks(path, DEFAULT_CHUNK_SIZE):
                yield chunk

        started = time.perf_counter()
        await drop(requests())
        return time.perf_counter() - started


async def submit(address: str, path: Path) -> float:
    """Seconds to upload the file with the client library (SubmitVideo)."""
    async with AsyncJobClient(address, token="") as client:
        started = time.perf_counter()
        job = await client.submit(path, pipeline="probe")
        seconds = time.perf_counter() - started
        await client.cancel(job.job_id)
        return seconds


class RssWatch:
    """Samples a process's resident memory every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = self.baseline = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def sink_main() -> None:
    """The raw servicer: counts the bytes of each stream and answers empty."""

    async def drop(request_iterator, context):
        async for _ in request_iterator:
            pass
        return b""

    async def serve() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 * MIB)])
        handler = grpc.stream_unary_rpc_method_handler(drop)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("bench.Sink", {"Drop": handler})]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"sink: listening on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


async def measure(server: Child, sink: Child, path: Path, size: int) -> None:
    raw, upload, growth = [], [], []
    for _ in range(RUNS):
        raw.append(await raw_stream(sink.address, path))
        with RssWatch(server.process.pid) as rss:
            upload.append(await submit(server.address, path))
        growth.append(rss.peak - rss.baseline)
    best_raw, best_upload = min(raw), min(upload)
    raw_rate, upload_rate = size / MIB / best_raw, size / MIB / best_upload
    print(
        f"upload: {size / MIB:.0f} MiB in {DEFAULT_CHUNK_SIZE // 1024} KiB chunks, best of {RUNS}"
    )
    print(f"  raw grpc.aio stream into a servicer that drops it: {raw_rate:.0f} MiB/s")
    print(
        f"  SubmitVideo to job-service (stored, checked, job created): {upload_rate:.0f} MiB/s "
        f"({100 * upload_rate / raw_rate:.0f} % of raw; target 80 %)"
    )
    print(
        f"  job-service resident memory growth during the upload: "
        f"{max(growth) / MIB:.1f} MiB (target <= 64 MiB)"
    )


async def run() -> None:
    with tempfile.TemporaryDirectory(prefix="videojobs-bench-upload-") as scratch:
        root = Path(scratch)
        path = root / "big.mp4"
        size = make_big_mp4(path)
        async with job_service(root / "data", MIN_FREE_BYTES="0") as server:
            sink = Child("sink", [sys.executable, __file__, "--sink"], service_env(root / "sink"))
            try:
                await asyncio.to_thread(sink.wait_ready)
                await measure(server, sink, path, size)
            finally:
                sink.stop()


def main() -> None:
    """Runs the measurement and prints it; exits 0 whatever it finds."""
    if sys.argv[1:] == ["--sink"]:
        sink_main()
        return
    report_only("upload", run)


if __name__ == "__main__":
    main()
