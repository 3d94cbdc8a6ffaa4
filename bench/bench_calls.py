"""`make bench` (calls): what one job and one call cost job-service.

job-service (SQLite, the embedded default) and one worker (concurrency 2)
run as their real commands; job-service has `sql_counter` loaded, which
counts the statements and transactions it runs. One client then:

1. runs 100 tiny `probe` jobs one at a time (submit, then `wait`);
2. runs 320 of them with 32 in flight (the peers benchmark's load);
3. with the worker stopped, times single calls: a health check (the floor
   of a unary call), GetStatus of a finished job, a full replay of a
   finished job's events, a submit of the 4.7 KB clip.

For each it reports job-service's CPU (user + system, from /proc) and the
SQL statements and transactions per job or call. The CPU of job-service's
event-loop thread is what limits its throughput. Numbers are printed, never
asserted.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from benchkit import service_env
from grpc_health.v1 import health_pb2, health_pb2_grpc

from videojobs.client import JobClient
from videojobs.stack.__main__ import BIN, Child
from videojobs.stack.sample_video import write_sample_video

BENCH = Path(__file__).resolve().parent
# job-service's own main, with the counter loaded first.
SERVER_WITH_COUNTER = (
    "import sys; import sql_counter; sys.argv = ['videojobs-server']; "
    "from videojobs.jobservice.main import main; sys.exit(main())"
)
SEQUENTIAL_JOBS = 100
LOADED_JOBS = 320
IN_FLIGHT = 32
CALLS = 300
COUNTS_TIMEOUT = 10.0


class Server:
    """The job-service child: its CPU and its SQL counts, read on demand."""

    def __init__(self, child: Child, counts_path: Path) -> None:
        self._child = child
        self._counts_path = counts_path

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self._child.process.pid}/stat").read_text().rsplit(")", 1)[1]
        utime, stime = fields.split()[11:13]
        return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")

    def counts(self) -> dict[str, int]:
        before = self._counts_path.stat().st_mtime_ns if self._counts_path.exists() else 0
        self._child.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + COUNTS_TIMEOUT
        while time.monotonic() < deadline:
            if self._counts_path.exists() and self._counts_path.stat().st_mtime_ns != before:
                return json.loads(self._counts_path.read_text())
            time.sleep(0.01)
        raise RuntimeError("job-service did not write its SQL counts")

    def measure(self, label: str, units: int, unit: str, work: Callable[[], None]) -> None:
        """Runs `work` and prints job-service's CPU and SQL per unit."""
        counts, cpu, started = self.counts(), self.cpu_seconds(), time.perf_counter()
        work()
        wall = time.perf_counter() - started
        cpu = self.cpu_seconds() - cpu
        after = self.counts()
        delta = {k: after.get(k, 0) - counts.get(k, 0) for k in after}
        statements = {
            k.split(" ", 1)[1]: v / units for k, v in delta.items() if k.startswith("statements")
        }
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in sorted(statements.items()) if v >= 0.05)
        print(
            f"calls: {label}: per {unit}: job-service CPU {1000 * cpu / units:.2f} ms, "
            f"wall {1000 * wall / units:.2f} ms; {sum(statements.values()):.1f} statements "
            f"({kinds or 'none'}) in {delta.get('transactions', 0) / units:.1f} transactions "
            f"({delta.get('write transactions', 0) / units:.1f} writes, "
            f"{delta.get('read transactions', 0) / units:.1f} reads)"
        )


def run(scratch: Path) -> None:
    video = scratch / "probe.mp4"
    write_sample_video(video, width=160, height=120, fps=25, frames=25)
    counts_path = scratch / "sql-counts.json"
    env = service_env(scratch / "data", WORKER_CONCURRENCY="2", WORKER_LISTEN="127.0.0.1:0")
    env.update(BENCH_SQL_COUNTS=str(counts_path), PYTHONPATH=str(BENCH))
    child = Child("job-service", [sys.executable, "-c", SERVER_WITH_COUNTER], env)
    worker: Child | None = None
    try:
        address = child.wait_ready()
        server = Server(child, counts_path)
        worker = Child(
            "worker-service", [str(BIN / "videojobs-worker")], dict(env, VIDEOJOBS_ADDRESS=address)
        )
        worker.wait_ready()
        with JobClient(address) as client:

            def one_job() -> str:
                job = client.submit(video, pipeline="probe")
                done = client.wait(job.job_id)
                if done.summary["width"] != 160:
                    raise RuntimeError(f"unexpected result of {job.job_id}: {done.summary}")
                return job.job_id

            for _ in range(IN_FLIGHT):  # warm-up: imports, caches, the worker's pool
                one_job()
            done: list[str] = []
            server.measure(
                "one job in flight",
                SEQUENTIAL_JOBS,
                "job",
                lambda: done.extend(one_job() for _ in range(SEQUENTIAL_JOBS)),
            )

            def loaded() -> None:
                with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
                    for future in [pool.submit(one_job) for _ in range(LOADED_JOBS)]:
                        future.result()

            server.measure(f"{IN_FLIGHT} jobs in flight", LOADED_JOBS, "job", loaded)
            worker.stop()
            worker = None

            with grpc.insecure_channel(address) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                server.measure(
                    "health check",
                    CALLS,
                    "call",
                    lambda: [health.Check(health_pb2.HealthCheckRequest()) for _ in range(CALLS)],
                )
            server.measure(
                "GetStatus of a finished job",
                CALLS,
                "call",
                lambda: [client.get_status(done[i % len(done)]) for i in range(CALLS)],
            )
            server.measure(
                "StreamResults replay of a finished job",
                CALLS,
                "call",
                lambda: [list(client.follow(done[i % len(done)])) for i in range(CALLS)],
            )
            server.measure(
                "SubmitVideo of the 4.7 KB clip",
                SEQUENTIAL_JOBS,
                "call",
                lambda: [client.submit(video, pipeline="probe") for _ in range(SEQUENTIAL_JOBS)],
            )
    finally:
        if worker is not None:
            worker.stop()
        child.stop()


def main() -> None:
    try:
        with tempfile.TemporaryDirectory(prefix="bench-calls-") as scratch:
            run(Path(scratch))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - a benchmark reports, never fails
        print(f"calls: benchmark did not complete: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
