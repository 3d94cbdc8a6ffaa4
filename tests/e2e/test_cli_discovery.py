"""`videojobs pipelines`, `workers` and `stats` against a real pair, and the
exit codes of `results --follow` for jobs that fail or are cancelled."""

from __future__ import annotations

import json
import subprocess

import pytest

from videojobs.v1 import job_pb2

from support.processes import BIN
from support.sync_api import Api
from support.videos import write_audio_only, write_sample_video

pytestmark = pytest.mark.e2e


@pytest.fixture
def video(tmp_path):
    """A 2 s, 160x120, 25 fps H.264 MP4."""
    path = tmp_path / "clip.mp4"
    write_sample_video(path, width=160, height=120, fps=25, frames=50)
    return path


def test_pipelines_workers_and_stats_describe_the_running_pair(stack, video):
    stack.start_server()
    worker = stack.start_worker("cli-seen")

    table = stack.cli("pipelines").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "VERSION", "FRAMES"]
    names = [line.split()[0] for line in table[2:]]
    assert names == ["detect", "ocr", "probe", "scenes", "thumbnails"]

    ocr = stack.cli("pipelines", "ocr").stdout.splitlines()
    assert ocr[0].startswith("ocr ")
    assert any(line.startswith("  min_confidence (number, default ") for line in ocr)
    assert "sampling parameters (shared by a job's frame pipelines):" in ocr
    missing = stack.cli("pipelines", "nope", check=False)
    assert missing.returncode == 2 and "no pipeline 'nope'" in missing.stderr
    unknown_filter = stack.cli("list", "--pipeline", "nope", check=False)
    assert unknown_filter.returncode == 1, unknown_filter.stdout
    assert "INVALID_ARGUMENT" in unknown_filter.stderr and "pipeline" in unknown_filter.stderr

    schema = json.loads(stack.cli("pipelines", "probe", "--json").stdout)
    assert schema["parametersSchema"]["properties"]["count_frames"]["type"] == "boolean"

    workers = json.loads(stack.cli("workers", "--json").stdout)["workers"]
    assert [w["workerId"] for w in workers] == ["cli-seen"]
    assert workers[0]["statusAddress"] == worker.address
    assert workers[0]["slots"] >= 1
    rows = stack.cli("workers").stdout.splitlines()
    assert rows[2].split()[0] == "cli-seen" and rows[2].split()[2] == "ready"

    submitted = stack.cli("submit", str(video), "--wait", "--json")
    assert json.loads(submitted.stdout)["state"] == "JOB_STATE_SUCCEEDED"
    stats = json.loads(stack.cli("stats", "--json").stdout)
    assert stats["total"]["counts"] == [{"state": "JOB_STATE_SUCCEEDED", "count": "1"}]
    assert stats["total"]["successRate"] == 1
    assert [p["pipeline"] for p in stats["pipelines"]] == ["probe"]
    text = stack.cli("stats").stdout.splitlines()
    assert text[1] == "probe: SUCCEEDED 1"
    assert text[2].startswith("  success 100.0%, run p50 ")


def test_results_follow_exits_3_for_a_cancelled_job_and_1_for_a_failed_one(stack, video, tmp_path):
    stack.start_server()
    # No worker: the job stays queued until cancelled.
    job_id = stack.cli("submit", str(video)).stdout.split()[0]
    stack.cli("cancel", job_id)
    cancelled = stack.cli("results", job_id, "--follow", check=False)
    assert cancelled.returncode == 3, cancelled.stderr
    assert cancelled.stdout.splitlines()[-1].split()[2] == "cancelled"

    # A real MP4 with no video stream: accepted, then failed by the worker.
    audio_only = tmp_path / "audio.mp4"
    write_audio_only(audio_only, seconds=1.0)
    stack.start_worker("fails-it")
    failed_id = stack.cli("submit", str(audio_only)).stdout.split()[0]
    failed = stack.cli("results", failed_id, "--follow", "--timeout", "60", check=False)
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout.splitlines()[-1].split()[2] == "failed"


def test_results_follow_says_it_reconnects_and_gives_up_after_timeout(stack, tmp_path):
    # Nothing listens at the stack's address: job-service was never started.
    result = stack.cli("results", "0" * 32, "--follow", "--timeout", "1", check=False, timeout=30)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert any(
        line.startswith(f"videojobs: job-service at {stack.address} did not answer (UNAVAILABLE")
        and line.endswith("(gives up after 1 s; see --timeout)")
        for line in lines
    ), result.stderr
    assert "UNAVAILABLE" in lines[-1] or "UNAVAILABLE" in result.stderr


def test_watch_follows_several_jobs_to_their_ends(stack, video):
    stack.start_server()
    stack.start_worker("watched", VIDEOJOBS_WORKER_PIPELINES="probe")
    api = Api(stack.address)
    probes = [api.submit_with(video.read_bytes()).job_id for _ in range(2)]
    # No worker runs thumbnails: this one waits until it is cancelled.
    waiting = api.submit_with(video.read_bytes(), pipeline="thumbnails").job_id
    watcher = subprocess.Popen(
        [str(BIN / "videojobs"), "--address", stack.address, "watch", *probes, waiting],
        env=stack.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for job_id in probes:
            assert api.wait_terminal(job_id).state == job_pb2.JOB_STATE_SUCCEEDED
        api.cancel(waiting)
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
        api.close()
    assert watcher.returncode == 3, err  # one of them was cancelled
    assert out.splitlines() == [
        f"{probes[0]} SUCCEEDED",
        f"{probes[1]} SUCCEEDED",
        f"{waiting} CANCELLED",
    ]
    # Off a terminal: a line per step of each job on stderr.
    for job_id in probes:
        assert f"job {job_id}: completed" in err
    assert f"job {waiting}: cancelled" in err
