"""Deleting jobs: DeleteJob for an ended job, and the retention policy
(ended jobs after N days, inputs of failed and cancelled jobs sooner). Live
jobs are never touched."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from videojobs.jobservice.domain import utc_now
from videojobs.storage import StorageKey
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import rich_error
from support.scripted_worker import ScriptedWorker
from support.uploads import submit
from support.waiting import eventually


async def _status(service, job_id: str):
    return (await service.stub.GetStatus(js.GetStatusRequest(job_id=job_id))).job


async def _succeeded_job(service, data: bytes):
    job = await submit(service.stub, data)
    async with ScriptedWorker(service.address, store=service.storage) as worker:
        assignment = await worker.next("assignment")
        worker.complete(
            assignment,
            artifacts=[
                job_pb2.Artifact(
                    key=f"{assignment.output_prefix}/thumbnails/0000.jpg",
                    media_type="image/jpeg",
                    size_bytes=10,
                )
            ],
        )

        async def done():
            return (await _status(service, job.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED

        await eventually(done, what="success")
    return await _status(service, job.job_id)


async def test_delete_job_removes_an_ended_job_and_everything_it_stored(job_service, sample_mp4):
    done = await _succeeded_job(job_service, sample_mp4)
    live = await submit(job_service.stub, sample_mp4)  # no worker is connected: it stays queued
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await job_service.stub.DeleteJob(js.DeleteJobRequest(job_id=live.job_id))
    error = rich_error(raised.value)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION and error.reason == "JOB_NOT_ENDED"
    assert job_service.storage.exists(StorageKey(live.input_key))

    keys = [done.input_key, done.output_key, *(a.key for a in done.artifacts)]
    assert all(job_service.storage.exists(StorageKey(k)) for k in keys)
    response = await job_service.stub.DeleteJob(js.DeleteJobRequest(job_id=done.job_id))
    assert response.deleted_blobs == len(keys)
    assert not any(job_service.storage.exists(StorageKey(k)) for k in keys)
    for call in (
        job_service.stub.GetStatus(js.GetStatusRequest(job_id=done.job_id)),
        job_service.stub.DeleteJob(js.DeleteJobRequest(job_id=done.job_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await job_service.stub.ListJobs(js.ListJobsRequest())
    assert [j.job_id for j in listed.jobs] == [live.job_id]


async def test_retention_deletes_old_jobs_and_failed_inputs_but_never_live_ones(
    start_job_service, sample_mp4
):
    service = await start_job_service(retention_days=30.0, failed_input_retention_days=7.0)
    deletion = service.app.deletion
    succeeded = await _succeeded_job(service, sample_mp4)
    cancelled = await submit(service.stub, sample_mp4)
    await service.stub.CancelJob(js.CancelJobRequest(job_id=cancelled.job_id))
    queued = await submit(service.stub, sample_mp4)
    now = utc_now()

    # Nothing is old yet.
    assert (await deletion.apply(now)).summary().startswith("0 job(s)")

    # Eight days on: the cancelled job's input goes (dry run first: nothing changes).
    later = now + timedelta(days=8)
    dry = await deletion.apply(later, dry_run=True)
    assert [j for j, _, _ in dry.inputs] == [cancelled.job_id] and dry.jobs == []
    assert service.storage.exists(StorageKey(cancelled.input_key))
    await deletion.apply(later)
    kept = await _status(service, cancelled.job_id)
    assert kept.state == job_pb2.JOB_STATE_CANCELLED and kept.HasField("input_remove_time")
    assert not service.storage.exists(StorageKey(cancelled.input_key))
    assert service.storage.exists(StorageKey(succeeded.input_key))  # succeeded: kept

    # Thirty-one days on: both ended jobs go; the queued one stays, input and all.
    report = await deletion.apply(now + timedelta(days=31))
    assert sorted(j for j, _, _ in report.jobs) == sorted([succeeded.job_id, cancelled.job_id])
    listed = await service.stub.ListJobs(js.ListJobsRequest())
    assert [j.job_id for j in listed.jobs] == [queued.job_id]
    assert [i.key.value for i in service.storage.list()] == [queued.input_key]


async def test_retention_zero_keeps_everything(start_job_service, sample_mp4):
    service = await start_job_service(retention_days=0.0, failed_input_retention_days=0.0)
    cancelled = await submit(service.stub, sample_mp4)
    await service.stub.CancelJob(js.CancelJobRequest(job_id=cancelled.job_id))
    report = await service.app.deletion.apply(utc_now() + timedelta(days=3650))
    assert report.jobs == [] and report.inputs == []
    assert (await _status(service, cancelled.job_id)).state == job_pb2.JOB_STATE_CANCELLED


async def test_the_retention_command_reports_then_deletes(start_job_service, sample_mp4):
    """`videojobs-server retention --dry-run` lists what a pass would delete and
    changes nothing; without --dry-run it deletes it."""
    import subprocess
    import sys
    from pathlib import Path

    from sqlalchemy import update

    from videojobs.jobservice.store.models import JobRow

    service = await start_job_service()
    old = await submit(service.stub, sample_mp4)
    await service.stub.CancelJob(js.CancelJobRequest(job_id=old.job_id))
    fresh = await submit(service.stub, sample_mp4)
    await service.stub.CancelJob(js.CancelJobRequest(job_id=fresh.job_id))
    async with service.app.database.transaction() as repository:
        await repository.session.execute(
            update(JobRow)
            .where(JobRow.job_id == old.job_id)
            .values(updated_at=utc_now() - timedelta(days=40))
        )
    command = [
        str(Path(sys.executable).parent / "videojobs-server"),
        "retention",
        "--database-url",
        service.app.settings.database_url,
        "--storage-url",
        service.app.settings.storage_url,
    ]

    def run(*extra: str) -> str:
        result = subprocess.run(
            [*command, *extra], capture_output=True, text=True, timeout=120, check=True
        )
        return result.stdout

    dry = run("--dry-run")
    assert f"would delete job {old.job_id}" in dry and fresh.job_id not in dry
    assert service.storage.exists(StorageKey(old.input_key))
    done = run()
    assert f"deleted job {old.job_id}" in done
    listed = await service.stub.ListJobs(js.ListJobsRequest())
    assert [j.job_id for j in listed.jobs] == [fresh.job_id]
    assert not service.storage.exists(StorageKey(old.input_key))
