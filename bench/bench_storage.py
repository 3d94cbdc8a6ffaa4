"""`make bench` (storage): bytes over gRPC against bytes on disk, in one run.

- BlobService Write and Read throughput against job-service (a real process)
  next to the local store's own throughput on the same disk (the ratio is what
  going through gRPC costs);
- the latency of a `probe` job on a 50 MB input with a worker that reads it
  through BlobService, and with one given job-service's storage directly;
- S3 upload and download throughput against a local S3-protocol server
  (moto_server, from the dev tools), when it is installed.

Numbers are printed, never asserted.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from bench_service import noisy_video

from videojobs.client import JobClient
from videojobs.stack.__main__ import Child, _stop_pair
from videojobs.storage import StorageKey
from videojobs.storage.local import LocalBlobStore
from videojobs.v1 import blob_service_pb2 as bs
from videojobs.v1 import blob_service_pb2_grpc, job_pb2

MIB = 1024 * 1024
CHUNK = MIB
RUNS = 3


def _mib_s(size: int, seconds: float) -> float:
    return size / MIB / seconds


def _write_messages(key: str, data: bytes):
    for offset in range(0, len(data), CHUNK):
        chunk = data[offset : offset + CHUNK]
        yield bs.WriteRequest(
            key=key if offset == 0 else "",
            write_offset=offset,
            data=chunk,
            finish_write=offset + len(chunk) >= len(data),
        )


def blob_service_vs_local(address: str, data: bytes, scratch: Path) -> None:
    """Write and read the same bytes through BlobService and the local store."""
    options = [("grpc.max_receive_message_length", 8 * MIB)]
    with grpc.insecure_channel(address, options=options) as channel:
        blobs = blob_service_pb2_grpc.BlobServiceStub(channel)
        writes, reads = [], []
        for _ in range(RUNS):
            key = f"uploads/{uuid.uuid4().hex}"
            started = time.perf_counter()
            blobs.Write(_write_messages(key, data), timeout=600)
            writes.append(_mib_s(len(data), time.perf_counter() - started))
            started = time.perf_counter()
            received = sum(len(r.data) for r in blobs.Read(bs.ReadRequest(key=key), timeout=600))
            reads.append(_mib_s(received, time.perf_counter() - started))
    store = LocalBlobStore(scratch / "local-store")
    local_writes, local_reads = [], []
    for _ in range(RUNS):
        key = StorageKey(f"bench/{uuid.uuid4().hex}")
        started = time.perf_counter()
        with store.open_writer(key) as writer:
            for offset in range(0, len(data), CHUNK):
                writer.write(data[offset : offset + CHUNK])
            writer.commit()
        local_writes.append(_mib_s(len(data), time.perf_counter() - started))
        started = time.perf_counter()
        with store.open_read(key) as source:
            while source.read(CHUNK):
                pass
        local_reads.append(_mib_s(len(data), time.perf_counter() - started))
    size = len(data) / MIB
    for name, remote, local in (
        ("write", writes, local_writes),
        ("read", reads, local_reads),
    ):
        r, loc = statistics.median(remote), statistics.median(local)
        print(
            f"BlobService {name} of {size:.0f} MiB: {r:.0f} MiB/s (runs {_spread(remote)}); "
            f"local store {loc:.0f} MiB/s (runs {_spread(local)}); ratio {r / loc:.0%}"
        )


def worker_latency(env: dict[str, str], video: Path, direct: bool) -> list[float]:
    """create->end seconds of probe jobs on `video`, one worker."""
    bin_dir = Path(sys.executable).parent
    server = Child("job-service", [str(bin_dir / "videojobs-server")], env)
    worker_env = dict(env, VIDEOJOBS_ADDRESS=server.wait_ready())
    # Separate data directories: only the storage URL can make them share bytes.
    worker_env["VIDEOJOBS_DATA_DIR"] = env["VIDEOJOBS_DATA_DIR"] + "-worker"
    if direct:
        worker_env["VIDEOJOBS_STORAGE_URL"] = str(Path(env["VIDEOJOBS_DATA_DIR"]) / "storage")
    worker = Child("worker-service", [str(bin_dir / "videojobs-worker")], worker_env)
    worker.wait_ready()
    try:
        latencies = []
        with JobClient(server.address) as client:
            for _ in range(RUNS):
                job = client.submit(video, pipeline="probe")
                done = client.wait(job.job_id)
                assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
                started = done.start_time.ToDatetime()
                latencies.append((done.end_time.ToDatetime() - started).total_seconds())
        return latencies
    finally:
        _stop_pair(server, worker)


def s3_throughput(data: bytes, scratch: Path) -> None:
    """Upload and download through S3BlobStore against moto_server."""
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        print("S3: moto_server is not installed (make install adds it); skipped")
        return
    from videojobs.storage.s3 import S3BlobStore

    process = subprocess.Popen(
        [str(moto), "-p", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        endpoint = None
        deadline = time.monotonic() + 30
        while endpoint is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if "Running on http://" in line:
                endpoint = line.split("Running on ", 1)[1].split()[0]
        if endpoint is None:
            print("S3: moto_server did not start; skipped")
            return
        import boto3

        credentials = dict(
            aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
        )
        boto3.client("s3", endpoint_url=endpoint, **credentials).create_bucket(Bucket="bench")
        store = S3BlobStore(
            "bench",
            endpoint_url=endpoint,
            access_key_id="bench",
            secret_access_key="bench",
            region="us-east-1",
        )
        uploads, downloads = [], []
        for _ in range(RUNS):
            key = StorageKey(f"bench/{uuid.uuid4().hex}")
            started = time.perf_counter()
            with store.open_writer(key) as writer:
                for offset in range(0, len(data), CHUNK):
                    writer.write(data[offset : offset + CHUNK])
                writer.commit()
            uploads.append(_mib_s(len(data), time.perf_counter() - started))
            started = time.perf_counter()
            with store.open_read(key) as source:
                while source.read(CHUNK):
                    pass
            downloads.append(_mib_s(len(data), time.perf_counter() - started))
        store.close()
        print(
            f"S3 (moto_server on loopback) {len(data) / MIB:.0f} MiB: upload "
            f"{statistics.median(uploads):.0f} MiB/s (runs {_spread(uploads)}), download "
            f"{statistics.median(downloads):.0f} MiB/s (runs {_spread(downloads)}); moto itself "
            "is the limit here, not a measure of a real object store"
        )
    finally:
        process.terminate()
        process.wait(10)


def _spread(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


def main() -> None:
    """Runs the storage measurements and prints them."""
    with tempfile.TemporaryDirectory(prefix="videojobs-bench-storage-") as scratch_name:
        scratch = Path(scratch_name)
        big = scratch / "big.mp4"
        noisy_video(big, frames=240)
        data = big.read_bytes()
        medium = scratch / "medium.mp4"
        noisy_video(medium, frames=115)  # about 50 MB
        env = dict(
            os.environ,
            VIDEOJOBS_DATA_DIR=str(scratch / "data"),
            VIDEOJOBS_LISTEN="127.0.0.1:0",
            VIDEOJOBS_WORKER_LISTEN="127.0.0.1:0",
            VIDEOJOBS_LOG_LEVEL="WARNING",
        )
        env.pop("VIDEOJOBS_STORAGE_URL", None)
        server = Child("job-service", [str(Path(sys.executable).parent / "videojobs-server")], env)
        try:
            server.wait_ready()
            blob_service_vs_local(server.address, data, scratch)
        finally:
            server.stop()
        shutil.rmtree(scratch / "data", ignore_errors=True)
        size = medium.stat().st_size / 1e6
        remote = worker_latency(env, medium, direct=False)
        shutil.rmtree(scratch / "data", ignore_errors=True)
        direct = worker_latency(env, medium, direct=True)
        print(
            f"probe of a {size:.0f} MB input, start->end: worker through BlobService "
            f"{statistics.median(remote) * 1000:.0f} ms (runs "
            f"{'/'.join(f'{v * 1000:.0f}' for v in remote)}), worker on the shared disk "
            f"{statistics.median(direct) * 1000:.0f} ms (runs "
            f"{'/'.join(f'{v * 1000:.0f}' for v in direct)})"
        )
        s3_throughput(data, scratch)


if __name__ == "__main__":
    main()
