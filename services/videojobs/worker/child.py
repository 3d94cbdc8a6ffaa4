"""Entry point of a pipeline child process: `python -m videojobs.worker.child`.

Runs one pipeline over one input and reports on stdout (see `protocol`).
Isolation is the point: a decoder that crashes or hangs takes down this
process, never the worker, and the worker can always kill it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any, TextIO

from videojobs.pipelines import PipelineFailure, builtin_catalogue
from videojobs.pipelines.plan import split_key
from videojobs.pipelines.runner import run_job
from videojobs.storage import StorageKey, open_blob_store
from videojobs.storage.blobstore import BlobStoreError, put_bytes
from videojobs.worker.protocol import ChildTask

RESULT_FILE_NAME = "results.json"
# Progress lines are rate-limited here so a fast pipeline cannot flood the
# worker stream and the event log.
PROGRESS_MIN_INTERVAL_SECONDS = 0.1


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


def _exit_when_parent_goes(stdin: TextIO) -> None:
    """Ends this process as soon as stdin closes (worker stop or worker death)."""
    stdin.read()
    os._exit(3)


def run(task: ChildTask, reporter: LineReporter) -> None:
    """Runs the task and emits its terminal line."""
    store = open_blob_store(task.storage_url)
    input_key = StorageKey(task.input_key)
    output_prefix = StorageKey(task.output_prefix)
    if not store.exists(input_key):
        raise PipelineFailure(
            "the job's input is missing from storage", code="NOT_FOUND", reason="INPUT_MISSING"
        )
    output = run_job(
        builtin_catalogue(),
        split_key(task.pipeline),
        task.parameters,
        store,
        input_key,
        output_prefix,
        reporter,
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


def main() -> int:
    """Reads the task from stdin, runs it, reports on stdout."""
    # The protocol owns the real stdout; anything else printed goes to stderr.
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(level=logging.INFO, format="child %(levelname)s %(name)s: %(message)s")
    task = ChildTask(**json.loads(sys.stdin.readline()))
    threading.Thread(target=_exit_when_parent_goes, args=(sys.stdin,), daemon=True).start()
    reporter = LineReporter(protocol_out, task.pipeline)
    try:
        run(task, reporter)
    except PipelineFailure as exc:
        reporter.emit(
            {
                "type": "failed",
                "code": exc.code,
                "message": exc.message,
                "reason": exc.reason,
                "retryable": exc.retryable,
            }
        )
    except BlobStoreError as exc:
        reporter.emit(
            {
                "type": "failed",
                "code": "UNAVAILABLE",
                "message": str(exc),
                "reason": "STORAGE_ERROR",
                "retryable": True,
            }
        )
    except Exception as exc:  # noqa: BLE001 - reported as a retryable crash, traceback to stderr
        traceback.print_exc(file=sys.stderr)
        reporter.emit(
            {
                "type": "failed",
                "code": "INTERNAL",
                "message": f"the {task.pipeline} pipeline crashed ({type(exc).__name__})",
                "reason": "PIPELINE_CRASHED",
                "retryable": True,
            }
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
