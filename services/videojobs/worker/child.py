"""Entry point of a pipeline child process: `python -m videojobs.worker.child`.

A warm process of the worker's pool (`worker.pool`): it imports every
pipeline once, then runs one task at a time, many over its life, reporting
on stdout (see `protocol`). Isolation is the point: a decoder that crashes
or hangs takes down this process, never the worker, and the worker can
always kill it (that is how a job is stopped) and start another.

The child also bounds itself: before it reads any input it caps its own
address space (RLIMIT_AS) at the worker's memory limit, so a hostile or simply
enormous input makes allocations fail here (MemoryError, FFmpeg's ENOMEM),
which is reported as a final RESOURCE_EXHAUSTED failure, instead of the
machine's OOM killer choosing a victim. The input is opened only with the
container format recorded for the job (identified from its bytes, by the same
rules as job-service, for jobs accepted before formats were recorded) and
decoded under the task's pixel cap.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import resource
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, TextIO

import cv2

from videojobs.common.security import ClientSecurity
from videojobs.pipelines import PipelineCatalogue, PipelineFailure, builtin_catalogue
from videojobs.pipelines.media import identify_container
from videojobs.pipelines.plan import split_key
from videojobs.pipelines.runner import run_job
from videojobs.storage import BlobStore, StorageKey, open_blob_store
from videojobs.storage.blobstore import BlobNotFound, BlobStoreError, put_bytes
from videojobs.storage.remote import CHANNEL_OPTIONS as REMOTE_CHANNEL_OPTIONS
from videojobs.storage.remote import RemoteBlobStore
from videojobs.worker.protocol import ChildTask

RESULT_FILE_NAME = "results.json"
# Progress lines are rate-limited here so a fast pipeline cannot flood the
# worker stream and the event log.
PROGRESS_MIN_INTERVAL_SECONDS = 0.1
MIB = 1024 * 1024
# A job whose address space came this close to its limit and then failed in
# any way failed for want of memory. Not every failed allocation says so: a
# thread that cannot get its stack makes FFmpeg report EAGAIN, a library that
# cannot be mapped is an ImportError, ONNX Runtime wraps std::bad_alloc. Those
# are small requests, made when the process is nearly full.
NEAR_MEMORY_LIMIT_BYTES = 64 * MIB
# Failures an allocation failure deep inside FFmpeg can pass for.
_DECODER_FAILURE_REASONS = frozenset({"INPUT_NOT_DECODABLE", "INPUT_NOT_MEDIA"})

log = logging.getLogger("videojobs.worker.child")


class LineReporter:
    """PipelineReporter that writes protocol lines."""

    def __init__(self, out: TextIO, pipeline: str) -> None:
        self._out = out
        self._pipeline = pipeline
        self._lock = threading.Lock()
        self._last_progress_at = 0.0
        self._last_fraction = -1.0

    def emit(self, message: dict[str, Any]) -> None:
        """Writes one protocol line."""
        line = json.dumps(message, separators=(",", ":"), allow_nan=False)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def progress(self, fraction: float, stage: str) -> None:
        """Reports progress, at most every PROGRESS_MIN_INTERVAL_SECONDS (and 1.0 always)."""
        fraction = min(1.0, max(0.0, float(fraction)))
        now = time.monotonic()
        if fraction < 1.0 and now - self._last_progress_at < PROGRESS_MIN_INTERVAL_SECONDS:
            return
        if fraction <= self._last_fraction and fraction < 1.0:
            return
        self._last_progress_at = now
        self._last_fraction = fraction
        self.emit({"type": "progress", "fraction": fraction, "stage": stage})

    def partial_result(self, data: dict) -> None:
        """Reports a partial result."""
        self.emit({"type": "partial", "pipeline": self._pipeline, "data": data})


def apply_memory_limit(limit_bytes: int) -> None:
    """Caps this process's address space at `limit_bytes` (0: no cap).

    Soft and hard limit both, so nothing in the process can lift it again.
    RLIMIT_AS counts reserved address space, not only touched memory: thread
    stacks and malloc arenas count in full, which is why the worker's default
    leaves generous room above what real jobs peak at.
    """
    if limit_bytes <= 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit_bytes = min(limit_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` reports a failed allocation: Python's and NumPy's
    MemoryError, FFmpeg's ENOMEM (PyAV's `av.error.MemoryError` is one), or
    OpenCV's "insufficient memory"."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, cv2.error) and getattr(exc, "code", None) == cv2.Error.StsNoMem


def _status_bytes(field: str) -> int:
    """A size field of /proc/self/status (`VmPeak`, `VmRSS`) in bytes; 0 if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def peak_address_space_bytes() -> int:
    """The largest address space this process has had (VmPeak; 0 if unknown)."""
    return _status_bytes("VmPeak")


def reached_memory_limit(limit_bytes: int) -> bool:
    """Whether a limit is set and this process's address space came within
    NEAR_MEMORY_LIMIT_BYTES of it."""
    return limit_bytes > 0 and peak_address_space_bytes() >= limit_bytes - NEAR_MEMORY_LIMIT_BYTES


def memory_failure(limit_bytes: int) -> dict[str, Any]:
    """The `failed` line of a job that ran out of memory. Not retryable: the
    same input needs the same memory on the next attempt."""
    if limit_bytes > 0:
        message = (
            f"the job needs more memory than the {limit_bytes // MIB} MiB the worker allows one job"
        )
    else:
        message = "the job ran out of memory (the worker sets no per-job limit)"
    return {
        "type": "failed",
        "code": "RESOURCE_EXHAUSTED",
        "message": message,
        "reason": "MEMORY_LIMIT_EXCEEDED",
        "retryable": False,
    }


# One channel to job-service per address and credentials, kept for the life
# of this warm process: a job reuses the connection instead of paying a new
# TCP (and TLS) handshake. It carries nothing of a job: each job's store
# sends its own lease token with every call.
_CHANNELS: dict[tuple[str, str], Any] = {}


def _channel_to(task: ChildTask):
    key = (task.job_service_address, json.dumps(task.credentials, sort_keys=True))
    channel = _CHANNELS.get(key)
    if channel is None:
        security = ClientSecurity(**task.credentials)
        channel = _CHANNELS[key] = security.sync_channel(
            task.job_service_address, REMOTE_CHANNEL_OPTIONS
        )
    return channel


def open_task_store(task: ChildTask) -> BlobStore:
    """The storage of the task: job-service's BlobService (default), or the
    shared storage named by `storage_url` (the direct optimisation)."""
    if task.storage_url:
        return open_blob_store(task.storage_url)
    return RemoteBlobStore(
        task.job_service_address,
        lease_token=task.lease_token,
        spool_dir=task.spool_dir or None,
        channel=_channel_to(task),
        owns_channel=False,
    )


class LocalInput:
    """The task's store, with the job's input read from a local copy that was
    fetched once, before the memory limit (a remote store would otherwise
    fetch it again for every pipeline that opens it). Everything else goes to
    the store itself."""

    def __init__(self, store: BlobStore, input_key: StorageKey, path: str) -> None:
        self._store = store
        self._input_key = input_key
        self._path = path

    def open_read(self, key: StorageKey):
        """The local copy for the input, the store's object for any other key."""
        if key == self._input_key:
            return open(self._path, "rb")  # noqa: SIM115 - the caller closes it
        return self._store.open_read(key)

    def exists(self, key: StorageKey) -> bool:
        """The input exists (it was fetched); other keys are asked of the store."""
        return key == self._input_key or self._store.exists(key)

    def __getattr__(self, name: str):
        return getattr(self._store, name)


@dataclass
class PreparedTask:
    """What a task needs before its input is decoded: its store (with the
    input at hand) and the input's container format."""

    store: BlobStore
    input_format: str
    cleanup: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Removes the local copy of the input and releases the store."""
        for path in self.cleanup:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with contextlib.suppress(Exception):
            self.store.close()


def prepare(task: ChildTask) -> PreparedTask:
    """Opens the task's storage and gets its input ready: through
    job-service's BlobService, the input is fetched into the spool directory
    once. Runs before the memory limit: connections, their threads and the
    fetch cost the same for every job; what an input makes the decoders
    allocate is what the limit is for."""
    store = open_task_store(task)
    input_key = StorageKey(task.input_key)
    prepared = PreparedTask(store=store, input_format=task.input_format)
    if isinstance(store, RemoteBlobStore):
        spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, removed by close()
            dir=task.spool_dir or None, prefix="input-", delete=False
        )
        prepared.cleanup.append(spool.name)
        try:
            with spool:
                store.fetch_into(input_key, spool)
        except BlobNotFound:
            raise _input_missing() from None
        prepared.store = LocalInput(store, input_key, spool.name)
    elif not store.exists(input_key):
        raise _input_missing()
    if not prepared.input_format:
        with prepared.store.open_read(input_key) as source:
            prepared.input_format = identify_container(source)
        log.info(
            "job %s: no recorded input format; its bytes say %s",
            task.job_id,
            prepared.input_format,
        )
    return prepared


def _input_missing() -> PipelineFailure:
    return PipelineFailure(
        "the job's input is missing from storage", code="NOT_FOUND", reason="INPUT_MISSING"
    )


def run(task: ChildTask, reporter: LineReporter, prepared: PreparedTask | None = None) -> None:
    """Runs the task and emits its terminal line."""
    prepared = prepared or prepare(task)
    store = prepared.store
    input_key = StorageKey(task.input_key)
    output_prefix = StorageKey(task.output_prefix)
    input_format = prepared.input_format
    output = run_job(
        pipeline_catalogue(),
        split_key(task.pipeline),
        task.parameters,
        store,
        input_key,
        output_prefix,
        reporter,
        input_format=input_format,
        max_frame_pixels=task.max_frame_pixels,
    )
    output_key = output_prefix.child(RESULT_FILE_NAME)
    document = {"job_id": task.job_id, "attempt": task.attempt, **output.document}
    encoded = json.dumps(document, indent=1, sort_keys=True, allow_nan=False).encode()
    put_bytes(store, output_key, encoded)
    reporter.progress(1.0, "done")
    reporter.emit(
        {
            "type": "completed",
            "output_key": output_key.value,
            "artifacts": [
                {
                    "key": a.key.value,
                    "media_type": a.media_type,
                    "size_bytes": a.size_bytes,
                    "width": int(a.extra.get("width", 0)),
                    "height": int(a.extra.get("height", 0)),
                    "time_seconds": float(a.extra.get("time", 0.0)),
                    "index": int(a.extra.get("index", 0)),
                    "frame_index": int(a.extra.get("frame", 0)),
                }
                for a in output.artifacts
            ],
            "summary": output.summary,
            "warnings": output.document.get("warnings", []),
        }
    )


def run_task(task: ChildTask, reporter: LineReporter) -> bool:
    """Runs one task and emits its terminal line (completed or failed); never
    raises. Returns whether the job failed for want of memory."""
    failure: dict[str, Any]
    out_of_memory: str | None = None
    prepared: PreparedTask | None = None
    limit = task.memory_limit_bytes
    try:
        prepared = prepare(task)
        run(task, reporter, prepared)
        prepared.close()
        return False
    except PipelineFailure as exc:
        if exc.reason in _DECODER_FAILURE_REASONS and reached_memory_limit(limit):
            failure = memory_failure(limit)
            out_of_memory = f"{exc.reason}: {exc.message}"
        else:
            failure = {
                "type": "failed",
                "code": exc.code,
                "message": exc.message,
                "reason": exc.reason,
                "retryable": exc.retryable,
            }
    except BlobStoreError as exc:
        failure = {
            "type": "failed",
            "code": "UNAVAILABLE",
            "message": str(exc),
            "reason": "STORAGE_ERROR",
            "retryable": True,
        }
    except Exception as exc:  # noqa: BLE001 - reported as a retryable crash, traceback to stderr
        if is_out_of_memory(exc) or reached_memory_limit(limit):
            # No traceback here: formatting one needs memory, and the frames it
            # would keep alive hold what filled it.
            failure = memory_failure(limit)
            out_of_memory = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        else:
            traceback.print_exc(file=sys.stderr)
            failure = {
                "type": "failed",
                "code": "INTERNAL",
                "message": f"the {task.pipeline} pipeline crashed ({type(exc).__name__})",
                "reason": "PIPELINE_CRASHED",
                "retryable": True,
            }
    # Out of the except blocks, the failed job's frames and arrays are released.
    if out_of_memory is not None:
        log.warning("job %s ran out of memory: %s", task.job_id, out_of_memory)
    reporter.emit(failure)
    if prepared is not None:
        prepared.close()
    return out_of_memory is not None


def resident_bytes() -> int:
    """This process's resident memory (VmRSS; 0 if unknown)."""
    return _status_bytes("VmRSS")


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the worker that started it dies,
    however it dies (a warm child may be busy and not reading its stdin)."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(3)  # the worker died before the call above


@functools.cache
def pipeline_catalogue() -> PipelineCatalogue:
    """This process's pipelines, found once. Finding them reads the metadata
    of every installed distribution (entry points), which cost a warm child
    about a third of a tiny job's time when it was done per job. A plug-in
    installed later is seen by the next child the pool starts (the worker
    announces its pipelines once, at start, anyway)."""
    return builtin_catalogue()


def warm_up() -> None:
    """Imports every installed pipeline's code now, so no job pays for it."""
    catalogue = pipeline_catalogue()
    for name in catalogue.names:
        try:
            catalogue.get(name)
        except Exception:  # noqa: BLE001 - a broken plug-in fails its own jobs, not the pool
            log.warning("pipeline %s could not be loaded", name, exc_info=True)


def serve_warm(protocol_out: TextIO, memory_limit_bytes: int) -> int:
    """`--warm`: imports the pipelines, says `ready`, then runs one task per
    stdin line until stdin closes, saying `idle` (with its memory) after each.
    Each task gets fresh pipeline objects, storage connection and spool file;
    the worker kills this process to stop a job."""
    _die_with_parent()
    warm_up()
    # Capped once, before any input is read: an input that needs more than
    # the limit fails here, and the worker then retires this process.
    apply_memory_limit(memory_limit_bytes)
    control = LineReporter(protocol_out, "")
    control.emit({"type": "ready", "pid": os.getpid()})
    for raw in sys.stdin:
        if not raw.strip():
            continue
        task = ChildTask(**json.loads(raw))
        out_of_memory = run_task(task, LineReporter(protocol_out, task.pipeline))
        control.emit(
            {
                "type": "idle",
                "rss_bytes": resident_bytes(),
                "near_memory_limit": out_of_memory or reached_memory_limit(memory_limit_bytes),
            }
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m videojobs.worker.child [--memory-limit-bytes N]`: a warm
    pipeline process (see `serve_warm`), started by the worker's pool."""
    parser = argparse.ArgumentParser(prog="python -m videojobs.worker.child")
    parser.add_argument("--warm", action="store_true", help="(the only mode; kept for clarity)")
    parser.add_argument("--memory-limit-bytes", type=int, default=0)
    args = parser.parse_args(argv)
    # The protocol owns the real stdout; anything else printed goes to stderr.
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(level=logging.INFO, format="child %(levelname)s %(name)s: %(message)s")
    return serve_warm(protocol_out, args.memory_limit_bytes)


if __name__ == "__main__":
    raise SystemExit(main())
