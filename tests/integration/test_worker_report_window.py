"""A real worker agent (warm pipeline process included) against an
in-process job-service: a short job's reports travel together, so
job-service writes them in one transaction, not one each."""

from __future__ import annotations

import asyncio
import collections
import contextlib

from sqlalchemy import event
from sqlalchemy.engine import Engine

from videojobs.jobservice.api import dispatch_servicer
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js
from videojobs.worker.agent import WorkerAgent
from videojobs.worker.settings import WorkerSettings

from support.uploads import submit
from support.waiting import eventually


@contextlib.contextmanager
def event_inserts_by_transaction():
    """For every `job_events` insert of this process, the transaction it ran
    in (numbered in the order transactions began)."""
    transactions = collections.Counter()
    current: dict[int, int] = {}
    inserts: list[int] = []

    def on_begin(connection) -> None:
        transactions["begun"] += 1
        current[id(connection)] = transactions["begun"]

    def on_statement(connection, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().startswith("INSERT INTO job_events"):
            rows = len(parameters) if executemany else 1
            inserts.extend([current.get(id(connection), 0)] * rows)

    event.listen(Engine, "begin", on_begin)
    event.listen(Engine, "before_cursor_execute", on_statement)
    try:
        yield inserts
    finally:
        event.remove(Engine, "before_cursor_execute", on_statement)
        event.remove(Engine, "begin", on_begin)


async def _run_one_job(job_service, sample_mp4, report_window: float) -> tuple[list, list[int]]:
    settings = WorkerSettings(
        address=job_service.address,
        listen="",
        storage_url="",
        worker_id=f"window-{report_window}",
        concurrency=1,
        pipelines=("probe",),
    )
    agent = WorkerAgent(settings, ["probe"], report_window=report_window)
    await agent.start_pool()
    session = asyncio.create_task(agent.run())
    try:
        with event_inserts_by_transaction() as inserts:
            job = await submit(job_service.stub, sample_mp4)

            async def ended():
                current = await job_service.stub.GetStatus(js.GetStatusRequest(job_id=job.job_id))
                return current.job.state == job_pb2.JOB_STATE_SUCCEEDED

            await eventually(ended, what="the probe job to succeed")
        events = [
            response.event
            async for response in job_service.stub.StreamResults(
                js.StreamResultsRequest(job_id=job.job_id)
            )
        ]
    finally:
        await agent.close()
        await session
    return events, inserts


async def test_a_short_jobs_reports_are_written_together(job_service, sample_mp4, monkeypatch):
    """With a report window longer than the job (the default is 20 ms), its
    progress and partial results wait for its completion and all go in one
    burst, applied in one transaction. (Sent as they come, each is applied
    on its own: that run wrote them in four transactions.) job-service
    waits for the rest of a burst for a few milliseconds; here, so that a
    busy machine cannot split it, for up to a second."""
    monkeypatch.setattr(dispatch_servicer, "BURST_GATHER_SECONDS", 1.0)
    events, inserts = await _run_one_job(job_service, sample_mp4, report_window=10.0)
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds[:2] == ["state_changed", "state_changed"] and kinds[-1] == "completed"
    assert {"progress", "partial_result"} <= set(kinds[2:-1])
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    # Queued (the submit), running (the claim), then every report in one.
    assert len(inserts) == len(events)
    assert len(set(inserts[2:])) == 1
