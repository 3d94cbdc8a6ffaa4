"""Starting and stopping the real commands (videojobs-server, videojobs-worker)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A port that was free a moment ago (for tests that restart a server on one port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServiceProcess:
    """A command that prints `...: listening on HOST:PORT` once it serves."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.address: str | None = None
        self._ready = threading.Event()
        self.stdout_lines: list[str] = []

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        """Starts the command and waits until it says where it listens."""
        self._ready.clear()
        self.address = None
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=subprocess.PIPE, stderr=log, text=True
        )
        log.close()
        threading.Thread(target=self._read_stdout, args=(self.process,), daemon=True).start()
        if not self._ready.wait(timeout):
            self.kill()
            raise AssertionError(f"{self.name} did not start in {timeout}s:\n{self.log_tail()}")
        return self

    def _read_stdout(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.stdout_lines.append(line)
            if "listening on " in line and self.address is None:
                self.address = line.rsplit("listening on ", 1)[1].strip()
                self._ready.set()

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Sends `signum`."""
        if self.running():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """kill -9, and reap."""
        if self.running():
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=30)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; kill -9 if it does not exit in time. Returns the exit code."""
        assert self.process is not None
        if self.running():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
            raise AssertionError(f"{self.name} ignored SIGTERM for {timeout}s") from None

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Waits for the process to exit by itself."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def log_tail(self, lines: int = 40) -> str:
        """The end of its log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class Stack:
    """job-service and workers of one test, sharing one data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[ServiceProcess] = []
        self.port = free_port()
        self.server: ServiceProcess | None = None

    @property
    def address(self) -> str:
        """Where job-service listens."""
        return f"127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for the commands: everything under this test's data dir."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOJOBS_")}
        env.update(
            VIDEOJOBS_DATA_DIR=str(self.data_dir),
            VIDEOJOBS_ADDRESS=self.address,
            VIDEOJOBS_LISTEN=self.address,
            VIDEOJOBS_WORKER_LISTEN="127.0.0.1:0",
            VIDEOJOBS_HEARTBEAT_INTERVAL="0.5",
            VIDEOJOBS_LEASE_DURATION="4",
            VIDEOJOBS_SHUTDOWN_GRACE="1",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def start_server(self, **env: str) -> ServiceProcess:
        """Starts (or restarts) videojobs-server on this stack's port."""
        server = ServiceProcess(
            "videojobs-server",
            [str(BIN / "videojobs-server")],
            self.env(**env),
            self.root / "server.log",
        )
        self.processes.append(server)
        self.server = server.start()
        return server

    def start_worker(self, worker_id: str, **env: str) -> ServiceProcess:
        """Starts a videojobs-worker named `worker_id`."""
        worker = ServiceProcess(
            f"worker {worker_id}",
            [str(BIN / "videojobs-worker"), "--worker-id", worker_id],
            self.env(**env),
            self.root / f"worker-{worker_id}.log",
        )
        self.processes.append(worker)
        worker.start()
        wait_connected(worker)
        return worker

    def cli(
        self, *args: str, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Runs the `videojobs` CLI against this stack."""
        result = subprocess.run(
            [str(BIN / "videojobs"), "--address", self.address, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"videojobs {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def stop_all(self) -> None:
        """Stops every process this stack started (kill -9 for the stubborn)."""
        for process in reversed(self.processes):
            if process.running():
                process.signal(signal.SIGCONT)
                try:
                    process.terminate(timeout=15)
                except AssertionError:
                    pass
        deadline = time.monotonic() + 5
        for process in self.processes:
            while process.running() and time.monotonic() < deadline:
                time.sleep(0.05)
            process.kill()


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 of /proc/PID/stat is the parent pid (after the parenthesised name).
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def wait_connected(worker: ServiceProcess, timeout: float = 30.0) -> None:
    """Waits until the worker reports a live session with job-service."""
    import grpc

    from videojobs.v1 import worker_service_pb2, worker_service_pb2_grpc

    from support.waiting import eventually_sync

    with grpc.insecure_channel(worker.address) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)

        def connected() -> bool:
            try:
                status = stub.GetWorkerStatus(
                    worker_service_pb2.GetWorkerStatusRequest(), timeout=5, wait_for_ready=True
                )
            except grpc.RpcError:
                return False
            return status.connected

        eventually_sync(connected, timeout=timeout, what=f"{worker.name} to connect")
