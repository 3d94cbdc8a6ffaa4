"""What a warm pipeline process does once for all its jobs, and what it
does again for each one."""

from __future__ import annotations

import io
import json

import pytest

from videojobs.pipelines import registry
from videojobs.stack.sample_video import write_sample_video
from videojobs.storage import StorageKey, open_blob_store
from videojobs.storage.blobstore import put_bytes
from videojobs.worker import child

from support.child_tasks import probe_task


@pytest.fixture
def counted_entry_point_reads(monkeypatch):
    """Counts how often the installed distributions' entry points are read,
    in a process whose pipeline catalogue is not yet known."""
    reads: list[str] = []
    real = registry.entry_points

    def counted(**selection):
        reads.append(selection.get("group", ""))
        return real(**selection)

    monkeypatch.setattr(registry, "entry_points", counted)
    child.pipeline_catalogue.cache_clear()
    yield reads
    child.pipeline_catalogue.cache_clear()


def test_a_warm_child_finds_the_installed_pipelines_once(tmp_path, counted_entry_point_reads):
    """Reading every distribution's entry points cost a warm child about a
    third of a tiny job when it was done per job; now warm-up does it once,
    and each job still gets its own result."""
    storage_url = str(tmp_path / "storage")
    store = open_blob_store(storage_url)
    sizes = {"a": (160, 120), "b": (96, 64)}
    child.warm_up()
    for job_id, (width, height) in sizes.items():
        video = io.BytesIO()
        write_sample_video(video, width=width, height=height, fps=10, frames=5)
        put_bytes(store, StorageKey(f"jobs/{job_id}/input/source.mp4"), video.getvalue())
        task = probe_task(storage_url, job_id)
        lines = io.StringIO()
        child.run(task, child.LineReporter(lines, "probe"))
        completed = json.loads(lines.getvalue().splitlines()[-1])
        assert completed["type"] == "completed"
        assert (completed["summary"]["width"], completed["summary"]["height"]) == (width, height)
    assert counted_entry_point_reads == [registry.ENTRY_POINT_GROUP]
