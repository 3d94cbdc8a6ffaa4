"""Group commit of a worker's reports: a run of reports that arrived together
is applied in order in one transaction; a report that breaks the stream's
contract ends the run after the earlier ones commit."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from sqlalchemy import event

from videojobs.common import errors
from videojobs.jobservice.dispatch.worker_reports import (
    CompletionReport,
    Heartbeat,
    PartialResultReport,
    ProgressReport,
)
from videojobs.jobservice.domain import EventKind
from videojobs.storage import StorageKey
from videojobs.storage.blobstore import put_bytes
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.scripted_worker import ScriptedWorker
from support.uploads import submit
from support.waiting import eventually


@contextlib.contextmanager
def commits_of_this_task(database):
    """Counts the write-engine commits made by the current asyncio task."""
    task = asyncio.current_task()
    counted = []

    def on_commit(connection) -> None:
        if asyncio.current_task() is task:
            counted.append(connection)

    engine = database.write_engine.sync_engine
    event.listen(engine, "commit", on_commit)
    try:
        yield counted
    finally:
        event.remove(engine, "commit", on_commit)


def _session(job_service, worker_id: str):
    return next(s for s in job_service.app.coordinator.sessions if s.worker_id == worker_id)


def _completion(job_service, assignment, summary: dict) -> CompletionReport:
    output_key = StorageKey(f"{assignment.output_prefix}/results.json")
    put_bytes(job_service.storage, output_key, b'{"ok": true}')
    return CompletionReport(assignment.job_id, assignment.lease_token, output_key, [], summary)


async def _events(job_service, job_id: str):
    async with job_service.app.database.reading() as repository:
        return await repository.events_after(job_id, 0, limit=100)


async def _job(job_service, job_id: str) -> job_pb2.Job:
    return (await job_service.stub.GetStatus(js.GetStatusRequest(job_id=job_id))).job


async def test_a_run_of_two_jobs_reports_commits_once_in_order(job_service, sample_mp4):
    jobs = [await submit(job_service.stub, sample_mp4) for _ in range(2)]
    async with ScriptedWorker(job_service.address, worker_id="grouped", capacity=2) as worker:
        first = await worker.next("assignment")
        second = await worker.next("assignment")
        held = {first.job_id: first.lease_token, second.job_id: second.lease_token}
        run = [
            Heartbeat(held),
            ProgressReport(first.job_id, first.lease_token, 0.25, "probing"),
            ProgressReport(second.job_id, second.lease_token, 0.5, "probing"),
            PartialResultReport(first.job_id, first.lease_token, "probe", {"frames": 25}, 40),
            PartialResultReport(second.job_id, second.lease_token, "probe", {"frames": 7}, 40),
            # Sooner than the progress interval: held back, not recorded now.
            ProgressReport(first.job_id, first.lease_token, 0.75, "still probing"),
            _completion(job_service, first, {"width": 160}),
            _completion(job_service, second, {"width": 320}),
        ]
        coordinator = job_service.app.coordinator
        with commits_of_this_task(job_service.app.database) as commits:
            await coordinator.apply_reports(_session(job_service, "grouped"), run)
        assert len(commits) == 1

        for job, frames, width in [(jobs[0], 25, 160), (jobs[1], 7, 320)]:
            current = await _job(job_service, job.job_id)
            assert current.state == job_pb2.JOB_STATE_SUCCEEDED
            assert dict(current.summary) == {"width": width}
            events = await _events(job_service, job.job_id)
            assert [e.sequence for e in events] == list(range(1, len(events) + 1))
            assert [e.kind for e in events][2:] == [
                EventKind.PROGRESS,
                EventKind.PARTIAL_RESULT,
                EventKind.COMPLETED,
            ]
            assert events[3].payload.data == {"frames": frames}
        # Both slots are free again: the worker is given nothing more (no
        # job waits), and its session holds no lease.
        assert _session(job_service, "grouped").leases == {}


async def test_a_completion_outside_its_prefix_ends_the_run_after_the_earlier_reports(
    job_service, sample_mp4
):
    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(job_service.address, worker_id="careless") as worker:
        assignment = await worker.next("assignment")
        token = assignment.lease_token
        outside = StorageKey(f"{job.job_id}/attempts/99/results.json")
        put_bytes(job_service.storage, outside, b"{}")
        run = [
            ProgressReport(job.job_id, token, 0.5, "half way"),
            CompletionReport(job.job_id, token, outside, [], {}),
            PartialResultReport(job.job_id, token, "probe", {"never": True}, 20),
        ]
        with pytest.raises(errors.ServiceError) as refused:
            await job_service.app.coordinator.apply_reports(_session(job_service, "careless"), run)
        assert refused.value.code == "INVALID_ARGUMENT"
        assert refused.value.field_violations[0][0] == "completion.output_key"

        current = await _job(job_service, job.job_id)
        assert current.state == job_pb2.JOB_STATE_RUNNING
        assert current.progress.fraction == pytest.approx(0.5)
        kinds = [e.kind for e in await _events(job_service, job.job_id)]
        assert kinds[-1] == EventKind.PROGRESS
        assert EventKind.PARTIAL_RESULT not in kinds


async def test_reports_sent_back_to_back_over_the_stream_all_apply_in_order(
    job_service, sample_mp4
):
    """Through the real stream: whatever runs the server groups, every report
    lands, in the order sent, and the job ends with the last one."""
    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(
        job_service.address, worker_id="chatty", store=job_service.storage
    ) as worker:
        assignment = await worker.next("assignment")
        for index in range(30):
            worker.partial(assignment, {"index": index})
        worker.complete(assignment, summary={"width": 160})

        async def ended() -> bool:
            current = await _job(job_service, job.job_id)
            return current.state == job_pb2.JOB_STATE_SUCCEEDED

        await eventually(ended, what="the job's completion")
        events = await _events(job_service, job.job_id)
        partials = [e.payload.data["index"] for e in events if e.kind == EventKind.PARTIAL_RESULT]
        assert partials == list(range(30))
        assert events[-1].kind == EventKind.COMPLETED
        worker.close_stream()
        assert await worker.ended() is None  # the stream ends OK
