"""StreamResults: replay then live, resumable from a sequence, ending at the
terminal event; driven by a scripted worker over the real dispatch stream."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import rich_error
from support.scripted_worker import ScriptedWorker
from support.uploads import submit
from support.waiting import eventually


async def _collect(stub, job_id: str, after: int = 0, until_sequence: int | None = None):
    events = []
    call = stub.StreamResults(js.StreamResultsRequest(job_id=job_id, after_sequence=after))
    async for response in call:
        events.append(response.event)
        if until_sequence is not None and response.event.sequence >= until_sequence:
            call.cancel()
            break
    return events


async def test_live_events_then_resume_exactly_where_it_broke(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        assert assignment.job_id == job.job_id
        assert assignment.attempt == 1
        assert assignment.input_key == job.input_key
        assert assignment.output_prefix == f"jobs/{job.job_id}/attempts/1"

        received: list = []
        follower_call = job_service.stub.StreamResults(js.StreamResultsRequest(job_id=job.job_id))
        got_partial = asyncio.Event()

        async def follow():
            async for response in follower_call:
                received.append(response.event)
                if response.event.WhichOneof("payload") == "partial_result":
                    got_partial.set()

        follower = asyncio.create_task(follow())
        worker.progress(assignment, 0.25, "decoding")
        worker.partial(assignment, {"frame": 1, "text": "HELLO"})
        # The partial result reaches the client while the job is still running.
        await asyncio.wait_for(got_partial.wait(), 10)
        status = (await job_service.stub.GetStatus(js.GetStatusRequest(job_id=job.job_id))).job
        assert status.state == job_pb2.JOB_STATE_RUNNING
        assert status.progress.fraction == pytest.approx(0.25)
        assert status.progress.stage == "decoding"

        # The final progress (1.0) is recorded at once, however soon it follows.
        worker.progress(assignment, 1.0, "done")
        worker.complete(assignment, summary={"frames": 50})
        await asyncio.wait_for(follower, 10)

    kinds = [e.WhichOneof("payload") for e in received]
    assert kinds == [
        "state_changed",
        "state_changed",
        "progress",
        "partial_result",
        "progress",
        "completed",
    ]
    assert [e.sequence for e in received] == list(range(1, len(received) + 1))
    assert received[0].state_changed.to_state == job_pb2.JOB_STATE_QUEUED
    assert received[1].state_changed.to_state == job_pb2.JOB_STATE_RUNNING
    assert received[3].partial_result.data["text"] == "HELLO"
    assert received[-1].job_state == job_pb2.JOB_STATE_SUCCEEDED
    assert received[-1].completed.output_key == f"jobs/{job.job_id}/attempts/1/results.json"
    assert received[-1].completed.summary["frames"] == 50

    # Reconnecting after sequence 3 yields exactly the events after it.
    resumed = await _collect(job_service.stub, job.job_id, after=3)
    assert [e.sequence for e in resumed] == [4, 5, 6]
    assert resumed == received[3:]
    # After the terminal event there is nothing more, and the stream ends at once.
    assert await _collect(job_service.stub, job.job_id, after=6) == []

    final = (await job_service.stub.GetStatus(js.GetStatusRequest(job_id=job.job_id))).job
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED
    assert final.progress.fraction == 1.0
    assert final.output_key == received[-1].completed.output_key
    assert final.last_event_sequence == 6
    assert final.summary["frames"] == 50


async def test_rapid_progress_is_coalesced_and_the_latest_value_recorded(job_service, sample_mp4):
    """A worker reporting progress as fast as it can gets at most one event per
    0.2 s recorded, and the latest value is never lost."""
    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        for step in range(1, 201):
            worker.progress(assignment, step / 1000, f"step {step}")

        async def latest_recorded():
            status = await job_service.stub.GetStatus(js.GetStatusRequest(job_id=job.job_id))
            return status.job.progress.stage == "step 200"

        await eventually(latest_recorded, timeout=20, what="the last progress recorded")
        worker.complete(assignment)
        events = await asyncio.wait_for(_collect(job_service.stub, job.job_id), 30)
    progress = [e for e in events if e.WhichOneof("payload") == "progress"]
    assert progress[-1].progress.fraction == pytest.approx(0.2)
    times = [e.create_time.ToDatetime().timestamp() for e in progress]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert all(gap >= 0.19 for gap in gaps), gaps
    assert len(progress) < 50


async def test_progress_never_goes_backwards(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        worker.progress(assignment, 0.5)
        worker.progress(assignment, 0.2)
        worker.complete(assignment)
        events = await _collect(job_service.stub, job.job_id)
    fractions = [e.progress.fraction for e in events if e.WhichOneof("payload") == "progress"]
    assert fractions == [0.5, 0.5] or fractions == [0.5]
    assert fractions == sorted(fractions)


async def test_events_survive_a_server_restart(start_job_service, tmp_path, sample_mp4):
    first = await start_job_service(data_dir=tmp_path / "shared")
    job = await submit(first.stub, sample_mp4)
    async with ScriptedWorker(first.address, store=first.storage) as worker:
        assignment = await worker.next("assignment")
        worker.partial(assignment, {"n": 1})
        worker.complete(assignment)
        await _collect(first.stub, job.job_id)
    await first.app.stop()

    second = await start_job_service(data_dir=tmp_path / "shared")
    events = await _collect(second.stub, job.job_id)
    assert [e.WhichOneof("payload") for e in events] == [
        "state_changed",
        "state_changed",
        "partial_result",
        "completed",
    ]
    assert events[2].partial_result.data["n"] == 1


async def test_stream_errors(job_service):
    for job_id, code, field in [
        ("f" * 32, grpc.StatusCode.NOT_FOUND, None),
        ("short", grpc.StatusCode.INVALID_ARGUMENT, "job_id"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _collect(job_service.stub, job_id)
        error = rich_error(caught.value)
        assert error.code == code
        if field:
            assert field in error.violations


async def test_negative_after_sequence_is_invalid(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _collect(job_service.stub, job.job_id, after=-1)
    error = rich_error(caught.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "after_sequence" in error.violations


async def test_live_events_reach_a_follower_without_reading_the_database(job_service, sample_mp4):
    """Events this replica commits reach its followers from memory: following
    a job through 30 live events costs a handful of database reads (the
    replay), not several per event; the events are exactly those stored."""
    job = await submit(job_service.stub, sample_mp4)
    database = job_service.app.database
    reads = 0
    real_reading = database.reading

    def counting_reading():
        nonlocal reads
        reads += 1
        return real_reading()

    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        received: list = []
        follower_call = job_service.stub.StreamResults(js.StreamResultsRequest(job_id=job.job_id))
        following = asyncio.Event()

        async def follow():
            async for response in follower_call:
                received.append(response.event)
                following.set()

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(following.wait(), 10)  # the replay (2 events) is done
        await eventually(lambda: _settled(received, 2), what="the replay")
        database.reading = counting_reading
        try:
            for index in range(30):
                worker.partial(assignment, {"index": index})
                # One at a time, so each is delivered live on its own.
                await eventually(
                    lambda count=index + 3: _settled(received, count), what="a live event"
                )
            worker.complete(assignment, summary={"frames": 50})
            await asyncio.wait_for(follower, 10)
        finally:
            database.reading = real_reading

    assert reads <= 3, f"{reads} database reads for 31 live events"
    assert [e.sequence for e in received] == list(range(1, 34))
    assert [e.partial_result.data["index"] for e in received[2:32]] == list(range(30))
    # What was delivered from memory is exactly what is stored.
    assert await _collect(job_service.stub, job.job_id) == received


async def _settled(received: list, count: int) -> bool:
    return len(received) >= count


async def test_the_final_job_comes_with_the_terminal_event_when_asked(job_service, sample_mp4):
    job = await submit(job_service.stub, sample_mp4)
    async with ScriptedWorker(job_service.address, store=job_service.storage) as worker:
        assignment = await worker.next("assignment")
        worker.progress(assignment, 0.5)
        worker.complete(assignment, summary={"width": 160})
        asked = [
            response
            async for response in job_service.stub.StreamResults(
                js.StreamResultsRequest(job_id=job.job_id, include_final_job=True)
            )
        ]
    status = (await job_service.stub.GetStatus(js.GetStatusRequest(job_id=job.job_id))).job
    # Only the terminal event's response carries it, and it is what GetStatus says.
    assert [r.HasField("final_job") for r in asked] == [False] * (len(asked) - 1) + [True]
    assert asked[-1].event.WhichOneof("payload") == "completed"
    assert asked[-1].final_job == status
    assert status.state == job_pb2.JOB_STATE_SUCCEEDED
    # Not asked: no response carries it (a follower that wants events costs no read).
    plain = [
        r async for r in job_service.stub.StreamResults(js.StreamResultsRequest(job_id=job.job_id))
    ]
    assert [r.event for r in plain] == [r.event for r in asked]
    assert not any(r.HasField("final_job") for r in plain)
