"""Worker identity and the life of credentials, over a real server with an auth file.

A worker token connects only under its own name (or the name and a suffix);
nobody else can take a worker's place; two live sessions of one worker id
never coexist; and the auth file is live: a revoked token ends the streams
already open with it, a token added while the server runs works at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import grpc
import pytest

from videojobs.common.auth import AuthFileError, hash_token, new_token
from videojobs.v1 import blob_service_pb2 as bs
from videojobs.v1 import dispatch_service_pb2 as ds
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import rich_error
from support.principals import (
    NO_CREDENTIALS,
    OK,
    RELOAD_DEADLINE_SECONDS,
    REVOCATION_DEADLINE_SECONDS,
    AuthFileWriter,
    Caller,
    Outcome,
    Stubs,
    TokenScriptedWorker,
    connect_outcome,
    outcome_of,
    submit_as,
    upload_key,
)
from support.uploads import chunks, header
from support.waiting import eventually

ROLE_NOT_ALLOWED = Outcome("PERMISSION_DENIED", "ROLE_NOT_ALLOWED")
WORKER_ID_MISMATCH = Outcome("PERMISSION_DENIED", "WORKER_ID_MISMATCH")
TOKEN_REVOKED = Outcome("UNAUTHENTICATED", "TOKEN_REVOKED")
TOKEN_UNKNOWN = Outcome("UNAUTHENTICATED", "TOKEN_UNKNOWN")


@dataclasses.dataclass
class Secured:
    """A server with an auth file, the writer of that file and a few principals."""

    service: object
    stubs: Stubs
    auth: AuthFileWriter
    client: Caller
    admin: Caller
    w1: Caller
    w2: Caller


@pytest.fixture
async def secured(start_job_service, tmp_path):
    """A server whose auth file holds a client (acme), an admin and workers w1, w2."""
    auth = AuthFileWriter(tmp_path / "auth.json")
    client = auth.add("acme-app", "client", tenant="acme")
    admin = auth.add("ops", "admin")
    w1 = auth.add("w1", "worker")
    w2 = auth.add("w2", "worker")
    # Long leases: nothing here may expire while a test waits on a deadline.
    service = await start_job_service(auth_file=str(auth.path), lease_duration=60.0)
    stubs = Stubs(service.address)
    yield Secured(service, stubs, auth, client, admin, w1, w2)
    await stubs.close()


async def _job(s: Secured, job_id: str) -> job_pb2.Job:
    response = await s.stubs.jobs.GetStatus(
        js.GetStatusRequest(job_id=job_id), metadata=s.admin.metadata
    )
    return response.job


async def test_a_worker_connects_under_its_own_name_only(secured):
    s = secured
    cases = {
        ("w1", "w1"): OK,
        ("w1", "w1:2"): OK,
        ("w1", "w1:gpu-0"): OK,
        ("w1", "w2"): WORKER_ID_MISMATCH,
        ("w1", "w2:1"): WORKER_ID_MISMATCH,
        ("w1", "w10"): WORKER_ID_MISMATCH,  # a longer name is not a suffix
        ("w1", "x:w1"): WORKER_ID_MISMATCH,
        ("ops", "any-name-at-all"): OK,  # administrators may use any id
    }
    callers = {"w1": s.w1, "ops": s.admin}
    actual = {
        (who, worker_id): await connect_outcome(
            s.stubs.channel, callers[who].metadata, worker_id, pipelines=("scenes",)
        )
        for who, worker_id in cases
    }
    assert actual == cases


async def test_nobody_takes_the_place_of_a_connected_worker(
    start_job_service, tmp_path, sample_mp4
):
    """The impersonation of the issue: connecting as `real-worker-1` with
    capacity 64 to be handed (and to steal) its jobs."""
    auth = AuthFileWriter(tmp_path / "auth.json")
    client = auth.add("acme-app", "client", tenant="acme")
    real = auth.add("real-worker-1", "worker")
    other_worker = auth.add("w2", "worker")
    service = await start_job_service(auth_file=str(auth.path), lease_duration=60.0)
    stubs = Stubs(service.address)
    try:
        job = await submit_as(stubs, client.metadata, sample_mp4)
        async with TokenScriptedWorker(service.address, real, store=service.storage) as worker:
            assignment = await worker.next("assignment")
            waiting = await submit_as(stubs, client.metadata, sample_mp4)
            attempts = {
                "no credentials": NO_CREDENTIALS,
                "a client's token": client,
                "another worker's token": other_worker,
            }
            actual = {
                label: await connect_outcome(
                    stubs.channel, caller.metadata, "real-worker-1", capacity=64
                )
                for label, caller in attempts.items()
            }
            assert actual == {
                "no credentials": Outcome("UNAUTHENTICATED", "CREDENTIALS_MISSING"),
                "a client's token": ROLE_NOT_ALLOWED,
                "another worker's token": WORKER_ID_MISMATCH,
            }
            # The real worker's session is untouched: still open, still holding
            # its lease; the queued job waits for it, and it finishes its job.
            assert worker.error is None and worker.responses.empty()
            current = (
                await stubs.jobs.GetStatus(
                    js.GetStatusRequest(job_id=job.job_id), metadata=client.metadata
                )
            ).job
            assert (current.state, current.attempt) == (job_pb2.JOB_STATE_RUNNING, 1)
            worker.complete(assignment)
            assert (await worker.next("assignment")).job_id == waiting.job_id
    finally:
        await stubs.close()


async def test_a_newer_session_replaces_the_older_and_keeps_what_it_announces(secured, sample_mp4):
    s = secured
    kept = await submit_as(s.stubs, s.client.metadata, sample_mp4)
    dropped = await submit_as(s.stubs, s.client.metadata, sample_mp4)
    older = TokenScriptedWorker(s.service.address, s.w1, capacity=2, store=s.service.storage)
    await older.__aenter__()
    try:
        first, second = await older.next("assignment"), await older.next("assignment")
        assert {first.job_id, second.job_id} == {kept.job_id, dropped.job_id}
        lease = first if first.job_id == kept.job_id else second
        # Another process of the same credential under another suffix is another
        # worker: it replaces nobody.
        async with TokenScriptedWorker(
            s.service.address, s.w1, worker_id="w1:2", pipelines=("scenes",)
        ) as sibling:
            async with TokenScriptedWorker(
                s.service.address,
                s.w1,
                capacity=1,
                held=[ds.HeldLease(job_id=lease.job_id, lease_token=lease.lease_token)],
                store=s.service.storage,
            ) as newer:
                ended = await older.ended()
                assert ended is not None
                assert (ended.code(), rich_error(ended).reason) == (
                    grpc.StatusCode.ABORTED,
                    "SESSION_REPLACED",
                )

                async def dropped_requeued():
                    job = await _job(s, dropped.job_id)
                    return job.state == job_pb2.JOB_STATE_QUEUED and job.attempt == 2

                await eventually(dropped_requeued, what="the unannounced lease to be requeued")
                # The announced lease stayed where it was: same attempt, still running,
                # and the newer session finishes it with the same lease token.
                current = await _job(s, kept.job_id)
                assert (current.state, current.attempt) == (job_pb2.JOB_STATE_RUNNING, 1)
                newer.complete(lease)

                async def kept_succeeded():
                    return (await _job(s, kept.job_id)).state == job_pb2.JOB_STATE_SUCCEEDED

                await eventually(kept_succeeded, what="the kept job to succeed")
                final = await _job(s, kept.job_id)
                assert final.attempt == 1
                assert final.output_key == f"{lease.output_prefix}/results.json"
                assert newer.error is None
            assert sibling.error is None and sibling.responses.empty()
    finally:
        await older.disconnect()


class _OpenStream:
    """A call held open by the test; records how and when it ended."""

    def __init__(self, name: str, run) -> None:
        self.name = name
        self.outcome: Outcome | None = None
        self.ended_at: float | None = None
        self.task = asyncio.create_task(self._run(run))

    async def _run(self, run) -> None:
        self.outcome = await outcome_of(run())
        self.ended_at = time.monotonic()

    async def ended_within(self, since: float, seconds: float) -> Outcome:
        """Waits up to the rest of `seconds` after `since` for the call to end."""
        remaining = since + seconds - time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), max(remaining, 0.0))
        except TimeoutError:
            raise AssertionError(
                f"{self.name} was still open {seconds:.1f}s after its credentials changed"
            ) from None
        return self.outcome

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _follow(s: Secured, caller: Caller, job_id: str, first_read: asyncio.Event):
    async def run():
        call = s.stubs.jobs.StreamResults(
            js.StreamResultsRequest(job_id=job_id), metadata=caller.metadata
        )
        async for _ in call:
            first_read.set()

    return run


def _hold_write(s: Secured, caller: Caller, started: asyncio.Event, sample: bytes):
    async def run():
        key = upload_key()

        async def messages():
            yield bs.WriteRequest(key=key, write_offset=0, data=sample[:4096])
            started.set()
            await asyncio.Event().wait()  # never sends more

        return await s.stubs.blobs.Write(messages(), metadata=caller.metadata)

    return run


def _hold_submit(s: Secured, caller: Caller, started: asyncio.Event, sample: bytes):
    async def run():
        async def messages():
            yield header(data=sample)
            yield chunks(sample)[0]
            started.set()
            await asyncio.Event().wait()  # never sends the rest

        return await s.stubs.jobs.SubmitVideo(messages(), metadata=caller.metadata)

    return run


async def test_revoking_a_token_ends_the_streams_open_with_it(secured, sample_mp4):
    s = secured
    job = await submit_as(s.stubs, s.client.metadata, sample_mp4)
    leased = await submit_as(s.stubs, s.client.metadata, sample_mp4, pipeline="ocr")
    following, admin_following = asyncio.Event(), asyncio.Event()
    writing, uploading = asyncio.Event(), asyncio.Event()
    streams = [
        _OpenStream("StreamResults (client)", _follow(s, s.client, job.job_id, following)),
        _OpenStream("BlobService.Write (client)", _hold_write(s, s.client, writing, sample_mp4)),
        _OpenStream("SubmitVideo (client)", _hold_submit(s, s.client, uploading, sample_mp4)),
    ]
    admin_stream = _OpenStream(
        "StreamResults (admin)", _follow(s, s.admin, job.job_id, admin_following)
    )
    worker = TokenScriptedWorker(s.service.address, s.w1, pipelines=("ocr",))
    await worker.__aenter__()
    try:
        assignment = await worker.next("assignment")
        assert assignment.job_id == leased.job_id
        for started in (following, admin_following, writing, uploading):
            await asyncio.wait_for(started.wait(), 10)
        # Five open streams, one watcher of their credentials.
        watchers = [
            task
            for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "") == "_RevocationWatcher._run"
        ]
        assert len(watchers) == 1

        revoked_at = time.monotonic()
        s.auth.revoke("acme-app", "w1")

        for stream in streams:
            assert await stream.ended_within(revoked_at, REVOCATION_DEADLINE_SECONDS) == (
                TOKEN_REVOKED
            ), stream.name
        remaining = revoked_at + REVOCATION_DEADLINE_SECONDS - time.monotonic()
        try:
            worker_error = await worker.ended(timeout=max(remaining, 0.0))
        except TimeoutError:
            raise AssertionError("the revoked worker's dispatch stream is still open") from None
        assert worker_error is not None, "the worker's dispatch stream ended with OK"
        assert Outcome(worker_error.code().name, rich_error(worker_error).reason) == TOKEN_REVOKED
        # The admin's stream was not revoked: still open at the same deadline.
        with pytest.raises(AssertionError, match="still open"):
            await admin_stream.ended_within(revoked_at, REVOCATION_DEADLINE_SECONDS)

        # The revoked worker's job goes back to the queue.
        async def requeued():
            current = await _job(s, leased.job_id)
            return current.state == job_pb2.JOB_STATE_QUEUED and current.attempt == 2

        await eventually(requeued, what="the revoked worker's job to be requeued")

        # New calls with the revoked tokens are refused; nothing of them survives.
        get = js.GetStatusRequest(job_id=job.job_id)
        assert await outcome_of(s.stubs.jobs.GetStatus(get, metadata=s.client.metadata)) == (
            TOKEN_UNKNOWN
        )
        assert await connect_outcome(s.stubs.channel, s.w1.metadata, "w1") == TOKEN_UNKNOWN

        # The principal comes back with a new token, which works; the old one does not.
        renewed = s.auth.add("acme-app", "client", tenant="acme")

        async def renewed_works():
            return await outcome_of(s.stubs.jobs.GetStatus(get, metadata=renewed.metadata)) == OK

        await eventually(renewed_works, timeout=RELOAD_DEADLINE_SECONDS, what="the new token")
        assert await outcome_of(s.stubs.jobs.GetStatus(get, metadata=s.client.metadata)) == (
            TOKEN_UNKNOWN
        )
    finally:
        await worker.disconnect()
        for stream in [*streams, admin_stream]:
            await stream.close()


@pytest.mark.parametrize("stream", ["StreamResults", "DispatchService.Connect"])
async def test_a_rotated_token_ends_the_streams_open_with_the_old_one(secured, sample_mp4, stream):
    """`tokens revoke` and `tokens add` of the same principal, landing in one
    reload (one write here; two writes within a reload interval alike): the
    old token is dead for new calls, and must be dead for open streams too.

    (Fails today: the stream's watch asks whether the *principal* (name, role,
    tenant) is still live, and the rotated principal is equal to the old one,
    so a stream opened with a revoked or leaked token lives on.)"""
    s = secured
    job = await submit_as(s.stubs, s.client.metadata, sample_mp4)
    if stream == "StreamResults":
        started = asyncio.Event()
        open_stream = _OpenStream(stream, _follow(s, s.client, job.job_id, started))
        try:
            await asyncio.wait_for(started.wait(), 10)
            rotated = s.auth.rotate(s.client)
            outcome = await open_stream.ended_within(time.monotonic(), REVOCATION_DEADLINE_SECONDS)
        finally:
            await open_stream.close()
        old, new = s.client, rotated
    else:
        worker = TokenScriptedWorker(s.service.address, s.w1, pipelines=("scenes",))
        await worker.__aenter__()
        try:
            rotated = s.auth.rotate(s.w1)
            try:
                error = await worker.ended(timeout=REVOCATION_DEADLINE_SECONDS)
            except TimeoutError:
                raise AssertionError(
                    f"{stream} was still open {REVOCATION_DEADLINE_SECONDS:.1f}s after its "
                    "token was rotated"
                ) from None
            outcome = OK if error is None else Outcome(error.code().name, rich_error(error).reason)
        finally:
            await worker.disconnect()
        old, new = s.w1, rotated
    assert outcome == TOKEN_REVOKED
    listing = js.ListJobsRequest(page_size=1)
    expected_new = OK if old.role == "client" else ROLE_NOT_ALLOWED
    assert await outcome_of(s.stubs.jobs.ListJobs(listing, metadata=new.metadata)) == expected_new
    assert await outcome_of(s.stubs.jobs.ListJobs(listing, metadata=old.metadata)) == (
        TOKEN_UNKNOWN
    )


async def test_the_auth_file_is_live(secured, sample_mp4):
    """Changes need no restart: a principal added while the server runs works;
    an auth file that becomes invalid keeps the last good principals; one that
    disappears leaves nobody (fail closed)."""
    s = secured
    listing = js.ListJobsRequest(page_size=1)
    late = s.auth.add("late-app", "client", tenant="late")

    async def late_works():
        return await outcome_of(s.stubs.jobs.ListJobs(listing, metadata=late.metadata)) == OK

    await eventually(late_works, timeout=RELOAD_DEADLINE_SECONDS, what="the added token to work")
    job = await submit_as(s.stubs, late.metadata, sample_mp4)
    assert job.tenant == "late"

    # A broken file (a half-edited one) is not applied: the principals stay.
    good = s.auth.path.read_text()
    s.auth.path.write_text('{"principals": [{"name": "x"')
    checked_after = time.monotonic() + RELOAD_DEADLINE_SECONDS
    while time.monotonic() < checked_after:
        assert await outcome_of(s.stubs.jobs.ListJobs(listing, metadata=late.metadata)) == OK
        await asyncio.sleep(0.1)
    s.auth.path.write_text(good)

    # No file at all: nobody.
    s.auth.path.unlink()

    async def nobody_left():
        return (
            await outcome_of(s.stubs.jobs.ListJobs(listing, metadata=s.admin.metadata))
            == TOKEN_UNKNOWN
        )

    await eventually(nobody_left, timeout=RELOAD_DEADLINE_SECONDS, what="fail closed")


async def test_no_principal_name_can_be_another_workers_suffixed_id(secured):
    """A worker runs several processes as `<name>:<suffix>`, so a principal
    called `w1:gpu` would have its worker id taken by `w1` (and its session
    replaced). Principal names therefore hold no ':': `tokens add` refuses
    one, and a hand-edited file naming one is not applied (the last good
    principals stay, so `w1` still works and the `w1:gpu` token does not)."""
    s = secured
    with pytest.raises(AuthFileError, match="no ':'"):
        s.auth.add("w1:gpu", "worker")

    document = json.loads(s.auth.path.read_text())
    smuggled = new_token()
    document["principals"].append(
        {"name": "w1:gpu", "role": "worker", "token_sha256": hash_token(smuggled)}
    )
    s.auth.path.write_text(json.dumps(document))
    gpu = Caller("w1:gpu", "worker", token=smuggled)
    # Give the server time to look at the file, then prove it kept the old set.
    still_w1 = await connect_outcome(s.stubs.channel, s.w1.metadata, "w1:probe")
    deadline = time.monotonic() + RELOAD_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        assert await connect_outcome(s.stubs.channel, gpu.metadata, "w1:gpu") == TOKEN_UNKNOWN
        await asyncio.sleep(0.2)
    assert still_w1 == OK
    assert await connect_outcome(s.stubs.channel, s.w1.metadata, "w1:gpu") == OK
