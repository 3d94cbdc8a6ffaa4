"""Resource attacks and accidents on real processes: huge frames, full disks,
quotas, and a server killed mid-burst."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.attacks import files_under
from support.grpc_status import rich_error
from support.sync_api import Api
from support.videos import write_sample_video
from support.waiting import eventually_sync

CALL_TIMEOUT = 30.0


def _upload(api: Api, data: bytes, *, announce_size: bool = True, **fields) -> job_pb2.Job:
    header = js.UploadHeader(
        file_name="clip.mp4", pipeline=fields.pop("pipeline", "probe"), **fields
    )
    if announce_size:
        header.expected_size_bytes = len(data)
        header.expected_sha256 = hashlib.sha256(data).hexdigest()
    messages = [js.SubmitVideoRequest(header=header)] + [
        js.SubmitVideoRequest(chunk=data[i : i + 65536]) for i in range(0, len(data), 65536)
    ]
    return api.stub.SubmitVideo(iter(messages), timeout=CALL_TIMEOUT, wait_for_ready=True).job


def test_a_huge_frame_fails_frame_too_large_and_the_worker_lives_on(stack, tmp_path: Path):
    """8192x4608 is over the default 8K pixel cap (7680x4320): the job fails
    FRAME_TOO_LARGE without the decoder allocating those frames, and the same
    worker runs the next job."""
    huge, small = tmp_path / "huge.mp4", tmp_path / "small.mp4"
    write_sample_video(huge, width=8192, height=4608, fps=2, frames=2, codec="libx264")
    write_sample_video(small, width=160, height=120, frames=10)
    stack.start_server()
    worker = stack.start_worker("w1")
    api = Api(stack.address)
    job = _upload(api, huge.read_bytes(), pipeline="thumbnails")
    ended = api.wait_terminal(job.job_id, timeout=120)
    assert ended.state == job_pb2.JOB_STATE_FAILED
    assert "FRAME_TOO_LARGE" in str(ended.error)
    assert "8192x4608" in ended.error.message
    assert len(ended.attempts) == 1  # never retried
    assert worker.running()
    after = api.wait_terminal(_upload(api, small.read_bytes()).job_id, timeout=120)
    assert after.state == job_pb2.JOB_STATE_SUCCEEDED
    api.close()


def test_the_storage_quota_refuses_uploads_with_retry_info(stack, sample_mp4: bytes) -> None:
    stack.start_server(VIDEOJOBS_STORAGE_QUOTA_BYTES=str(int(len(sample_mp4) * 1.5)))
    api = Api(stack.address)
    _upload(api, sample_mp4)
    with pytest.raises(grpc.RpcError) as raised:
        _upload(api, sample_mp4)
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.reason == "STORAGE_QUOTA_EXCEEDED"
    assert _retry_delay(raised.value) > 0
    api.close()


def _retry_delay(error: grpc.RpcError) -> float:
    from google.rpc import error_details_pb2, status_pb2

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                retry = error_details_pb2.RetryInfo()
                if detail.Unpack(retry):
                    return retry.retry_delay.ToTimedelta().total_seconds()
    return 0.0


@contextlib.contextmanager
def _small_tmpfs(path: Path, size_mib: int):
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(
            "a full disk is simulated with a small tmpfs, which needs mount permission "
            f"(root): {result.stderr.strip()}"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    """Fills the filesystem of `directory` to the last byte; returns the filler."""
    filler = directory / "filler"
    block = b"\0" * (1024 * 1024)
    with open(filler, "wb", buffering=0) as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(block)
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 4096)
    return filler


def test_a_full_disk_gives_retryable_errors_and_everything_recovers(stack, tmp_path: Path):
    """Database and storage on a 48 MiB tmpfs that the test fills to the last
    byte while a job is running: the worker cannot write its result, job-service
    cannot write its reports, leases or claims; uploads get RESOURCE_EXHAUSTED
    or UNAVAILABLE with RetryInfo (never INTERNAL); the job's state stays
    consistent; the server logs each failing operation once, not once a
    second; and once space returns the job and new uploads succeed."""
    lease_seconds = 3.0
    with _small_tmpfs(tmp_path / "tmpfs", 48) as disk:
        stack.data_dir = disk / "data"
        stack.data_dir.mkdir()
        video = tmp_path / "v.mp4"
        write_sample_video(video, width=160, height=120, frames=10)
        data = video.read_bytes()
        settings = dict(
            VIDEOJOBS_MIN_FREE_BYTES="0",
            VIDEOJOBS_MAX_ATTEMPTS="20",
            VIDEOJOBS_RETRY_BACKOFF_BASE="0.2",
            VIDEOJOBS_RETRY_BACKOFF_MAX="1",
            VIDEOJOBS_LEASE_DURATION=str(lease_seconds),
        )
        stack.start_server(**settings)
        worker = stack.start_worker("w1", **settings)
        api = Api(stack.address)
        # The worker is frozen, so its job is assigned (RUNNING) but not yet run.
        worker.signal(signal.SIGSTOP)
        running = _upload(api, data)
        api.wait_until(
            running.job_id, lambda job: job.state == job_pb2.JOB_STATE_RUNNING, what="assignment"
        )
        filler = _fill(disk)
        worker.signal(signal.SIGCONT)

        refusals = []
        for announce in (True, False):
            with pytest.raises(grpc.RpcError) as raised:
                _upload(api, data, announce_size=announce)
            refusals.append(rich_error(raised.value))
            assert _retry_delay(raised.value) > 0
        for error in refusals:
            assert error.code in (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.UNAVAILABLE,
            ), error
            assert error.reason in ("INSUFFICIENT_STORAGE", "STORAGE_FULL", "DATABASE_FULL")
        # Keep the disk full for longer than a lease lives (so the worker's
        # report, its heartbeats, the reaper and the dispatcher all meet it),
        # checking all along that the job is in a consistent state.
        full_until = time.monotonic() + lease_seconds * 2

        def held_long_enough():
            job = api.job(running.job_id)
            assert job.state in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING), job
            return time.monotonic() >= full_until

        eventually_sync(held_long_enough, timeout=60, interval=0.2, what="the full period")
        server_log = stack.server.log_tail(1000)
        assert "disk is full" in server_log or "no space left" in server_log
        filler.unlink()
        ended = api.wait_terminal(running.job_id, timeout=120)
        assert ended.state == job_pb2.JOB_STATE_SUCCEEDED, ended
        events = api.events(running.job_id)
        assert [e.sequence for e in events] == list(range(1, len(events) + 1))
        fresh = api.wait_terminal(_upload(api, data).job_id, timeout=120)
        assert fresh.state == job_pb2.JOB_STATE_SUCCEEDED
        assert worker.running()
        log = (stack.root / "server.log").read_text(errors="replace")
        error_lines = [line for line in log.splitlines() if " ERROR " in line]
        outcomes = [job_pb2.AttemptOutcome.Name(a.outcome) for a in ended.attempts]
        print(
            f"full disk for {lease_seconds * 2:.0f}s: refusals {[e.reason for e in refusals]}, "
            f"{len(error_lines)} error line(s) in the server log, attempts {outcomes}"
        )
        # Each failing operation is reported once (with its traceback), not once a second.
        assert len(error_lines) <= 6, "\n".join(error_lines)
        assert len(error_lines) == len({line.split(" ERROR ")[1][:60] for line in error_lines})
        api.close()
        stack.stop_all()


def test_kill_9_during_a_submit_burst_leaves_no_orphan_after_a_sweep(stack, tmp_path: Path):
    video = tmp_path / "v.mp4"
    write_sample_video(video, width=320, height=240, frames=50)
    data = video.read_bytes()
    sweep = dict(VIDEOJOBS_SWEEP_INTERVAL="1", VIDEOJOBS_ORPHAN_GRACE="2")
    stack.start_server(**sweep)
    api = Api(stack.address)
    stop = threading.Event()
    accepted: list[str] = []

    def submitter() -> None:
        local = Api(stack.address)
        while not stop.is_set():
            try:
                accepted.append(_upload(local, data).job_id)
            except grpc.RpcError:
                if stop.is_set():
                    break
        local.close()

    threads = [threading.Thread(target=submitter) for _ in range(6)]
    for thread in threads:
        thread.start()
    eventually_sync(lambda: len(accepted) >= 15, timeout=60, what="a burst of submits")
    os.kill(stack.server.pid, signal.SIGKILL)
    stack.server.process.wait(10)
    stop.set()
    for thread in threads:
        thread.join(30)
    storage = stack.data_dir / "storage"
    debris = files_under(storage)
    stack.start_server(**sweep)

    def only_referenced_blobs_left():
        jobs = api.stub.ListJobs(js.ListJobsRequest(page_size=1000), timeout=CALL_TIMEOUT).jobs
        referenced = {job.input_key for job in jobs}
        files = files_under(storage)
        return files if set(files) == referenced else None

    left = eventually_sync(only_referenced_blobs_left, timeout=30, what="the sweep")
    print(
        f"kill -9 mid-burst: {len(accepted)} accepted before the kill, {len(debris)} files "
        f"after it, {len(left)} after the sweep ({len(debris) - len(left)} removed)"
    )
    assert not any(".partial" in name for name in left)
    api.close()
