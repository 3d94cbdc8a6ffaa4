"""`python -m videojobs.stack`: job-service and one worker in the foreground
(`make run`), or a scripted demonstration (`make demo`).

Both services run as their real commands in child processes; this launcher
only starts them, says where they listen, and stops them in order (worker
first, so it can hand its jobs back) on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from videojobs.common.config import (
    DEFAULT_ADDRESS,
    DEFAULT_DATA_DIR,
    DEFAULT_WORKER_LISTEN,
    env_default,
)

BIN = Path(sys.executable).parent
READY_TIMEOUT_SECONDS = 60


class Child:
    """A service command in its own session, whose stdout announces its address."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        self.address: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "listening on " in line and self.address is None:
                self.address = line.rsplit("listening on ", 1)[1].strip()
                self._ready.set()
        self._ready.set()  # it exited: stop waiting

    def wait_ready(self) -> str:
        """The address it listens on; exits the launcher if it failed to start."""
        self._ready.wait(READY_TIMEOUT_SECONDS)
        if self.address is None:
            self.stop()
            raise SystemExit(f"{self.name} failed to start (see its log above)")
        return self.address

    def stop(self, timeout: float = 90.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit within `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def _start_pair(env: dict[str, str]) -> tuple[Child, Child]:
    server = Child("job-service", [str(BIN / "videojobs-server")], env)
    server_address = server.wait_ready()
    worker_env = dict(env, VIDEOJOBS_ADDRESS=server_address)
    worker = Child("worker-service", [str(BIN / "videojobs-worker")], worker_env)
    try:
        worker.wait_ready()
    except SystemExit:
        server.stop()
        raise
    return server, worker


def _stop_pair(server: Child, worker: Child) -> None:
    worker.stop()
    server.stop()


def run(env: dict[str, str], data_dir: str) -> int:
    """Starts the pair and waits for Ctrl-C / SIGTERM, or for a child to die."""
    server, worker = _start_pair(env)
    bin_dir = os.path.relpath(BIN)
    print(
        f"""
job-service     listening on {server.address}   (SQLite and storage in {data_dir})
worker-service  listening on {worker.address}

Try, in another terminal:
  {bin_dir}/videojobs --address {server.address} submit VIDEO.mp4 --wait
  {bin_dir}/videojobs --address {server.address} list
  {bin_dir}/videojobs --address {server.address} fetch JOB_ID -o results/
  {bin_dir}/grpcurl -plaintext {server.address} list
  {bin_dir}/grpcurl -plaintext -d '{{"job_id": "JOB_ID"}}' {server.address} videojobs.v1.JobService/GetStatus
  {bin_dir}/grpcurl -plaintext {worker.address} videojobs.v1.WorkerService/GetWorkerStatus

Ctrl-C stops both.
""",
        flush=True,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.is_set():
        if server.process.poll() is not None or worker.process.poll() is not None:
            print("a service exited on its own; stopping the other", file=sys.stderr)
            _stop_pair(server, worker)
            return 1
        stop.wait(0.5)
    print("\nstopping worker-service, then job-service...", flush=True)
    _stop_pair(server, worker)
    return 0


def demo(env: dict[str, str]) -> int:
    """Makes a video, runs the pair on a scratch directory, submits, follows,
    fetches the result document over gRPC (the scratch directory, storage
    included, is gone when the demo ends), prints it, and stops."""
    from google.protobuf import json_format

    from videojobs.client import JobClient, job_state_name
    from videojobs.stack.sample_video import write_sample_video
    from videojobs.v1 import job_pb2

    with tempfile.TemporaryDirectory(prefix="videojobs-demo-") as scratch:
        video = Path(scratch) / "demo.mp4"
        print("making a 4 s 640x360 25 fps H.264 video with stereo AAC audio...", flush=True)
        write_sample_video(
            video, width=640, height=360, fps=25, frames=100, audio_sample_rate=48000
        )
        demo_env = dict(
            env,
            VIDEOJOBS_DATA_DIR=str(Path(scratch) / "data"),
            VIDEOJOBS_LISTEN="127.0.0.1:0",
            VIDEOJOBS_WORKER_LISTEN="127.0.0.1:0",
            VIDEOJOBS_LOG_LEVEL="WARNING",
        )
        server, worker = _start_pair(demo_env)
        print(f"job-service on {server.address}, worker on {worker.address}", flush=True)
        try:
            with JobClient(server.address) as client:
                job = client.submit(video, pipeline="probe", parameters={"count_frames": True})
                print(f"submitted job {job.job_id}; following its events:", flush=True)
                for event in client.follow(job.job_id):
                    kind = event.WhichOneof("payload")
                    detail = json_format.MessageToDict(getattr(event, kind))
                    text = json.dumps(detail, separators=(",", ":"))
                    print(f"  #{event.sequence:<3} {kind:<15} {text[:140]}", flush=True)
                final = client.get_status(job.job_id)
                state = job_state_name(final.state)
                print(f"\njob {final.job_id} {state} after {final.attempt} attempt(s)", flush=True)
                if final.state != job_pb2.JOB_STATE_SUCCEEDED:
                    print(f"error: {final.error.message or '(none given)'}", flush=True)
                    return 1
                # Fetched through job-service's BlobService, as any client would.
                document = client.read_result(final.job_id)
            print("\nresult document:", flush=True)
            print(json.dumps(document, indent=2, ensure_ascii=False), flush=True)
        finally:
            _stop_pair(server, worker)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m videojobs.stack`."""
    parser = argparse.ArgumentParser(prog="python -m videojobs.stack", description=__doc__)
    parser.add_argument("--demo", action="store_true", help="run the scripted demonstration")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    data_dir = env_default("VIDEOJOBS_DATA_DIR", DEFAULT_DATA_DIR)
    env.setdefault("VIDEOJOBS_LISTEN", env_default("VIDEOJOBS_LISTEN", DEFAULT_ADDRESS))
    env.setdefault(
        "VIDEOJOBS_WORKER_LISTEN", env_default("VIDEOJOBS_WORKER_LISTEN", DEFAULT_WORKER_LISTEN)
    )
    env["PYTHONUNBUFFERED"] = "1"
    return demo(env) if args.demo else run(env, data_dir)


if __name__ == "__main__":
    raise SystemExit(main())
