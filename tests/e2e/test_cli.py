"""The `videojobs` CLI as a real command against a real videojobs-server and
videojobs-worker: what it prints, what it exits with, and that the numbers it
reports are those of the video the test encoded."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import threading

import pytest

from videojobs.storage import StorageKey, open_blob_store
from videojobs.v1 import job_pb2

from support.processes import BIN
from support.sync_api import Api
from support.videos import write_sample_video
from support.waiting import eventually_sync

pytestmark = pytest.mark.e2e

# The video every test here encodes: odd enough numbers that a default cannot pass for them.
WIDTH, HEIGHT, FPS, FRAMES = 192, 144, 12, 30
SAMPLE_RATE, CHANNELS = 22050, 2
DURATION = FRAMES / FPS  # 2.5 s

JOB_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def video(tmp_path):
    """192x144, 12 fps, 30 frames of H.264 with 2.5 s of stereo AAC at 22.05 kHz."""
    path = tmp_path / "inputs" / "clip-192x144.mp4"
    path.parent.mkdir()
    write_sample_video(
        path,
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        frames=FRAMES,
        audio_sample_rate=SAMPLE_RATE,
        audio_channels=CHANNELS,
    )
    return path


def _result_document(stack, output_key: str) -> dict:
    store = open_blob_store(str(stack.data_dir / "storage"))
    with store.open_read(StorageKey(output_key)) as handle:
        return json.load(handle)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _listed_ids(stack) -> list[str]:
    listed = json.loads(stack.cli("list", "--json").stdout)
    return [job["jobId"] for job in listed.get("jobs", [])]


def test_submit_wait_json_reports_the_encoded_numbers_and_every_command_agrees(stack, video):
    stack.start_server()
    stack.start_worker("cli-worker")

    submitted = stack.cli("submit", str(video), "--param", "count_frames=true", "--wait", "--json")
    assert submitted.returncode == 0
    job = json.loads(submitted.stdout)
    job_id = job["jobId"]
    assert JOB_ID.fullmatch(job_id), job_id
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert job["pipeline"] == "probe"
    assert job["parameters"] == {"probe": {"count_frames": True, "verify_frames": 3}}
    assert job["pipelines"] == ["probe"]
    assert job["attempt"] == 1
    assert job["progress"]["fraction"] == 1.0
    assert job["fileName"] == video.name  # the base name only, never the path
    assert int(job["inputSizeBytes"]) == video.stat().st_size
    assert job["outputKey"] == f"jobs/{job_id}/attempts/1/results.json"
    assert "error" not in job

    summary = job["summary"]
    # The shapes README gives for a probe job's summary and result document.
    assert set(summary) == {
        "format",
        "duration_seconds",
        "stream_count",
        "video_codec",
        "width",
        "height",
        "frame_rate",
        "frame_count",
    }
    assert summary["video_codec"] == "h264"
    assert summary["width"] == WIDTH
    assert summary["height"] == HEIGHT
    assert summary["frame_rate"] == pytest.approx(FPS)
    assert summary["frame_count"] == FRAMES
    assert summary["stream_count"] == 2
    assert summary["duration_seconds"] == pytest.approx(DURATION, abs=0.05)

    # The full result document in storage, per stream.
    document = _result_document(stack, job["outputKey"])
    assert set(document) == {"job_id", "attempt", "version", "pipelines", "sections", "warnings"}
    assert document["pipelines"] == ["probe"]
    probe = document["sections"]["probe"]
    assert set(probe) == {"pipeline", "version", "container", "streams"}
    assert probe["pipeline"] == "probe"
    assert probe["container"]["stream_count"] == 2
    assert probe["container"]["duration_seconds"] == pytest.approx(DURATION, abs=0.05)
    streams = {stream["type"]: stream for stream in probe["streams"]}
    assert sorted(streams) == ["audio", "video"]
    video_stream, audio_stream = streams["video"], streams["audio"]
    assert video_stream["codec"] == "h264"
    assert (video_stream["width"], video_stream["height"]) == (WIDTH, HEIGHT)
    assert video_stream["frame_rate"] == pytest.approx(FPS)
    assert video_stream["frame_count"] == FRAMES
    assert video_stream["frame_count_source"] == "demux"  # count_frames=true was honoured
    assert video_stream["pixel_format"] == "yuv420p"
    assert audio_stream["codec"] == "aac"
    assert audio_stream["sample_rate"] == SAMPLE_RATE
    assert audio_stream["channels"] == CHANNELS
    assert audio_stream["duration_seconds"] == pytest.approx(DURATION, abs=0.05)

    # status --json: the same job.
    status = stack.cli("status", job_id, "--json")
    assert json.loads(status.stdout) == job

    # status (for people): the state and where the result is.
    human = stack.cli("status", job_id).stdout
    assert re.search(r"^state:\s+SUCCEEDED$", human, re.MULTILINE), human
    assert re.search(rf"^output:\s+{re.escape(job['outputKey'])}$", human, re.MULTILINE), human
    assert re.search(rf"^job:\s+{job_id}$", human, re.MULTILINE), human

    # results --json: one event per line, 1..N without gaps, ending in `completed`.
    events = _json_lines(stack.cli("results", job_id, "--json").stdout)
    sequences = [int(event["sequence"]) for event in events]
    assert sequences == list(range(1, len(events) + 1)), sequences
    assert len(events) == int(job["lastEventSequence"])
    assert all(event["jobId"] == job_id for event in events)
    assert events[0]["stateChanged"]["toState"] == "JOB_STATE_QUEUED"
    assert "completed" in events[-1], events[-1]
    assert events[-1]["jobState"] == "JOB_STATE_SUCCEEDED"
    assert events[-1]["completed"]["outputKey"] == job["outputKey"]
    assert events[-1]["completed"]["summary"] == summary
    terminal = [e for e in events if {"completed", "failed", "cancelled"} & e.keys()]
    assert len(terminal) == 1
    partial_streams = [
        e["partialResult"]["data"]["stream"]
        for e in events
        if "partialResult" in e and e["partialResult"]["data"].get("section") == "stream"
    ]
    assert {s["type"]: s.get("frame_count") for s in partial_streams} == {
        "video": FRAMES,
        "audio": None,
    }

    # list --json: the job is there.
    assert _listed_ids(stack) == [job_id]

    # cancel of a finished job: refused with the reason, and the job stays SUCCEEDED.
    cancel = stack.cli("cancel", job_id, check=False)
    assert cancel.returncode == 1, cancel
    assert "FAILED_PRECONDITION" in cancel.stderr, cancel.stderr
    assert "JOB_ALREADY_ENDED" in cancel.stderr, cancel.stderr
    assert cancel.stdout == ""
    assert json.loads(stack.cli("status", job_id, "--json").stdout)["state"] == (
        "JOB_STATE_SUCCEEDED"
    )


def test_refused_commands_exit_with_the_documented_codes_and_create_no_job(stack, video, tmp_path):
    stack.start_server()  # nothing here needs a worker

    malformed = stack.cli("status", "0123", check=False)
    assert malformed.returncode == 1, malformed
    assert "INVALID_ARGUMENT" in malformed.stderr, malformed.stderr
    assert re.search(r"^\s+job_id: ", malformed.stderr, re.MULTILINE), malformed.stderr
    assert malformed.stdout == ""

    missing = stack.cli("submit", str(tmp_path / "no-such-video.mp4"), check=False)
    assert missing.returncode == 2, missing
    assert "no-such-video.mp4" in missing.stderr
    assert missing.stdout == ""

    text = tmp_path / "notes.txt"
    text.write_text("This is a shopping list, not a video.\n" * 20)
    not_video = stack.cli("submit", str(text), check=False)
    assert not_video.returncode == 1, not_video
    assert "INVALID_ARGUMENT" in not_video.stderr, not_video.stderr
    assert not_video.stdout == ""

    bad_param = stack.cli("submit", str(video), "--param", "verify_frames=oops", check=False)
    assert bad_param.returncode == 1, bad_param
    assert "INVALID_ARGUMENT" in bad_param.stderr, bad_param.stderr
    assert "header.parameters.verify_frames" in bad_param.stderr, bad_param.stderr
    assert bad_param.stdout == ""

    # Nothing was accepted.
    assert _listed_ids(stack) == []
    assert json.loads(stack.cli("list", "--json").stdout) == {}


def test_results_follow_prints_live_events_to_the_completed_one(stack, video):
    stack.start_server()
    worker = stack.start_worker("follow-worker")
    api = Api(stack.address)
    # Freeze the worker so the job is certainly still running when --follow starts.
    worker.signal(signal.SIGSTOP)
    try:
        submitted = stack.cli("submit", str(video), "--param", "count_frames=true")
        job_id, state = submitted.stdout.split()
        assert JOB_ID.fullmatch(job_id), submitted.stdout
        assert state == "QUEUED"
        running = api.wait_until(
            job_id, lambda j: j.state == job_pb2.JOB_STATE_RUNNING, what="assignment"
        )
        assert running.last_event_sequence == 2  # accepted, assigned: nothing more yet

        follower = subprocess.Popen(
            [str(BIN / "videojobs"), "--address", stack.address, "results", job_id, "--follow"]
            + ["--json"],
            env=stack.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        seen: list[dict] = []

        def pump() -> None:
            assert follower.stdout is not None
            for line in follower.stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()

        def drained() -> list[dict]:
            while not lines.empty():
                seen.append(json.loads(lines.get_nowait()))
            return seen

        try:
            # The stored events come first, while the job is still running.
            eventually_sync(
                lambda: len(drained()) >= 2, timeout=20, what="the stored events from --follow"
            )
            assert [int(e["sequence"]) for e in seen] == [1, 2]
            assert follower.poll() is None, "--follow ended before the job did"
            worker.signal(signal.SIGCONT)
            assert follower.wait(timeout=60) == 0, follower.stderr.read()
            eventually_sync(lambda: "completed" in (drained() or [{}])[-1], timeout=10)
        finally:
            if follower.poll() is None:
                follower.kill()
            follower.wait(timeout=30)
            follower.stdout.close()
            follower.stderr.close()
    finally:
        worker.signal(signal.SIGCONT)
        api.close()

    sequences = [int(e["sequence"]) for e in seen]
    assert sequences == list(range(1, len(seen) + 1)), sequences
    assert len(seen) > 2  # live events arrived after the stored ones
    assert all(e["jobId"] == job_id for e in seen)
    last = seen[-1]
    assert last["jobState"] == "JOB_STATE_SUCCEEDED"
    assert last["completed"]["outputKey"] == f"jobs/{job_id}/attempts/1/results.json"
    assert last["completed"]["summary"]["frame_count"] == FRAMES
    assert last["completed"]["summary"]["width"] == WIDTH
    assert sum("completed" in e for e in seen) == 1
    final = json.loads(stack.cli("status", job_id, "--json").stdout)
    assert final["state"] == "JOB_STATE_SUCCEEDED"
    assert int(final["lastEventSequence"]) == len(seen)
