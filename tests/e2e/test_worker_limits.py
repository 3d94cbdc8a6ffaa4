"""Pipeline children under their limits, as real processes.

A job that needs more memory than its child may use fails as
RESOURCE_EXHAUSTED / MEMORY_LIMIT_EXCEEDED (final), the child exits normally
and the worker lives on; the same job without a limit succeeds; the smallest
automatic limit runs real work (ocr + detect on 1280x720). The low limit is
derived from the child's own size after its imports, measured here, so the
test holds on any machine.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from videojobs.pipelines.media import DEFAULT_MAX_FRAME_PIXELS
from videojobs.stack.sample_video import write_frames, write_sample_video
from videojobs.storage import StorageKey, open_blob_store
from videojobs.storage.blobstore import put_bytes
from videojobs.v1 import job_pb2
from videojobs.worker.pool import ChildPool
from videojobs.worker.protocol import ChildTask
from videojobs.worker.runner import RunningJob, child_environment, run_child
from videojobs.worker.settings import AUTO_CHILD_MEMORY_MIN_MIB, MIB

from support.sync_api import Api

pytestmark = pytest.mark.e2e

# Room above the child's size after its imports: enough to start the job
# (read the task, open storage, open the input), far too little to decode
# 7680x4320 pictures (48 MiB each in 4:2:0, a BGR copy of 95 MiB, several
# held by the decoder's threads: the job below peaks about 700 MiB higher).
HEADROOM_MIB = 160


def child_baseline_bytes() -> int:
    """VmSize of a fresh child process after its warm-up (every pipeline
    imported), with the environment the pool gives it."""
    script = (
        "import videojobs.worker.child as child\n"
        "child.warm_up()\n"
        "print(next(l for l in open('/proc/self/status') if l.startswith('VmSize:')).split()[1])"
    )
    finished = subprocess.run(
        [sys.executable, "-c", script],
        env=child_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(finished.stdout.strip().splitlines()[-1]) * 1024


def write_8k(target) -> None:
    """Three 7680x4320 frames (within the default pixel cap), encoded fast."""
    width, height = 7680, 4320
    with av.open(target, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for index in range(3):
            image = np.full((height, width, 3), 40 * index, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def video_8k() -> bytes:
    target = io.BytesIO()
    write_8k(target)
    return target.getvalue()


@pytest.fixture(scope="module")
def baseline_bytes() -> int:
    return child_baseline_bytes()


def _task(storage: Path, key: str, pipeline: str, memory_limit_bytes: int, **extra) -> ChildTask:
    fields = {
        "storage_url": str(storage),
        "job_id": "j",
        "attempt": 1,
        "input_key": key,
        "pipeline": pipeline,
        "parameters": {},
        "output_prefix": "jobs/j/attempts/1",
        "input_format": "mp4",
        "max_frame_pixels": DEFAULT_MAX_FRAME_PIXELS,
        "memory_limit_bytes": memory_limit_bytes,
    }
    fields.update(extra)
    return ChildTask(**fields)


async def _run(task: ChildTask) -> tuple[dict, list[dict], RunningJob]:
    """Runs `task` in a warm child of a one-process pool, then closes the
    pool (the child, if it did not crash, exits when its stdin closes)."""
    job = RunningJob(job_id=task.job_id, attempt=1, lease_token="lease", pipeline=task.pipeline)
    reports: list[dict] = []

    async def report(line: dict) -> None:
        reports.append(line)

    pool = ChildPool(
        1, memory_limit_bytes=task.memory_limit_bytes, max_jobs_per_child=10, max_rss_bytes=0
    )
    await pool.start()
    try:
        terminal = await run_child(job, task, report, pool)
    finally:
        await pool.close()
    return terminal, reports, job


@pytest.fixture
def storage_with_8k(tmp_path, video_8k) -> Path:
    storage = tmp_path / "storage"
    put_bytes(open_blob_store(str(storage)), StorageKey("jobs/j/input/source.mp4"), video_8k)
    return storage


async def test_a_job_over_the_memory_limit_fails_as_resource_exhausted(
    storage_with_8k, baseline_bytes
):
    limit = baseline_bytes + HEADROOM_MIB * MIB
    task = _task(storage_with_8k, "jobs/j/input/source.mp4", "scenes", limit)
    terminal, _, job = await _run(task)
    assert terminal == {
        "type": "failed",
        "code": "RESOURCE_EXHAUSTED",
        "message": f"the job needs more memory than the {limit // MIB} MiB "
        "the worker allows one job",
        "reason": "MEMORY_LIMIT_EXCEEDED",
        "retryable": False,
    }
    assert job.child.process.returncode == 0  # reported, not crashed
    assert not open_blob_store(str(storage_with_8k)).exists(
        StorageKey("jobs/j/attempts/1/results.json")
    )


async def test_the_same_job_without_a_limit_succeeds(storage_with_8k):
    task = _task(storage_with_8k, "jobs/j/input/source.mp4", "scenes", 0)
    terminal, _, job = await _run(task)
    assert terminal["type"] == "completed", terminal
    assert job.child.process.returncode == 0
    store = open_blob_store(str(storage_with_8k))
    with store.open_read(StorageKey(terminal["output_key"])) as handle:
        document = json.load(handle)
    assert (document["video"]["width"], document["video"]["height"]) == (7680, 4320)
    assert document["sampling"]["decoded_frames"] == 3


async def test_the_smallest_automatic_limit_runs_ocr_and_detect_at_720p(tmp_path):
    """Real work fits the floor of the automatic limit: model sessions,
    decoder, OpenCV and ONNX Runtime threads included."""

    def frames():
        for index in range(30):
            image = np.full((720, 1280, 3), (60, 90, 150), np.uint8)
            cv2.putText(
                image, "MEMORY CHECK", (200, 380), cv2.FONT_HERSHEY_SIMPLEX, 3.0, (255, 255, 255), 8
            )
            image[600:700, 40 + index : 140 + index] = 255
            yield image

    path = tmp_path / "clip720.mp4"
    write_frames(path, frames(), fps=30)
    storage = tmp_path / "storage"
    put_bytes(
        open_blob_store(str(storage)), StorageKey("jobs/j/input/source.mp4"), path.read_bytes()
    )
    task = _task(
        storage,
        "jobs/j/input/source.mp4",
        "detect+ocr",
        AUTO_CHILD_MEMORY_MIN_MIB * MIB,
        parameters={"sampling": {"max_frames": 3}},
    )
    terminal, _, _ = await _run(task)
    assert terminal["type"] == "completed", terminal
    store = open_blob_store(str(storage))
    with store.open_read(StorageKey(terminal["output_key"])) as handle:
        document = json.load(handle)
    texts = {track["text"].upper() for track in document["sections"]["ocr"]["tracks"]}
    assert "MEMORY CHECK" in texts
    assert document["sampling"]["sampled_frames"] == 3


async def test_a_legacy_job_is_opened_with_the_format_its_bytes_show(tmp_path):
    storage = tmp_path / "storage"
    target = io.BytesIO()
    write_sample_video(target, width=160, height=120, frames=12, container_format="matroska")
    put_bytes(
        open_blob_store(str(storage)), StorageKey("jobs/j/input/source.mp4"), target.getvalue()
    )
    task = _task(storage, "jobs/j/input/source.mp4", "probe", 0, input_format="")
    terminal, _, _ = await _run(task)
    assert terminal["type"] == "completed", terminal
    assert terminal["summary"]["format"] == "matroska"
    assert (terminal["summary"]["width"], terminal["summary"]["height"]) == (160, 120)


def test_worker_survives_a_job_over_its_memory_limit(stack, video_8k, baseline_bytes, sample_mp4):
    """The whole path on real processes: the job fails for good (one attempt),
    the worker stays connected and runs the next job."""
    limit_mib = baseline_bytes // MIB + HEADROOM_MIB
    stack.start_server()
    # Given job-service's storage directly: the baseline is measured without
    # the gRPC channel (and its threads) a child opens to fetch through
    # BlobService, which the production limits (2 GiB and up) leave room for.
    worker = stack.start_worker(
        "small",
        VIDEOJOBS_WORKER_CHILD_MEMORY_LIMIT_MIB=str(limit_mib),
        VIDEOJOBS_STORAGE_URL=str(stack.data_dir / "storage"),
    )
    api = Api(stack.address)
    try:
        job = api.submit(video_8k, pipeline="scenes")
        failed = api.wait_terminal(job.job_id, timeout=120)
        assert failed.state == job_pb2.JOB_STATE_FAILED, failed
        assert failed.attempt == 1
        assert failed.error.code == 8  # RESOURCE_EXHAUSTED
        assert f"{limit_mib} MiB" in failed.error.message
        assert "MEMORY_LIMIT_EXCEEDED" in str(failed.error.details[0].value)
        assert worker.running()
        after = api.submit(sample_mp4)
        done = api.wait_terminal(after.job_id, timeout=120)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
    finally:
        api.close()
