"""`make bench` (peers): videojobs side by side with Celery, RQ, Dramatiq and a
no-queue process pool, on the same short job, on this machine, in one run.

The job: `probe` of a tiny H.264 MP4 (1 s, 160x120, about 5 KB, made here with
PyAV) whose bytes the client sends and whose result it waits for. Peers run
the very same analysis in their workers (`peers/probe_task.py`: the bytes go
to a local blob store in a scratch directory and `run_job` runs `probe`, as a
videojobs pipeline child does); videojobs runs as its real processes
(job-service + worker-service, whose warm pipeline processes run the jobs) and is driven
through the Python client (`submit` + `wait`, the summary read from the Job).

Every system is measured by the same client (`peers/driver.py`): one
closed-loop client keeping 32 jobs in flight until N jobs are done
(throughput, latency p50/p99 from submit to result), then jobs one at a time
(one-job-in-flight latency p50). Each measurement is repeated (`--runs`,
default 3), interleaved (run 1 of every system, then run 2...; each run
starts the system afresh and warms it up): the table gives the median and
the min-max spread. It also gives the CPU share that processes this script
did not start took meanwhile: on a shared machine, figures are only
comparable when that share is small.

Systems (`--systems`, default all):
  baseline           ProcessPoolExecutor, 2 spawned warm processes, no queue
  celery             Celery prefork -c 2, Redis broker + result backend
  rq                 RQ, 2 workers (fork per job; job module preloaded)
  dramatiq           Dramatiq, Redis broker + Redis results, -p 2 -t 4
  videojobs-sqlite   videojobs on SQLite, 1 worker of concurrency 2
                     (and `--vj-workers 1,2,4` worker processes, each of
                     concurrency `--vj-concurrency`)
  videojobs-postgres videojobs on a throwaway PostgreSQL database, with the
                     same `--vj-workers` worker processes

Peers live in their own virtualenvs under bench/.venvs/ (made on first run
from the pinned bench/peers/requirements-*.txt, reused afterwards); a .pth
file there makes the main .venv's packages (videojobs, PyAV) importable too.
Redis: `--redis-url` (default 127.0.0.1:6379, database 13; only that
database is flushed, and only if it is empty or was ours); when nothing
listens there, a private `redis-server` on a free port is started if one is
installed, else the Redis peers are reported as skipped. PostgreSQL:
VIDEOJOBS_TEST_POSTGRES_URL, as for the tests.

Writes bench/results/latest.md and latest.json. Exits 0 whatever a system
does (a system that cannot run is reported skipped, with the reason); every
process it starts is stopped at the end, also on Ctrl-C.

    .venv/bin/python bench/bench_peers.py --quick      # 300 jobs per run
    .venv/bin/python bench/bench_peers.py              # 2000 jobs per run
    .venv/bin/python bench/bench_peers.py --systems baseline,videojobs-sqlite --jobs 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
MAIN_PYTHON = Path(sys.executable)
BIN = MAIN_PYTHON.parent
PEERS = ("celery", "rq", "dramatiq")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
OWNER_KEY = "videojobs-bench-peers:owner"
INSTALL_MARK = ".bench-installed"


def say(text: str) -> None:
    """Progress, on stderr."""
    print(f"bench_peers: {text}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------


class Proc:
    """A process this script started, in its own session (process group), so
    that it and everything it forks can be stopped together, by its id."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log: Path,
        cwd: Path | None = None,
        capture_stdout: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE if capture_stdout else self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def alive(self) -> bool:
        """Whether the leader still runs."""
        return self.process.poll() is None

    def signal_group(self, signum: int) -> None:
        """Sends `signum` to the process group this process leads."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the group, SIGKILL to what is left after `grace` seconds."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)  # stragglers of the group, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._log.close()

    def count(self, text: str) -> int:
        """How many times `text` occurs in its log."""
        try:
            return self.log_path.read_text(errors="replace").count(text)
        except OSError:
            return 0

    def tail(self, lines: int = 5) -> str:
        """The end of its log, for an error message."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


class Processes:
    """Every process started; `stop_all` in reverse order of starting."""

    def __init__(self) -> None:
        self.items: list[Proc | subprocess.Popen] = []

    def add(self, item):
        """Registers `item` (a Proc, or the Popen of a client)."""
        self.items.append(item)
        return item

    def stop(self, item: Proc | subprocess.Popen) -> None:
        """Stops one item (and its process group) and forgets it."""
        try:
            if isinstance(item, Proc):
                item.stop()
            else:  # a client: nothing to hand back
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(item.pid, signal.SIGKILL)
                item.wait(10)
        finally:
            if item in self.items:
                self.items.remove(item)

    def stop_all(self) -> None:
        """Stops everything still registered."""
        for item in reversed(list(self.items)):
            with contextlib.suppress(Exception):
                self.stop(item)


# -- other work on the machine ---------------------------------------------------------


class ForeignCpu:
    """Samples /proc while a system is measured: the CPU time used by
    processes this benchmark did not start (outside its sessions; the Redis
    and PostgreSQL servers, which serve the systems measured, left out), as a
    share of the machine's capacity. Well above 0 means the figures were taken
    on a busy machine."""

    SHARED_SERVERS = ("redis-server", "postgres")

    def __init__(self, procs: Processes, interval: float = 0.5) -> None:
        self._procs, self._interval = procs, interval
        self._stop = threading.Event()
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._foreign = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def _ours(self) -> set[int]:
        sessions = {os.getsid(0)}
        for item in list(self._procs.items):
            process = getattr(item, "process", item)
            sessions.add(process.pid)  # each was started in a session of its own
        return sessions

    def _sample(self) -> dict[int, float]:
        ours, seen = self._ours(), {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                raw = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            name = raw[raw.find("(") + 1 : raw.rfind(")")]
            fields = raw[raw.rfind(")") + 2 :].split()
            if int(fields[3]) in ours or name in self.SHARED_SERVERS:  # fields[3]: session
                continue
            seen[int(entry.name)] = (int(fields[11]) + int(fields[12])) / self._ticks
        return seen

    def _run(self) -> None:
        last = self._sample()
        while not self._stop.wait(self._interval):
            now = self._sample()
            self._foreign += sum(max(0.0, t - last[p]) for p, t in now.items() if p in last)
            last = now

    def __enter__(self) -> ForeignCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def percent(self) -> float:
        """Foreign CPU time / (elapsed time x cores), in percent."""
        elapsed = time.monotonic() - self._started
        return round(100 * self._foreign / max(elapsed * (os.cpu_count() or 1), 1e-9), 1)


# -- Redis (a tiny RESP client: the main .venv has no Redis library) -------------


@dataclass
class Redis:
    """Where the peers' Redis is and which database they use."""

    host: str
    port: int
    db: int

    @property
    def url(self) -> str:
        """The URL peers are given."""
        return f"redis://{self.host}:{self.port}/{self.db}"

    def command(self, *parts: str, timeout: float = 5.0) -> Any:
        """Runs one command in this database; returns the decoded reply."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as conn:
            reader = conn.makefile("rb")
            for command in (("SELECT", str(self.db)), parts):
                encoded = [p.encode() for p in command]
                conn.sendall(
                    b"*%d\r\n" % len(encoded)
                    + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in encoded)
                )
                reply = _read_reply(reader)
            return reply

    def ping(self) -> bool:
        """Whether it answers."""
        try:
            return self.command("PING", timeout=2) == "PONG"
        except (OSError, RuntimeError):
            return False


def _read_reply(reader) -> Any:
    line = reader.readline()
    if not line:
        raise RuntimeError("redis closed the connection")
    kind, rest = line[:1], line[1:].rstrip(b"\r\n")
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(f"redis: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        return [_read_reply(reader) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected redis reply {line!r}")


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_redis(url: str, procs: Processes, scratch: Path) -> tuple[Redis | None, str]:
    """The Redis to use (claimed and flushed), or None and the reason."""
    parts = urlsplit(url)
    db = int((parts.path or "/0").strip("/") or 0)
    redis = Redis(parts.hostname or "127.0.0.1", parts.port or 6379, db)
    if not redis.ping():
        server = shutil.which("redis-server")
        if server is None:
            return None, f"no Redis answers at {redis.host}:{redis.port} and redis-server is absent"
        port = free_port()
        say(f"no Redis at {redis.host}:{redis.port}; starting redis-server on port {port}")
        procs.add(
            Proc(
                "redis-server",
                [
                    server,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(scratch),
                ],
                dict(os.environ),
                scratch / "redis.log",
            )
        )
        redis = Redis("127.0.0.1", port, db)
        deadline = time.monotonic() + 15
        while not redis.ping():
            if time.monotonic() > deadline:
                return None, "the private redis-server did not start"
            time.sleep(0.1)
    size = redis.command("DBSIZE")
    if size and not redis.command("EXISTS", OWNER_KEY):
        return None, (
            f"Redis database {redis.db} at {redis.host}:{redis.port} holds {size} keys that are "
            "not ours: not flushing it (choose another with --redis-url)"
        )
    reset_redis(redis)
    return redis, ""


def reset_redis(redis: Redis) -> None:
    """Empties our database (only it) and marks it as ours."""
    redis.command("FLUSHDB")
    redis.command("SET", OWNER_KEY, "bench/bench_peers.py")


def redis_version(redis: Redis) -> str:
    """The server's version."""
    with contextlib.suppress(Exception):
        for line in str(redis.command("INFO", "server")).splitlines():
            if line.startswith("redis_version:"):
                return line.split(":", 1)[1].strip()
    return "?"


# -- peer virtualenvs --------------------------------------------------------------


def peer_python(peer: str) -> tuple[Path | None, str]:
    """The interpreter of the peer's venv, made (and installed) when missing or
    when its requirements changed; or None and the reason."""
    requirements = BENCH / "peers" / f"requirements-{peer}.txt"
    venv = VENVS / peer
    python = venv / "bin" / "python"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    mark = venv / INSTALL_MARK
    if python.exists() and mark.exists() and mark.read_text().strip() == wanted:
        return python, ""
    say(f"making {venv.relative_to(REPO)} from {requirements.relative_to(REPO)}")
    try:
        if not python.exists():
            subprocess.run([str(MAIN_PYTHON), "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(requirements),
            ],
            check=True,
            timeout=900,
        )
        site_dir = Path(
            subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
        )
        main_site = Path(
            subprocess.run(
                [
                    str(MAIN_PYTHON),
                    "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
        )
        # The peer's own packages first, then the main .venv's (videojobs, PyAV...).
        (site_dir / "zz_videojobs_main.pth").write_text(
            f"import site; site.addsitedir({str(main_site)!r})\n"
        )
        subprocess.run(
            [str(python), "-c", "import videojobs.pipelines.runner, av"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not make the {peer} venv: {exc}"
    mark.write_text(wanted + "\n")
    return python, ""


# -- PostgreSQL ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _scratch_database(admin_url: str):
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn, timeout=5)
    name = f"videojobs_bench_{uuid.uuid4().hex[:12]}"
    try:
        version = await admin.fetchval("SHOW server_version")
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False), version
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class ScratchDatabase:
    """A throwaway PostgreSQL database, made and dropped from this (sync) script."""

    def __init__(self, admin_url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._context = _scratch_database(admin_url)
        self.url, self.version = self._loop.run_until_complete(self._context.__aenter__())

    def drop(self) -> None:
        """Drops it."""
        try:
            self._loop.run_until_complete(self._context.__aexit__(None, None, None))
        finally:
            self._loop.close()


# -- systems ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """One system's result, gathered over the rounds."""

    key: str
    label: str
    setup: str
    status: str = "ok"  # ok | skipped | error
    reason: str = ""
    runs: list[dict] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def fail(self, status: str, reason: str) -> None:
        """Marks it skipped or failed (the first reason stays)."""
        if self.status == "ok":
            self.status, self.reason = status, reason

    def to_json(self) -> dict[str, Any]:
        """For latest.json."""
        return {
            "key": self.key,
            "label": self.label,
            "setup": self.setup,
            "status": self.status,
            "reason": self.reason,
            "versions": self.versions,
            "seconds": round(self.seconds, 1),
            "summary": summarize(self.runs),
            "runs": self.runs,
        }


def spread(values: list[float | None]) -> dict[str, float] | None:
    """Median, min and max of the runs."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {
        "median": round(statistics.median(present), 2),
        "min": round(min(present), 2),
        "max": round(max(present), 2),
    }


def summarize(runs: list[dict]) -> dict[str, Any]:
    """Median and spread of each figure over the runs."""
    loops = [r["closed_loop"] for r in runs]
    ones = [r["sequential"] for r in runs]
    return {
        "throughput_jobs_per_s": spread([r["throughput"] for r in loops]),
        "p50_ms": spread([r["p50_ms"] for r in loops]),
        "p99_ms": spread([r["p99_ms"] for r in loops]),
        "one_in_flight_p50_ms": spread([r["p50_ms"] for r in ones]),
        "errors": sum(r["errors"] for r in loops) + sum(r["errors"] for r in ones),
        "foreign_cpu_percent": spread([r.get("foreign_cpu_percent") for r in runs]),
    }


@dataclass
class Settings:
    """What every system is measured with."""

    jobs: int
    inflight: int
    sequential: int
    warmup: int
    runs: int
    timeout: float
    system_timeout: float
    video: Path
    scratch: Path
    vj_concurrency: int


def run_driver(
    settings: Settings,
    outcome: Outcome,
    python: Path,
    system: str,
    env: dict[str, str],
    procs: Processes,
    extra: list[str],
) -> None:
    """Runs the measuring client for one run of one system; appends the run."""
    number = len(outcome.runs) + 1
    out = settings.scratch / f"{outcome.key}-{number}.json"
    argv = [
        str(python), "-m", "peers.driver", "--system", system,
        "--label", f"{outcome.label} #{number}", "--video", str(settings.video),
        "--out", str(out), "--jobs", str(settings.jobs), "--inflight", str(settings.inflight),
        "--sequential", str(settings.sequential), "--warmup", str(settings.warmup),
        "--runs", "1", "--timeout", str(settings.timeout), *extra,
    ]  # fmt: skip
    load_before = round(os.getloadavg()[0], 2)
    # Its progress goes to our stderr, the figures to `out`.
    driver = procs.add(
        subprocess.Popen(argv, env=env, cwd=BENCH, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    )  # fmt: skip
    foreign = ForeignCpu(procs)
    try:
        with foreign:
            driver.wait(settings.system_timeout)
    except subprocess.TimeoutExpired:
        outcome.fail("error", f"timed out after {settings.system_timeout:.0f} s")
    finally:
        if driver.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        procs.items.remove(driver)
    if not out.exists():
        outcome.fail("error", f"the client exited {driver.returncode}")
        return
    report = json.loads(out.read_text())
    for run in report.get("runs", []):
        run["foreign_cpu_percent"] = foreign.percent
        run["load_average_1min"] = [load_before, round(os.getloadavg()[0], 2)]
        outcome.runs.append(run)
    outcome.versions.update(report.get("versions", {}))
    if report.get("error"):
        outcome.fail("error", report["error"])
        say(f"{outcome.label}: {report['error']}\n{report.get('traceback', '')}")


def peer_env(redis: Redis) -> dict[str, str]:
    """Environment of a peer's workers and client."""
    return dict(
        os.environ,
        BENCH_REDIS_URL=redis.url,
        PYTHONPATH=str(BENCH),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
    )


def wait_alive(workers: list[Proc], seconds: float = 3.0) -> str:
    """'' when every worker is still up after `seconds`, else what the dead one said."""
    time.sleep(seconds)
    for worker in workers:
        if not worker.alive():
            return f"{worker.name} exited {worker.process.returncode}: {worker.tail()}"
    return ""


PEER_SETUPS = {
    "celery": ("Celery", "prefork -c 2; Redis broker + result backend; JSON (base64 video)"),
    "rq": ("RQ", "2 workers (fork per job, job module preloaded); Redis; pickle"),
    "dramatiq": ("Dramatiq", "-p 2 -t 4; Redis broker + Redis results; JSON (base64 video)"),
}


def run_peer(
    outcome: Outcome, settings: Settings, redis: Redis | None, redis_reason: str, procs: Processes
) -> None:
    """One run of Celery, RQ or Dramatiq: venv, workers, client, cleanup."""
    peer = outcome.key
    if redis is None:
        outcome.fail("skipped", redis_reason)
        return
    python, reason = peer_python(peer)
    if python is None:
        outcome.fail("skipped", reason)
        return
    env = peer_env(redis)
    bindir = python.parent
    log = settings.scratch / f"{peer}-{len(outcome.runs) + 1}-worker.log"
    if peer == "celery":
        argvs = [[str(bindir / "celery"), "-A", "peers.celery_app", "worker", "-P", "prefork",
                  "-c", "2", "-l", "WARNING", "-n", f"bench-{os.getpid()}@%h"]]  # fmt: skip
    elif peer == "rq":
        argvs = [[str(python), "-m", "peers.rq_worker", f"bench-{os.getpid()}-{i}"] for i in (1, 2)]
    else:
        argvs = [[str(bindir / "dramatiq"), "peers.dramatiq_app", "-p", "2", "-t", "4"]]
    reset_redis(redis)
    workers = [
        procs.add(Proc(f"{peer} worker {i}", argv, env, log.with_suffix(f".{i}.log"), cwd=BENCH))
        for i, argv in enumerate(argvs)
    ]
    try:
        dead = wait_alive(workers)
        if dead:
            outcome.fail("error", dead)
            return
        run_driver(settings, outcome, python, peer, env, procs, ["--redis-url", redis.url])
        if outcome.status == "error":
            say(f"{outcome.label} worker log: {workers[0].tail(10)}")
    finally:
        for worker in workers:
            procs.stop(worker)
        with contextlib.suppress(Exception):
            reset_redis(redis)


def run_baseline(outcome: Outcome, settings: Settings, procs: Processes) -> None:
    """One run of a ProcessPoolExecutor(2) fed by the same client."""
    env = dict(os.environ, PYTHONPATH=str(BENCH), PYTHONDONTWRITEBYTECODE="1")
    run_driver(settings, outcome, MAIN_PYTHON, "baseline", env, procs, ["--processes", "2"])


def videojobs_outcome(workers: int, concurrency: int, postgres: bool) -> Outcome:
    """The row of one videojobs configuration."""
    store = "PostgreSQL" if postgres else "SQLite"
    return Outcome(
        f"videojobs-{store.lower()}-w{workers}",
        f"videojobs ({store}, {workers} worker{'s' if workers > 1 else ''})",
        f"job-service on {store} + {workers} worker process{'es' if workers > 1 else ''} × "
        f"concurrency {concurrency}; gRPC client submit + wait",
    )


def run_videojobs(
    outcome: Outcome,
    settings: Settings,
    procs: Processes,
    workers: int,
    postgres_url: str | None,
) -> None:
    """One run of job-service + `workers` worker-service processes, as their
    real commands, on a fresh data directory (and database). Their output
    goes to log files; tracebacks in them are counted in the run."""
    data_dir = settings.scratch / f"{outcome.key}-data"
    env = dict(
        os.environ,
        VIDEOJOBS_DATA_DIR=str(data_dir),
        VIDEOJOBS_LISTEN="127.0.0.1:0",
        VIDEOJOBS_WORKER_LISTEN="127.0.0.1:0",
        VIDEOJOBS_WORKER_CONCURRENCY=str(settings.vj_concurrency),
        VIDEOJOBS_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    for name in ("VIDEOJOBS_TOKEN", "VIDEOJOBS_AUTH_FILE", "VIDEOJOBS_DATABASE_URL"):
        env.pop(name, None)
    if postgres_url:
        env["VIDEOJOBS_DATABASE_URL"] = postgres_url
    started: list[Proc] = []
    runs_before = len(outcome.runs)
    try:
        run = len(outcome.runs) + 1
        log = settings.scratch / f"{outcome.key}-{run}-job-service.log"
        server = procs.add(Proc("job-service", [str(BIN / "videojobs-server")], env, log))
        started.append(server)
        address = wait_listening(server)
        for number in range(workers):
            worker_env = dict(env, VIDEOJOBS_ADDRESS=address)
            worker_env["VIDEOJOBS_WORKER_ID"] = f"bench-{os.getpid()}-{number}"
            log = settings.scratch / f"{outcome.key}-{run}-worker-{number}.log"
            argv = [str(BIN / "videojobs-worker")]
            worker = procs.add(Proc(f"worker-service {number}", argv, worker_env, log))
            started.append(worker)
            wait_listening(worker)
        client_env = dict(env, PYTHONPATH=str(BENCH), PYTHONDONTWRITEBYTECODE="1")
        run_driver(
            settings, outcome, MAIN_PYTHON, "videojobs", client_env, procs, ["--address", address]
        )
    except RuntimeError as exc:  # a service did not start
        outcome.fail("error", str(exc))
    finally:
        for item in reversed(started):  # workers first (they hand jobs back), then job-service
            item.stop(grace=60)
            procs.items.remove(item)
        tracebacks = {p.name: p.count("Traceback (most recent call last)") for p in started}
        for run in outcome.runs[runs_before:]:
            run["service_log_tracebacks"] = {k: v for k, v in tracebacks.items() if v}
        if any(tracebacks.values()):
            say(f"{outcome.label}: tracebacks in the service logs: {tracebacks}")
        shutil.rmtree(data_dir, ignore_errors=True)


def wait_listening(proc: Proc, timeout: float = 60.0) -> str:
    """The address a videojobs service announces ("... listening on ADDRESS")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for line in proc.log_path.read_text(errors="replace").splitlines():
                if "listening on " in line:
                    return line.rsplit("listening on ", 1)[1].strip()
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited {proc.process.returncode}: {proc.tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not start within {timeout:.0f} s: {proc.tail()}")


# -- report ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Cores, memory, CPU, OS."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError, AttributeError):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def git_state() -> dict[str, str]:
    """The commit measured, and whether services/ or clients/ differ from it."""
    state = {}
    with contextlib.suppress(Exception):
        state["commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "services", "clients"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        state["services_or_clients_modified"] = "yes" if dirty else "no"
    return state


def _cell(figure: dict | None, digits: int = 0) -> str:
    if not figure:
        return "–"
    fmt = f"{{:.{digits}f}}"
    median, low, high = (fmt.format(figure[k]) for k in ("median", "min", "max"))
    return f"{median} ({low}–{high})"


def write_report(doc: dict[str, Any], outcomes: list[Outcome]) -> tuple[Path, Path]:
    """bench/results/latest.json and latest.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / "latest.json", RESULTS / "latest.md"
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    p = doc["parameters"]
    m = doc["machine"]
    lines = [
        "# Short-job benchmark: videojobs and peers",
        "",
        f"Made by `bench/bench_peers.py`{' --quick' if p['quick'] else ''} on {doc['date']}"
        + (" (interrupted: partial)" if doc.get("interrupted") else "")
        + ".",
        "",
        f"- Machine: {m.get('cores')} cores"
        + (f" ({m['cores_usable']} usable)" if m.get("cores_usable") != m.get("cores") else "")
        + f", {m.get('memory_gib', '?')} GiB memory, {m.get('cpu', '?')}; {m.get('platform')}",
        f"- Python {m.get('python')}; videojobs commit {doc['git'].get('commit', '?')} "
        f"(services/ or clients/ modified: {doc['git'].get('services_or_clients_modified', '?')})",
        *(
            [
                f"- **The code changed during the run**: commit "
                f"{doc['git_at_end'].get('commit', '?')} at the end"
            ]
            if doc.get("git_at_end", {}).get("commit") != doc["git"].get("commit")
            else []
        ),
        f"- Redis {doc.get('redis_version') or '–'}; PostgreSQL {doc.get('postgres_version') or '–'}",
        f"- Job: `probe` of a {p['video_bytes']} byte H.264 MP4 (1 s, 160x120, 25 fps), bytes "
        "sent by the client, result awaited by it",
        f"- Closed loop: {p['inflight']} jobs in flight, {p['jobs']} jobs per run (after "
        f"{p['warmup']} warm-up jobs); one in flight: {p['sequential']} jobs one at a time; "
        f"{p['runs']} runs: median (min–max)",
        "",
        "| system | setup | jobs/s | p50 ms | p99 ms | 1-in-flight p50 ms | errors "
        "| other CPU % | load ≤ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        s = summarize(o.runs)
        if o.status == "skipped":
            lines.append(f"| {o.label} | {o.setup} | skipped: {o.reason} | | | | | | |")
            continue
        note = "" if o.status == "ok" else f" **{o.status}: {o.reason}**"
        loads = [max(r["load_average_1min"]) for r in o.runs if r.get("load_average_1min")]
        lines.append(
            f"| {o.label} | {o.setup}{note} | {_cell(s['throughput_jobs_per_s'], 1)} | "
            f"{_cell(s['p50_ms'])} | {_cell(s['p99_ms'])} | "
            f"{_cell(s['one_in_flight_p50_ms'], 1)} | {s['errors']} | "
            f"{_cell(s['foreign_cpu_percent'])} | {max(loads) if loads else '–'} |"
        )
    busy = [
        o.label for o in outcomes if any((r.get("foreign_cpu_percent") or 0) >= 10 for r in o.runs)
    ]
    lines += [
        "",
        "other CPU %: CPU time used during the measurement by processes this benchmark did "
        "not start (the Redis and PostgreSQL servers left out), as a share of all cores; "
        "load ≤: the highest 1-minute load average seen when a client started or ended."
        + (
            f" **Other work shared the machine during runs of {', '.join(busy)} (≥ 10 %): "
            "their figures are lower than this machine can do; the runs were interleaved "
            "(run 1 of every system, then run 2...) so that each system met it.**"
            if busy
            else ""
        ),
    ]
    lines += ["", "Versions:", ""]
    for o in outcomes:
        if o.versions:
            joined = ", ".join(f"{k} {v}" for k, v in sorted(o.versions.items()))
            lines.append(f"- {o.label}: {joined}")
    lines += [
        "",
        "Latency is submit → result as the client sees it (wall clock, one host). Peers run the "
        "same analysis as a videojobs pipeline child (`bench/peers/probe_task.py`: input to a "
        "local blob store, `run_job` with `probe`, `results.json` written, summary returned); "
        "videojobs also stores the input and the result through job-service, records every "
        "event in its database and runs the pipeline in a child process of the worker. "
        "Runs are interleaved: run 1 of every system, then run 2, and so on; every run starts "
        "the system afresh and warms it up before measuring.",
        "",
    ]
    md_path.write_text("\n".join(lines))
    return json_path, md_path


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(
        prog="bench_peers.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="300 jobs per run, 50 one at a time")
    parser.add_argument("--jobs", type=int, help="jobs per closed-loop run (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--inflight", type=int, default=32, help="jobs in flight (default 32)")
    parser.add_argument("--sequential", type=int, help="one-in-flight jobs per run (default 100)")
    parser.add_argument("--warmup", type=int, help="uncounted warm-up jobs (default 64)")
    parser.add_argument(
        "--systems",
        default="baseline,celery,rq,dramatiq,videojobs-sqlite,videojobs-postgres",
        help="comma-separated subset (default: all)",
    )
    parser.add_argument(
        "--vj-workers", default="1,2,4", help="videojobs worker processes (default 1,2,4)"
    )
    parser.add_argument("--vj-concurrency", type=int, default=2, help="per worker (default 2)")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("VIDEOJOBS_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="admin URL; a scratch database is made there and dropped",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="per job, seconds")
    parser.add_argument(
        "--system-timeout",
        type=float,
        default=3600.0,
        help="per run of one system, seconds (default 3600)",
    )
    args = parser.parse_args(argv)
    args.jobs = args.jobs or (300 if args.quick else 2000)
    args.sequential = (
        args.sequential if args.sequential is not None else (50 if args.quick else 100)
    )
    args.warmup = args.warmup if args.warmup is not None else (32 if args.quick else 64)
    return args


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Runs every system; writes the report; always exits 0 (130 on Ctrl-C)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    vj_workers = [int(w) for w in args.vj_workers.split(",") if w.strip()]
    procs = Processes()
    outcomes: list[Outcome] = []
    redis: Redis | None = None
    interrupted = False
    doc: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "git": git_state(),
        "main_versions": {n: metadata.version(n) for n in ("videojobs", "grpcio", "av") if _has(n)},
    }
    scratch = Path(tempfile.mkdtemp(prefix="videojobs-bench-peers-"))
    try:
        from videojobs.stack.sample_video import write_sample_video

        video = scratch / "probe.mp4"
        write_sample_video(video, width=160, height=120, fps=25, frames=25)
        settings = Settings(
            jobs=args.jobs, inflight=args.inflight, sequential=args.sequential,
            warmup=args.warmup, runs=args.runs, timeout=args.timeout,
            system_timeout=args.system_timeout, video=video, scratch=scratch,
            vj_concurrency=args.vj_concurrency,
        )  # fmt: skip
        doc["parameters"] = {
            "quick": args.quick, "jobs": args.jobs, "inflight": args.inflight,
            "sequential": args.sequential, "warmup": args.warmup, "runs": args.runs,
            "video_bytes": video.stat().st_size, "systems": systems,
            "vj_workers": vj_workers, "vj_concurrency": args.vj_concurrency,
        }  # fmt: skip
        redis_reason = ""
        if any(s in PEERS for s in systems):
            try:
                redis, redis_reason = prepare_redis(args.redis_url, procs, scratch)
            except (OSError, RuntimeError) as exc:
                redis, redis_reason = None, f"Redis unusable: {exc}"
            if redis is not None:
                doc["redis_version"] = redis_version(redis)
                doc["redis_url"] = redis.url
            else:
                say(f"Redis peers skipped: {redis_reason}")

        # Each entry: the row and how to make one run of it.
        plan: list[tuple[Outcome, Any]] = []
        for system in systems:
            if system == "baseline":
                outcome = Outcome(
                    "baseline",
                    "no queue (process pool)",
                    "ProcessPoolExecutor, 2 spawned warm processes",
                )
                plan.append((outcome, lambda o: run_baseline(o, settings, procs)))
            elif system in PEERS:
                outcome = Outcome(system, *PEER_SETUPS[system])
                plan.append((outcome, lambda o: run_peer(o, settings, redis, redis_reason, procs)))
            elif system == "videojobs-sqlite":
                for workers in vj_workers:
                    outcome = videojobs_outcome(workers, args.vj_concurrency, postgres=False)
                    plan.append(
                        (outcome, lambda o, w=workers: run_videojobs(o, settings, procs, w, None))
                    )
                    outcomes.append(outcome)
                continue
            elif system == "videojobs-postgres":
                for workers in vj_workers:
                    outcome = videojobs_outcome(workers, args.vj_concurrency, postgres=True)
                    plan.append(
                        (
                            outcome,
                            lambda o, w=workers: run_videojobs_postgres(
                                o, settings, procs, args, doc, w
                            ),
                        )
                    )
                    outcomes.append(outcome)
                continue
            else:
                outcome = Outcome(system, system, "", "skipped", "unknown system name")
            outcomes.append(outcome)

        # Round robin: run 1 of every system, then run 2..., so that a busy
        # spell on the machine does not land on one system only.
        for number in range(1, args.runs + 1):
            for outcome, run_once in plan:
                if outcome.status != "ok":
                    continue
                say(f"--- {outcome.label}: run {number}/{args.runs}")
                started = time.monotonic()
                run_once(outcome)
                outcome.seconds += time.monotonic() - started
                if outcome.status != "ok":
                    say(f"{outcome.label}: {outcome.status}: {outcome.reason}")
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: stopping everything")
    except Exception as exc:  # noqa: BLE001 - the benchmark never fails the build
        import traceback

        traceback.print_exc()
        doc["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the cleanup finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        if redis is not None:
            with contextlib.suppress(Exception):
                redis.command("FLUSHDB")
        shutil.rmtree(scratch, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    doc["interrupted"] = interrupted
    doc["git_at_end"] = git_state()
    doc["systems"] = [o.to_json() for o in outcomes]
    if doc.get("parameters"):
        json_path, md_path = write_report(doc, outcomes)
        print(md_path.read_text())
        say(f"wrote {md_path.relative_to(REPO)} and {json_path.relative_to(REPO)}")
    return 130 if interrupted else 0


def run_videojobs_postgres(
    outcome: Outcome, settings: Settings, procs: Processes, args, doc: dict, workers: int
) -> None:
    """One run of videojobs with `workers` worker processes on a scratch
    PostgreSQL database (dropped after)."""
    try:
        database = ScratchDatabase(args.postgres_url)
    except Exception as exc:  # noqa: BLE001 - reported as skipped
        outcome.fail("skipped", f"PostgreSQL not usable at {args.postgres_url}: {exc!r}")
        return
    doc["postgres_version"] = database.version
    try:
        run_videojobs(outcome, settings, procs, workers, database.url)
    finally:
        database.drop()


def _has(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
