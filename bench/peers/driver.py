"""The benchmark client: drives one system with the same closed-loop harness.

Run by `bench/bench_peers.py` with the system's own interpreter (a peer venv,
or the main .venv for videojobs and the baseline):

    python -m peers.driver --system celery --video V --out OUT.json [...]

Per run: a closed loop of `--inflight` threads, each submitting a job and
waiting for its result before submitting the next, until `--jobs` jobs are
done (throughput = jobs / wall time; latency = submit -> result seen by the
client, per job), then `--sequential` jobs one at a time (one-job-in-flight
latency). A warm-up of `--warmup` jobs in the closed loop comes first and is
not counted. Every result is checked (the summary of the probe of the sample
video). Progress goes to stderr; the measurements to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

Call = Callable[[], dict]


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class Checker:
    """Checks a job's summary against the probe of the sample video."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height

    def __call__(self, summary: dict) -> None:
        if summary.get("width") != self.width or summary.get("height") != self.height:
            raise RuntimeError(f"unexpected result: {summary!r}")


def closed_loop(call: Call, check: Checker, jobs: int, inflight: int) -> dict[str, Any]:
    """`inflight` threads keep that many jobs in flight until `jobs` are done."""
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
    abort = threading.Event()
    max_errors = max(10, jobs // 20)

    def slot() -> None:
        nonlocal issued
        while not abort.is_set():
            with lock:
                if issued >= jobs:
                    return
                issued += 1
            started = time.perf_counter()
            try:
                check(call())
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    if len(errors) >= max_errors:
                        abort.set()
                continue
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=slot, daemon=True) for _ in range(inflight)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "jobs": jobs,
        "ok": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(wall, 4),
        "throughput": len(latencies) / wall if wall else 0.0,
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "max_ms": _ms(max(latencies) if latencies else None),
    }


def sequential(call: Call, check: Checker, jobs: int) -> dict[str, Any]:
    """One job in flight at a time."""
    latencies: list[float] = []
    errors: list[str] = []
    for _ in range(jobs):
        started = time.perf_counter()
        try:
            check(call())
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            if len(errors) >= 5:
                break
            continue
        latencies.append(time.perf_counter() - started)
    return {
        "jobs": jobs,
        "ok": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "mean_ms": _ms(sum(latencies) / len(latencies) if latencies else None),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _versions(*names: str) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


# -- one adapter per system: returns (call, versions, close) --------------------


def videojobs_adapter(args, video: Path, data: bytes):
    """submit the file over gRPC, follow the job to its end, read Job.summary."""
    from google.protobuf import json_format

    from videojobs.client import JobClient
    from videojobs.v1 import job_pb2

    client = JobClient(args.address)

    def call() -> dict:
        job = client.submit(video, pipeline="probe")
        job = client.wait(job.job_id)
        if job.state != job_pb2.JOB_STATE_SUCCEEDED:
            raise RuntimeError(f"job {job.job_id} ended {job.state}: {job.error.message}")
        return json_format.MessageToDict(job.summary)

    return call, _versions("videojobs", "grpcio", "av", "sqlalchemy", "asyncpg"), client.close


def baseline_adapter(args, video: Path, data: bytes):
    """A ProcessPoolExecutor of `--processes` warm processes (spawned), no queue."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from peers.probe_task import probe_bytes, warm

    pool = ProcessPoolExecutor(
        args.processes, mp_context=multiprocessing.get_context("spawn"), initializer=warm
    )
    # Start every process before the client threads do.
    for future in [pool.submit(warm) for _ in range(args.processes * 2)]:
        future.result(timeout=120)

    def call() -> dict:
        return pool.submit(probe_bytes, data).result(timeout=args.timeout)

    def close() -> None:
        pool.shutdown(wait=True, cancel_futures=True)

    return call, _versions("av"), close


def celery_adapter(args, video: Path, data: bytes):
    """task.delay(base64 bytes).get(): Redis broker and result backend."""
    from peers.celery_app import app, probe

    encoded = base64.b64encode(data).decode()

    def call() -> dict:
        return probe.delay(encoded).get(timeout=args.timeout)

    return call, _versions("celery", "kombu", "billiard", "redis"), app.close


def rq_adapter(args, video: Path, data: bytes):
    """queue.enqueue(bytes), then job.latest_result(timeout) (blocking XREAD)."""
    from redis import Redis
    from rq import Queue
    from rq.results import Result

    from peers.probe_task import probe_bytes
    from peers.rq_worker import QUEUE

    connection = Redis.from_url(args.redis_url, max_connections=None)
    queue = Queue(QUEUE, connection=connection)
    timeout = int(math.ceil(args.timeout))

    def call() -> dict:
        job = queue.enqueue(probe_bytes, data, job_timeout=timeout, result_ttl=3600)
        result = job.latest_result(timeout=timeout)
        if result is None:
            raise TimeoutError(f"no result for {job.id} within {timeout} s")
        if result.type != Result.Type.SUCCESSFUL:
            raise RuntimeError(f"job {job.id} failed: {result.exc_string}")
        return result.return_value

    return call, _versions("rq", "redis"), connection.close


def dramatiq_adapter(args, video: Path, data: bytes):
    """actor.send(base64 bytes), then message.get_result(block=True) (BLPOP)."""
    from peers.dramatiq_app import backend, broker, probe

    encoded = base64.b64encode(data).decode()
    timeout_ms = int(args.timeout * 1000)

    def call() -> dict:
        message = probe.send(encoded)
        return message.get_result(backend=backend, block=True, timeout=timeout_ms)

    return call, _versions("dramatiq", "redis"), broker.close


ADAPTERS = {
    "videojobs": videojobs_adapter,
    "baseline": baseline_adapter,
    "celery": celery_adapter,
    "rq": rq_adapter,
    "dramatiq": dramatiq_adapter,
}


def main() -> int:
    """Runs the measurements for one system and writes them to --out."""
    parser = argparse.ArgumentParser(prog="python -m peers.driver")
    parser.add_argument("--system", choices=sorted(ADAPTERS), required=True)
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--label", default="")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--address", default="")
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    args = parser.parse_args()
    label = args.label or args.system
    report: dict[str, Any] = {"system": args.system, "label": label, "runs": []}
    close: Callable[[], object] = lambda: None  # noqa: E731
    try:
        data = args.video.read_bytes()
        call, versions, close = ADAPTERS[args.system](args, args.video, data)
        report["versions"] = versions
        check = Checker(args.width, args.height)
        say = lambda text: print(f"[{label}] {text}", file=sys.stderr, flush=True)  # noqa: E731
        say(f"warm-up: {args.warmup} jobs")
        warm = closed_loop(call, check, args.warmup, args.inflight)
        if warm["ok"] == 0:
            raise RuntimeError(f"warm-up: no job succeeded ({warm['first_error']})")
        report["warmup"] = warm
        for number in range(1, args.runs + 1):
            loop = closed_loop(call, check, args.jobs, args.inflight)
            say(
                f"run {number}/{args.runs}: {loop['ok']}/{loop['jobs']} jobs in "
                f"{loop['seconds']:.1f} s = {loop['throughput']:.1f} jobs/s, "
                f"p50 {loop['p50_ms']} ms, p99 {loop['p99_ms']} ms"
                + (f", {loop['errors']} errors ({loop['first_error']})" if loop["errors"] else "")
            )
            one = sequential(call, check, args.sequential)
            say(f"run {number}/{args.runs}: one in flight: p50 {one['p50_ms']} ms")
            report["runs"].append({"closed_loop": loop, "sequential": one})
    except BaseException as exc:  # noqa: BLE001 - reported to the orchestrator
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc()[-4000:]
    finally:
        args.out.write_text(json.dumps(report, indent=1))
        try:
            close()
        except Exception:  # noqa: BLE001, S110 - closing is best effort
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
