"""A connected worker's reports are claims: checked, bounded and cleaned.

A scripted worker (a real client of DispatchService) plays the hostile worker
against a real videojobs-server process.
"""

from __future__ import annotations

import asyncio
import sqlite3

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from videojobs.storage import StorageKey, open_blob_store
from videojobs.storage.blobstore import put_bytes
from videojobs.v1 import dispatch_service_pb2 as pb
from videojobs.v1 import job_pb2, job_service_pb2_grpc
from videojobs.v1 import job_service_pb2 as js

from support.attacks import rss_bytes
from support.grpc_status import rich_error
from support.scripted_worker import ScriptedWorker
from support.uploads import chunks, header
from support.waiting import eventually

TERMINAL = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}


class Client:
    """A default JobService client (default 4 MiB receive limit) of the stack."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = job_service_pb2_grpc.JobServiceStub(self.channel)

    async def submit(self, data: bytes, **fields) -> job_pb2.Job:
        async def stream():
            yield header(data=data, **fields)
            for message in chunks(data):
                yield message

        return (await self.stub.SubmitVideo(stream(), wait_for_ready=True, timeout=30)).job

    async def job(self, job_id: str) -> job_pb2.Job:
        return (await self.stub.GetStatus(js.GetStatusRequest(job_id=job_id), timeout=30)).job

    async def ended(self, job_id: str, timeout: float = 30.0) -> job_pb2.Job:
        async def probe():
            job = await self.job(job_id)
            return job if job.state in TERMINAL else None

        return await eventually(probe, timeout=timeout, what=f"job {job_id} to end")

    async def events(self, job_id: str) -> list[job_pb2.JobEvent]:
        """Every event to the terminal one, as a default client receives them."""
        call = self.stub.StreamResults(js.StreamResultsRequest(job_id=job_id), timeout=60)
        return [response.event async for response in call]


@pytest.fixture
async def served(stack):
    stack.start_server(VIDEOJOBS_MAX_ATTEMPTS="1")
    client = Client(stack.address)
    yield stack, client
    await client.channel.close()


async def test_a_completion_naming_outputs_that_were_never_written_is_refused(
    served, sample_mp4: bytes
) -> None:
    stack, client = served
    job = await client.submit(sample_mp4)
    async with ScriptedWorker(stack.address) as worker:
        assignment = await worker.next("assignment")
        worker.complete(assignment)  # results.json was never written
        stop = await worker.next("stop_job")
        assert stop.job_id == job.job_id
    ended = await client.ended(job.job_id)
    assert ended.state == job_pb2.JOB_STATE_FAILED
    info = _error_info(ended.error)
    assert info.reason == "OUTPUT_MISSING"
    assert ended.output_key == ""

    # An artifact whose size differs from what storage holds is refused too.
    second = await client.submit(sample_mp4)
    store = open_blob_store(str(stack.data_dir / "storage"))
    async with ScriptedWorker(stack.address) as worker:
        assignment = await worker.next("assignment")
        prefix = assignment.output_prefix
        put_bytes(store, StorageKey(f"{prefix}/results.json"), b"{}")
        put_bytes(store, StorageKey(f"{prefix}/thumbnails/0000.jpg"), b"x" * 100)
        worker.complete(
            assignment,
            artifacts=[
                job_pb2.Artifact(
                    key=f"{prefix}/thumbnails/0000.jpg", media_type="image/jpeg", size_bytes=5
                )
            ],
        )
        await worker.next("stop_job")
    ended = await client.ended(second.job_id)
    assert ended.state == job_pb2.JOB_STATE_FAILED
    assert _error_info(ended.error).reason == "OUTPUT_MISSING"
    assert "100 bytes" in ended.error.message


async def test_an_oversized_partial_result_fails_the_attempt_and_followers_reach_the_end(
    served, sample_mp4: bytes
) -> None:
    stack, client = served
    job = await client.submit(sample_mp4)
    async with ScriptedWorker(stack.address) as worker:
        assignment = await worker.next("assignment")
        worker.partial(assignment, {"blob": "x" * (300 * 1024)})
        await worker.next("stop_job")
    ended = await client.ended(job.job_id)
    assert _error_info(ended.error).reason == "PARTIAL_RESULT_TOO_LARGE"
    # A default client (4 MiB receive limit) follows the job to its terminal event.
    events = await client.events(job.job_id)
    assert events[-1].WhichOneof("payload") == "failed"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))


async def test_a_4_2_mb_partial_result_is_refused_and_a_5_mb_message_breaks_only_its_stream(
    served, sample_mp4: bytes
) -> None:
    """4.2 MB used to be recorded, after which every default client failed on
    that event: now it is refused by size and followers reach the end. 5 MB
    is over gRPC's own message limit: the worker's stream ends, its job goes
    back to the queue, and no event of it was ever recorded."""
    stack, client = served
    job = await client.submit(sample_mp4)
    async with ScriptedWorker(stack.address, worker_id="big-mouth") as worker:
        assignment = await worker.next("assignment")
        worker.partial(assignment, {"blob": "x" * 4_200_000})
        await worker.next("stop_job")
    ended = await client.ended(job.job_id)
    assert _error_info(ended.error).reason == "PARTIAL_RESULT_TOO_LARGE"
    events = await client.events(job.job_id)
    assert events[-1].WhichOneof("payload") == "failed"

    second = await client.submit(sample_mp4)
    async with ScriptedWorker(stack.address, worker_id="bigger-mouth") as worker:
        assignment = await worker.next("assignment")
        worker.partial(assignment, {"blob": "x" * 5_000_000})
        error = await worker.ended()
        assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    requeued = await eventually(
        lambda: _queued_again(client, second.job_id), timeout=30, what="the job requeued"
    )
    assert requeued.attempt == 2
    kinds = [e.WhichOneof("payload") for e in await _events_so_far(client, second.job_id)]
    assert "partial_result" not in kinds


async def test_a_partial_result_flood_is_capped_and_replays_keep_memory_flat(
    served, sample_mp4: bytes
) -> None:
    stack, client = served
    database = stack.data_dir / "videojobs.db"
    job = await client.submit(sample_mp4)
    payload = {"blob": "y" * (250 * 1024)}
    async with ScriptedWorker(stack.address) as worker:
        assignment = await worker.next("assignment")
        for _ in range(300):
            worker.partial(assignment, payload)
        stop = await worker.next("stop_job", timeout=60)
        assert stop.job_id == job.job_id
    ended = await client.ended(job.job_id)
    assert _error_info(ended.error).reason == "EVENT_RATE_EXCEEDED"
    stored = _partial_result_bytes(database, job.job_id)
    print(f"flood of 300 x 250 KiB: {stored / 2**20:.1f} MiB of partial results recorded")
    # The burst of 40 and what the rate (10/s) refilled meanwhile, not the flood of 300.
    assert stored < 60 * 256 * 1024

    before = rss_bytes(stack.server.pid)
    replays = await asyncio.gather(*(client.events(job.job_id) for _ in range(3)))
    growth = rss_bytes(stack.server.pid) - before
    print(f"3 concurrent replays: job-service RSS grew {growth / 2**20:.1f} MiB")
    assert all(r[-1].WhichOneof("payload") == "failed" for r in replays)
    assert growth < 96 * 1024 * 1024


async def test_lease_tokens_and_hellos_are_bounded(served, sample_mp4: bytes) -> None:
    stack, client = served
    await client.submit(sample_mp4)
    async with ScriptedWorker(stack.address) as worker:
        assignment = await worker.next("assignment")
        worker.send(
            progress=pb.JobProgressReport(
                job_id=assignment.job_id,
                lease_token="t" * 100_000,
                progress=job_pb2.Progress(fraction=0.5),
            )
        )
        error = await worker.ended()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "lease_token" in str(rich_error(error).violations)
    worker = ScriptedWorker(stack.address, worker_id="x", pipelines=("p" * 100_000,))
    with pytest.raises(AssertionError, match="INVALID_ARGUMENT"):
        async with worker:
            pass
    await worker.disconnect()


async def test_worker_text_reaches_clients_cleaned(served, sample_mp4: bytes) -> None:
    stack, client = served
    job = await client.submit(sample_mp4)
    async with ScriptedWorker(stack.address) as worker:
        assignment = await worker.next("assignment")
        worker.progress(assignment, 0.3, stage="\x1b[2J\x1b]0;owned\x07decoding" + "z" * 500)
        await eventually(
            lambda: _stage_set(client, job.job_id), timeout=20, what="progress recorded"
        )
        status = status_pb2.Status(
            code=code_pb2.INTERNAL,
            message='Traceback (most recent call last):\n  File "/srv/app/x.py", line 3\n'
            "sqlalchemy.exc.OperationalError: SELECT secret FROM jobs",
        )
        status.details.add().Pack(
            error_details_pb2.ErrorInfo(reason="CRASH", metadata={"path": "/srv/app/data/x"})
        )
        worker.send(
            failure=pb.JobFailureReport(
                job_id=assignment.job_id, lease_token=assignment.lease_token, error=status
            )
        )
        ended = await client.ended(job.job_id)
    progress_events = [
        e for e in await client.events(job.job_id) if e.WhichOneof("payload") == "progress"
    ]
    stage = progress_events[0].progress.stage
    assert "\x1b" not in stage and "\x07" not in stage and len(stage) <= 64
    assert ended.state == job_pb2.JOB_STATE_FAILED
    assert "Traceback" not in ended.error.message and "SELECT" not in ended.error.message
    assert "/srv" not in str(ended.error)


async def _stage_set(client: Client, job_id: str):
    job = await client.job(job_id)
    return job if job.progress.stage else None


async def _queued_again(client: Client, job_id: str):
    job = await client.job(job_id)
    return job if job.state == job_pb2.JOB_STATE_QUEUED and job.attempt == 2 else None


async def _events_so_far(client: Client, job_id: str) -> list[job_pb2.JobEvent]:
    events = []
    call = client.stub.StreamResults(js.StreamResultsRequest(job_id=job_id), timeout=30)
    async for response in call:
        events.append(response.event)
        if response.event.sequence >= (await client.job(job_id)).last_event_sequence:
            call.cancel()
            break
    return events


def _error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError(f"no ErrorInfo in {status}")


def _partial_result_bytes(database_path, job_id: str) -> int:
    with sqlite3.connect(database_path) as connection:
        (value,) = connection.execute(
            "SELECT partial_result_bytes FROM jobs WHERE job_id = ?", (job_id,)
        ).fetchone()
    return value
