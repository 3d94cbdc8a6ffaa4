"""The client library against a real job-service: uploads with progress,
errors as VideoJobsError, paging, and `follow` resuming across a restart."""

from __future__ import annotations

import asyncio
import hashlib
import os

import grpc
import pytest

from videojobs.client import AsyncJobClient, JobClient, VideoJobsError
from videojobs.common.metrics import RPC_REQUESTS
from videojobs.v1 import dispatch_service_pb2 as dpb
from videojobs.v1 import job_pb2

from support.scripted_worker import ScriptedWorker


@pytest.fixture
def video_file(tmp_path, sample_mp4):
    path = tmp_path / "clip.mp4"
    path.write_bytes(sample_mp4)
    return path


async def test_sync_client_submit_status_list_cancel(job_service, video_file, sample_mp4):
    progress: list[tuple[int, int]] = []

    def scenario():
        with JobClient(job_service.address) as client:
            job = client.submit(
                video_file, chunk_size=4096, on_upload_progress=lambda s, t: progress.append((s, t))
            )
            fetched = client.get_status(job.job_id)
            jobs, token = client.list_jobs(page_size=10)
            cancelled = client.cancel(job.job_id, reason="changed my mind")
            with pytest.raises(VideoJobsError) as caught:
                client.cancel(job.job_id)
            return job, fetched, jobs, token, cancelled, caught.value

    job, fetched, jobs, token, cancelled, error = await asyncio.to_thread(scenario)
    assert job.input_sha256 == hashlib.sha256(sample_mp4).hexdigest()
    assert fetched == job
    assert [j.job_id for j in jobs] == [job.job_id] and token == ""
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "JOB_ALREADY_ENDED"
    sent = [s for s, _ in progress]
    assert sent == sorted(sent) and sent[-1] == len(sample_mp4)
    assert {t for _, t in progress} == {len(sample_mp4)}


async def test_a_file_changed_during_a_staged_upload_creates_no_job(
    job_service, video_file, sample_mp4
):
    """A file larger than a chunk is hashed as it is sent; one that changed
    meanwhile (here: same size, other bytes) is refused before SubmitVideo."""
    changed: list[int] = []

    def change_it_once(sent: int, total: int) -> None:
        if sent >= 8192 and not changed:
            changed.append(sent)
            video_file.write_bytes(bytes(reversed(sample_mp4)))
            later = video_file.stat().st_mtime_ns + 10**9
            os.utime(video_file, ns=(later, later))

    def scenario():
        with JobClient(job_service.address) as client:
            with pytest.raises(OSError, match="changed while it was uploaded"):
                client.submit(video_file, chunk_size=4096, on_upload_progress=change_it_once)
            return client.list_jobs(page_size=10)

    jobs, _ = await asyncio.to_thread(scenario)
    assert changed and jobs == []


async def test_async_client_errors_carry_details(job_service, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    async with AsyncJobClient(job_service.address) as client:
        with pytest.raises(VideoJobsError) as caught:
            await client.submit(text)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.reason == "NOT_A_VIDEO"
        assert [f for f, _ in caught.value.field_violations] == ["chunk"]
        with pytest.raises(VideoJobsError) as caught:
            await client.get_status("f" * 32)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND


async def test_follow_resumes_across_a_server_restart(start_job_service, tmp_path, video_file):
    shared = tmp_path / "shared"
    first = await start_job_service(data_dir=shared, lease_duration=30.0)
    address = first.address
    async with AsyncJobClient(address) as client:
        job = await client.submit(video_file)
        async with ScriptedWorker(address) as worker:
            assignment = await worker.next("assignment")
            worker.progress(assignment, 0.5)
            seen = []
            follower = client.follow(job.job_id)
            async for event in follower:
                seen.append(event)
                if event.WhichOneof("payload") == "progress":
                    break
        # job-service goes down and comes back on the same address.
        first.app.dispatch_servicer.shutting_down = True
        await first.app.stop()
        second = await start_job_service(data_dir=shared, listen=address, lease_duration=30.0)
        held = [dpb.HeldLease(job_id=job.job_id, lease_token=assignment.lease_token)]
        async with ScriptedWorker(second.address, store=second.storage, held=held) as worker:
            worker.partial(assignment, {"after": "restart"})
            worker.complete(assignment)
            async for event in follower:
                seen.append(event)
    kinds = [e.WhichOneof("payload") for e in seen]
    assert kinds == ["state_changed", "state_changed", "progress", "partial_result", "completed"]
    assert [e.sequence for e in seen] == [1, 2, 3, 4, 5]


def _get_status_calls() -> float:
    """GetStatus calls this process's job-service has answered so far."""
    return RPC_REQUESTS.labels("videojobs.v1.JobService", "GetStatus", "OK")._value.get()


async def test_wait_returns_the_final_job_without_asking_get_status(job_service, video_file):
    async with AsyncJobClient(job_service.address) as client:
        async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
            sync_job = await asyncio.to_thread(_submit_sync, job_service.address, video_file)
            async_job = await client.submit(video_file)
            for _ in range(2):
                assignment = await worker.next("assignment")
                worker.complete(assignment, summary={"frames": 25})
            before = _get_status_calls()
            seen: list[str] = []
            waited_async = await client.wait(
                async_job.job_id, on_event=lambda e: seen.append(e.WhichOneof("payload"))
            )
            waited_sync = await asyncio.to_thread(_wait_sync, job_service.address, sync_job.job_id)
            assert _get_status_calls() == before
        for waited, submitted in ((waited_async, async_job), (waited_sync, sync_job)):
            assert waited.job_id == submitted.job_id
            assert waited.state == job_pb2.JOB_STATE_SUCCEEDED
            assert dict(waited.summary) == {"frames": 25}
            assert waited == await client.get_status(submitted.job_id)
        assert seen[-1] == "completed"


def _submit_sync(address: str, video) -> job_pb2.Job:
    with JobClient(address) as client:
        return client.submit(video)


def _wait_sync(address: str, job_id: str) -> job_pb2.Job:
    with JobClient(address) as client:
        return client.wait(job_id)
