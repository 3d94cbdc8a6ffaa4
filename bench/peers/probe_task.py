"""The job every peer runs: what a videojobs worker's child does for a `probe`
job, minus gRPC and the database.

The bytes the client sent are written to a local blob store in a scratch
directory, the container format is identified from them (as job-service does
at submit), `videojobs.pipelines.runner.run_job` runs the `probe` pipeline
under the default pixel cap, the result document is written next to them as
`results.json` (as the child does), and the job's summary is returned (what a
videojobs client reads from `Job.summary`). Importing this module loads the
pipeline, so a worker that imports it before forking starts warm.
"""

from __future__ import annotations

import json
import tempfile
from typing import Any

from videojobs.pipelines import builtin_catalogue
from videojobs.pipelines.media import identify_container
from videojobs.pipelines.runner import run_job
from videojobs.storage import StorageKey
from videojobs.storage.blobstore import put_bytes
from videojobs.storage.local import LocalBlobStore

CATALOGUE = builtin_catalogue(include_entry_points=False)
CATALOGUE.get("probe")  # import the pipeline (and PyAV) now, not in the first job
INPUT_KEY = StorageKey("inputs/job/input")
OUTPUT_PREFIX = StorageKey("results/job")


class _NullReporter:
    """Progress and partial results go nowhere: peers have no live event stream."""

    def progress(self, fraction: float, stage: str) -> None:
        """Dropped."""

    def partial_result(self, data: dict) -> None:
        """Dropped."""


def probe_bytes(data: bytes) -> dict[str, Any]:
    """Probes a video given as bytes; returns the job summary."""
    with tempfile.TemporaryDirectory(prefix="peer-probe-") as scratch:
        store = LocalBlobStore(scratch)
        put_bytes(store, INPUT_KEY, data)
        with store.open_read(INPUT_KEY) as source:
            input_format = identify_container(source)
        output = run_job(
            CATALOGUE,
            ("probe",),
            {},
            store,
            INPUT_KEY,
            OUTPUT_PREFIX,
            _NullReporter(),
            input_format=input_format,
        )
        document = {"job_id": "bench", "attempt": 1, **output.document}
        encoded = json.dumps(document, indent=1, sort_keys=True, allow_nan=False).encode()
        put_bytes(store, OUTPUT_PREFIX.child("results.json"), encoded)
        return output.summary


def warm() -> None:
    """Process-pool initializer: the import above did the work."""
