"""`videojobs fetch` and `videojobs results --document` as real commands against
a real videojobs-server and videojobs-worker: the files they write and the JSON
they print are the job's stored result and thumbnails, fetched over gRPC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from videojobs.stack.sample_video import write_frames

pytestmark = pytest.mark.e2e

JPEG_MAGIC = b"\xff\xd8\xff"
FPS, FRAMES = 12, 30  # 2.5 s


@pytest.fixture
def video(tmp_path) -> Path:
    """2.5 s of 320x240 noise: over 256 KiB, so `submit` takes the resumable
    staged-upload path, and every frame differs, so thumbnails are real."""
    path = tmp_path / "inputs" / "noise.mp4"
    path.parent.mkdir()
    rng = np.random.default_rng(11)
    frames = (rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(FRAMES))
    write_frames(path, frames, fps=FPS, crf=14)
    assert path.stat().st_size > 256 * 1024
    return path


def test_fetch_writes_the_result_and_every_thumbnail_and_document_prints_the_same(
    stack, video, tmp_path
):
    stack.start_server()
    stack.start_worker("fetch-worker")
    submitted = stack.cli(
        "submit",
        str(video),
        "--pipeline",
        "thumbnails",
        "--param",
        "mode=interval",
        "--param",
        "interval_seconds=0.5",
        "--wait",
        "--json",
    )
    job = json.loads(submitted.stdout)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert int(job["inputSizeBytes"]) == video.stat().st_size
    job_id = job["jobId"]
    prefix = job["outputKey"].rsplit("/", 1)[0]
    artifacts = job["artifacts"]
    assert len(artifacts) >= 3, artifacts

    out = tmp_path / "fetched"
    fetched = stack.cli("fetch", job_id, "-o", str(out))
    printed = [Path(line) for line in fetched.stdout.splitlines()]
    expected = [out / "results.json"] + [
        out / artifact["key"].removeprefix(prefix + "/") for artifact in artifacts
    ]
    assert printed == expected
    # Off a terminal, progress went to stderr as plain lines.
    assert f"fetching job {job_id}" in fetched.stderr

    files = sorted(p for p in out.rglob("*") if p.is_file())
    assert files == sorted(expected)  # nothing else (no temporary files left)
    thumbnails = [p for p in files if p.suffix == ".jpg"]
    assert len(thumbnails) == len(artifacts)
    for artifact in artifacts:
        path = out / artifact["key"].removeprefix(prefix + "/")
        data = path.read_bytes()
        assert data.startswith(JPEG_MAGIC), path
        assert len(data) == int(artifact["sizeBytes"]), path
        assert path.parent == out / "thumbnails"

    fetched_document = json.loads((out / "results.json").read_text())
    assert fetched_document["pipelines"] == ["thumbnails"]
    images = fetched_document["sections"]["thumbnails"]["images"]
    assert len(images) == len(artifacts)

    document = stack.cli("results", job_id, "--document")
    assert json.loads(document.stdout) == fetched_document
    assert document.stdout.startswith("{\n  ")  # pretty, for people

    # A second fetch into the same directory replaces the files in place.
    again = stack.cli("fetch", job_id, "--output", str(out))
    assert again.stdout == fetched.stdout
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files

    # `delete` removes the job with its input, result and thumbnails.
    deleted = stack.cli("delete", job_id)
    assert deleted.stdout.strip() == (
        f"{job_id} deleted ({len(artifacts) + 2} stored object(s) removed)"
    )
    gone = stack.cli("status", job_id, check=False)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr
    assert list((stack.data_dir / "storage" / "jobs").glob("*")) == []


def test_fetch_and_document_of_a_job_without_a_result_exit_1(stack, video, tmp_path):
    stack.start_server()  # no worker: the job stays QUEUED
    submitted = stack.cli("submit", str(video), "--pipeline", "thumbnails")
    job_id, state = submitted.stdout.split()
    assert state == "QUEUED"

    out = tmp_path / "nothing"
    fetch = stack.cli("fetch", job_id, "-o", str(out), check=False)
    assert fetch.returncode == 1, fetch
    assert "FAILED_PRECONDITION" in fetch.stderr and "JOB_NOT_SUCCEEDED" in fetch.stderr
    assert "state=QUEUED" in fetch.stderr
    assert fetch.stdout == ""
    assert not out.exists()

    document = stack.cli("results", job_id, "--document", check=False)
    assert document.returncode == 1, document
    assert "JOB_NOT_SUCCEEDED" in document.stderr
    assert document.stdout == ""

    unknown = stack.cli("fetch", "f" * 32, "-o", str(out), check=False)
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr

    live = stack.cli("delete", job_id, check=False)
    assert live.returncode == 1 and "JOB_NOT_ENDED" in live.stderr
