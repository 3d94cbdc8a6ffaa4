"""Tenants over a real server with an auth file: two client tenants (acme and
globex) and an administrator.

Another tenant's job, blob or staged upload is NOT_FOUND exactly like one
that does not exist (the whole error compared, so existence never leaks);
lists never cross tenants, page tokens included; request ids and queue and
upload limits are per tenant; a tenant's keys live under `tenants/<tenant>/`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import grpc
import pytest

from videojobs.storage import BlobNotFound, StorageKey
from videojobs.v1 import blob_service_pb2 as bs
from videojobs.v1 import job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.grpc_status import RichError, rich_error
from support.principals import (
    AuthFileWriter,
    Caller,
    Outcome,
    Stubs,
    TokenScriptedWorker,
    error_of,
    outcome_of,
    read_blob,
    retry_delay_seconds,
    submit_as,
    upload_key,
    write_blob,
)
from support.uploads import chunks, header
from support.waiting import eventually

ARTIFACT_BYTES = b"\xff\xd8" + b"thumbnail" * 10


@dataclasses.dataclass
class Tenancy:
    """A server with two client tenants, a worker and an administrator."""

    service: object
    stubs: Stubs
    acme: Caller
    globex: Caller
    worker: Caller
    admin: Caller


@pytest.fixture
async def start_tenancy(start_job_service, tmp_path):
    """Factory: `await start_tenancy(**setting_overrides)`."""
    opened: list[Stubs] = []

    async def start(**overrides) -> Tenancy:
        auth = AuthFileWriter(tmp_path / "auth.json")
        acme = auth.add("acme-app", "client", tenant="acme")
        globex = auth.add("globex-app", "client", tenant="globex")
        worker = auth.add("w1", "worker")
        admin = auth.add("ops", "admin")
        service = await start_job_service(auth_file=str(auth.path), **overrides)
        stubs = Stubs(service.address)
        opened.append(stubs)
        return Tenancy(service, stubs, acme, globex, worker, admin)

    yield start
    for stubs in opened:
        await stubs.close()


def _normalised(error: grpc.aio.AioRpcError, *names: str) -> RichError:
    """The whole error with the names it quotes (ids, keys) replaced by '<name>'."""
    detail = rich_error(error)

    def blank(text: str) -> str:
        for name in names:
            text = text.replace(name, "<name>")
        return text

    return RichError(
        code=detail.code,
        message=blank(detail.message),
        reason=detail.reason,
        metadata={key: blank(value) for key, value in detail.metadata.items()},
        violations={blank(key): blank(value) for key, value in detail.violations.items()},
    )


async def _follow(stubs: Stubs, caller: Caller, job_id: str, after: int) -> None:
    call = stubs.jobs.StreamResults(
        js.StreamResultsRequest(job_id=job_id, after_sequence=after), metadata=caller.metadata
    )
    async for _ in call:
        raise AssertionError("an event of another tenant's job was streamed")


async def _job_errors(stubs: Stubs, caller: Caller, job_id: str) -> dict[str, RichError]:
    """What every job RPC answers `caller` about `job_id`, normalised."""
    metadata = caller.metadata
    calls = {
        "GetStatus": stubs.jobs.GetStatus(js.GetStatusRequest(job_id=job_id), metadata=metadata),
        "StreamResults": _follow(stubs, caller, job_id, 0),
        "StreamResults after_sequence=1": _follow(stubs, caller, job_id, 1),
        "CancelJob": stubs.jobs.CancelJob(
            js.CancelJobRequest(job_id=job_id, reason="mine now"), metadata=metadata
        ),
        "DeleteJob": stubs.jobs.DeleteJob(js.DeleteJobRequest(job_id=job_id), metadata=metadata),
    }
    return {name: _normalised(await error_of(call), job_id) for name, call in calls.items()}


async def test_another_tenants_job_reads_exactly_as_no_job(start_tenancy, sample_mp4):
    t = await start_tenancy()
    queued = await submit_as(t.stubs, t.acme.metadata, sample_mp4)
    ended = await submit_as(t.stubs, t.acme.metadata, sample_mp4)
    await t.stubs.jobs.CancelJob(js.CancelJobRequest(job_id=ended.job_id), metadata=t.acme.metadata)

    nothing = await _job_errors(t.stubs, t.globex, uuid.uuid4().hex)
    assert {e.code for e in nothing.values()} == {grpc.StatusCode.NOT_FOUND}
    assert {e.reason for e in nothing.values()} == {"JOB_NOT_FOUND"}
    # A queued job (DeleteJob would say JOB_NOT_ENDED to its owner) and an
    # ended one (CancelJob would say it ended): both look like nothing at all.
    assert await _job_errors(t.stubs, t.globex, queued.job_id) == nothing
    assert await _job_errors(t.stubs, t.globex, ended.job_id) == nothing

    # globex's attempts changed nothing: acme still has both jobs as they were.
    for job, state in ((queued, job_pb2.JOB_STATE_QUEUED), (ended, job_pb2.JOB_STATE_CANCELLED)):
        current = await t.stubs.jobs.GetStatus(
            js.GetStatusRequest(job_id=job.job_id), metadata=t.acme.metadata
        )
        assert current.job.state == state
        assert current.job.tenant == "acme"
        assert current.job.last_event_sequence == (1 if job is queued else 2)


async def _every_page(stubs: Stubs, caller: Caller, page_size: int, tenant: str = "") -> list:
    jobs, token = [], ""
    while True:
        page = await stubs.jobs.ListJobs(
            js.ListJobsRequest(page_size=page_size, page_token=token, tenant=tenant),
            metadata=caller.metadata,
        )
        jobs += page.jobs
        token = page.next_page_token
        if not token:
            return jobs


async def test_lists_and_page_tokens_never_cross_tenants(start_tenancy, sample_mp4):
    t = await start_tenancy()
    acme_jobs = {(await submit_as(t.stubs, t.acme.metadata, sample_mp4)).job_id for _ in range(5)}
    globex_jobs = {
        (await submit_as(t.stubs, t.globex.metadata, sample_mp4)).job_id for _ in range(3)
    }

    for caller, own in ((t.acme, acme_jobs), (t.globex, globex_jobs)):
        listed = await _every_page(t.stubs, caller, page_size=2)
        assert [job.job_id for job in listed if job.job_id not in own] == []
        assert {job.job_id for job in listed} == own
        assert {job.tenant for job in listed} == {caller.tenant}
        # Naming the other tenant in the filter shows nothing of it.
        other = "globex" if caller is t.acme else "acme"
        assert await _every_page(t.stubs, caller, page_size=2, tenant=other) == []

    # acme's page token, presented by globex: refused, or at most globex's own jobs.
    first = await t.stubs.jobs.ListJobs(js.ListJobsRequest(page_size=2), metadata=t.acme.metadata)
    assert first.next_page_token
    for token in (first.next_page_token,):
        try:
            page = await t.stubs.jobs.ListJobs(
                js.ListJobsRequest(page_size=2, page_token=token), metadata=t.globex.metadata
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, rich_error(exc)
        else:
            assert {job.job_id for job in page.jobs} <= globex_jobs

    # An administrator's token (every tenant) is no key to acme's jobs for globex.
    admin_first = await t.stubs.jobs.ListJobs(
        js.ListJobsRequest(page_size=1), metadata=t.admin.metadata
    )
    try:
        page = await t.stubs.jobs.ListJobs(
            js.ListJobsRequest(page_size=50, page_token=admin_first.next_page_token),
            metadata=t.globex.metadata,
        )
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, rich_error(exc)
    else:
        assert {job.job_id for job in page.jobs} <= globex_jobs

    # The administrator sees both tenants, and the tenant filter works.
    everything = await _every_page(t.stubs, t.admin, page_size=3)
    assert {job.job_id for job in everything} == acme_jobs | globex_jobs
    for tenant, own in (("acme", acme_jobs), ("globex", globex_jobs)):
        assert {j.job_id for j in await _every_page(t.stubs, t.admin, 2, tenant)} == own


async def _succeed(t: Tenancy, job: job_pb2.Job) -> tuple[str, str]:
    """Runs `job` on a scripted worker that writes its outputs through
    BlobService under its lease; returns (output key, artifact key)."""
    async with TokenScriptedWorker(t.service.address, t.worker) as worker:
        assignment = await worker.next("assignment")
        assert assignment.job_id == job.job_id
        lease = t.worker.with_lease(assignment.lease_token)
        output_key = f"{assignment.output_prefix}/results.json"
        artifact_key = f"{assignment.output_prefix}/thumbs/0.jpg"
        await write_blob(t.stubs, lease, output_key, b'{"ok": true}')
        await write_blob(t.stubs, lease, artifact_key, ARTIFACT_BYTES)
        worker.complete(
            assignment,
            output_key=output_key,
            artifacts=[
                job_pb2.Artifact(
                    key=artifact_key, media_type="image/jpeg", size_bytes=len(ARTIFACT_BYTES)
                )
            ],
            write_outputs=False,
        )

        async def succeeded():
            current = await t.stubs.jobs.GetStatus(
                js.GetStatusRequest(job_id=job.job_id), metadata=t.acme.metadata
            )
            return current.job.state == job_pb2.JOB_STATE_SUCCEEDED

        await eventually(succeeded, what="the job to succeed")
    return output_key, artifact_key


async def _blob_errors(stubs: Stubs, caller: Caller, key: str) -> dict[str, RichError]:
    return {
        "Read": _normalised(await error_of(read_blob(stubs, caller.metadata, key)), key),
        "GetBlobInfo": _normalised(
            await error_of(
                stubs.blobs.GetBlobInfo(bs.GetBlobInfoRequest(key=key), metadata=caller.metadata)
            ),
            key,
        ),
    }


async def test_blobs_belong_to_their_tenant(start_tenancy, sample_mp4):
    t = await start_tenancy()
    job = await submit_as(t.stubs, t.acme.metadata, sample_mp4)
    prefix = f"tenants/acme/jobs/{job.job_id}"
    assert job.input_key.startswith(f"{prefix}/input/")
    output_key, artifact_key = await _succeed(t, job)
    assert output_key.startswith(f"{prefix}/attempts/1/")
    final = (
        await t.stubs.jobs.GetStatus(
            js.GetStatusRequest(job_id=job.job_id), metadata=t.acme.metadata
        )
    ).job
    assert final.output_key == output_key
    assert [a.key for a in final.artifacts] == [artifact_key]
    storage = t.service.storage
    for key in (job.input_key, output_key, artifact_key):
        assert storage.stat(StorageKey(key)).size_bytes > 0, key

    keys = {"input": job.input_key, "output": output_key, "artifact": artifact_key}
    contents = {"input": sample_mp4, "output": b'{"ok": true}', "artifact": ARTIFACT_BYTES}
    for name, key in keys.items():
        # The same key shape with an id that names no job: what "nothing" reads as.
        nowhere = key.replace(job.job_id, uuid.uuid4().hex)
        nothing = await _blob_errors(t.stubs, t.globex, nowhere)
        assert {e.code for e in nothing.values()} == {grpc.StatusCode.NOT_FOUND}, name
        assert await _blob_errors(t.stubs, t.globex, key) == nothing, name
        # The bytes live under the tenant's prefix only, and the default-tenant
        # spelling of the key is no way around it.
        default_spelling = key.removeprefix("tenants/acme/")
        with pytest.raises(BlobNotFound):
            storage.stat(StorageKey(default_spelling))
        assert (await outcome_of(read_blob(t.stubs, t.acme.metadata, default_spelling))) == (
            Outcome("NOT_FOUND", "BLOB_NOT_FOUND")
        ), name
        for owner in (t.acme, t.admin):
            assert await read_blob(t.stubs, owner.metadata, key) == contents[name], (name, owner)


async def test_staged_uploads_belong_to_the_tenant_that_wrote_them(start_tenancy, sample_mp4):
    t = await start_tenancy()
    finished, unfinished, nowhere = upload_key(), upload_key(), upload_key()
    await write_blob(t.stubs, t.acme.metadata, finished, sample_mp4)
    half = len(sample_mp4) // 2
    partial = await write_blob(
        t.stubs, t.acme.metadata, unfinished, sample_mp4[:half], finish=False
    )
    assert not partial.complete

    not_writable = Outcome("PERMISSION_DENIED", "KEY_NOT_WRITABLE")
    for key in (finished, unfinished):
        # globex may not write or query acme's upload (the answer says nothing
        # of its size or state) ...
        assert await outcome_of(write_blob(t.stubs, t.globex.metadata, key, sample_mp4)) == (
            not_writable
        )
        query = await error_of(
            t.stubs.blobs.QueryWriteStatus(
                bs.QueryWriteStatusRequest(key=key), metadata=t.globex.metadata
            )
        )
        assert Outcome(query.code().name, rich_error(query).reason) == not_writable
        # (The key itself is random hex that may hold those digits: left out.)
        assert str(half) not in (query.details() or "").replace(key, "")
        # ... and reads it exactly like an upload nobody made.
        assert await _blob_errors(t.stubs, t.globex, key) == await _blob_errors(
            t.stubs, t.globex, nowhere
        )

    # Nor submit it: UPLOAD_NOT_FOUND, exactly as for an upload nobody made.
    async def submit_upload(caller: Caller, key: str, **fields):
        async def stream():
            yield header(data=sample_mp4, upload_key=key, **fields)

        return (await t.stubs.jobs.SubmitVideo(stream(), metadata=caller.metadata)).job

    stolen = _normalised(await error_of(submit_upload(t.globex, finished)), finished)
    absent = _normalised(await error_of(submit_upload(t.globex, nowhere)), nowhere)
    assert (stolen.code, stolen.reason) == (grpc.StatusCode.NOT_FOUND, "UPLOAD_NOT_FOUND")
    assert stolen == absent

    # The owner reads it back and makes its job of it, under its own prefix.
    assert await read_blob(t.stubs, t.acme.metadata, finished) == sample_mp4
    job = await submit_upload(t.acme, finished)
    assert job.tenant == "acme"
    assert job.input_key.startswith(f"tenants/acme/jobs/{job.job_id}/input/")
    assert await read_blob(t.stubs, t.acme.metadata, job.input_key) == sample_mp4
    # And the owner may go on with its unfinished upload.
    resumed = await t.stubs.blobs.QueryWriteStatus(
        bs.QueryWriteStatusRequest(key=unfinished), metadata=t.acme.metadata
    )
    assert not resumed.complete and resumed.committed_size <= half


async def test_request_ids_are_per_tenant(start_tenancy, sample_mp4):
    t = await start_tenancy()
    acme_job = await submit_as(t.stubs, t.acme.metadata, sample_mp4, request_id="order-42")
    globex_job = await submit_as(t.stubs, t.globex.metadata, sample_mp4, request_id="order-42")
    assert acme_job.job_id != globex_job.job_id
    assert (acme_job.tenant, globex_job.tenant) == ("acme", "globex")
    # Within a tenant the request id still means "the same job".
    again = await submit_as(t.stubs, t.acme.metadata, sample_mp4, request_id="order-42")
    assert again.job_id == acme_job.job_id
    for caller, own, other in ((t.acme, acme_job, globex_job), (t.globex, globex_job, acme_job)):
        listed = await _every_page(t.stubs, caller, page_size=10)
        assert [job.job_id for job in listed] == [own.job_id]
        assert await outcome_of(
            t.stubs.jobs.GetStatus(
                js.GetStatusRequest(job_id=other.job_id), metadata=caller.metadata
            )
        ) == Outcome("NOT_FOUND", "JOB_NOT_FOUND")


async def test_a_full_queue_holds_back_only_its_tenant(start_tenancy, sample_mp4):
    t = await start_tenancy(tenant_max_queued_jobs=2)
    first = await submit_as(t.stubs, t.acme.metadata, sample_mp4)
    await submit_as(t.stubs, t.acme.metadata, sample_mp4)

    full = await error_of(submit_as(t.stubs, t.acme.metadata, sample_mp4))
    assert (full.code(), rich_error(full).reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TENANT_QUEUE_FULL",
    )
    assert (retry_delay_seconds(full) or 0) > 0
    # A staged upload is no way around the limit.
    staged = upload_key()
    await write_blob(t.stubs, t.acme.metadata, staged, sample_mp4)

    async def submit_staged():
        async def stream():
            yield header(data=sample_mp4, upload_key=staged)

        return await t.stubs.jobs.SubmitVideo(stream(), metadata=t.acme.metadata)

    assert await outcome_of(submit_staged()) == Outcome("RESOURCE_EXHAUSTED", "TENANT_QUEUE_FULL")

    # globex is not held back by acme's queue.
    for _ in range(2):
        await submit_as(t.stubs, t.globex.metadata, sample_mp4)
    # A slot of acme's own frees when one of its jobs leaves the queue.
    await t.stubs.jobs.CancelJob(js.CancelJobRequest(job_id=first.job_id), metadata=t.acme.metadata)
    assert await outcome_of(submit_staged()) == Outcome("OK")


async def test_a_full_queue_still_answers_the_retry_of_an_accepted_submit(
    start_tenancy, sample_mp4
):
    t = await start_tenancy(tenant_max_queued_jobs=1)
    accepted = await submit_as(t.stubs, t.acme.metadata, sample_mp4, request_id="order-7")
    # The queue is full now; the retry of the accepted submit gets its job.
    again = await submit_as(t.stubs, t.acme.metadata, sample_mp4, request_id="order-7")
    assert again.job_id == accepted.job_id
    full = await error_of(submit_as(t.stubs, t.acme.metadata, sample_mp4, request_id="order-8"))
    assert rich_error(full).reason == "TENANT_QUEUE_FULL"
    # What the refused and the repeated submits stored is gone again.
    stored = [info.key.value for info in t.service.storage.list()]
    assert stored == [accepted.input_key]


def _uploads_in_flight(service) -> int:
    # Peeks at the server's own count: the only sign that an upload the test
    # holds open has been admitted (nothing is stored before its first bytes).
    return service.app.job_servicer._submit.admission.active


async def test_uploads_in_flight_hold_back_only_their_tenant(start_tenancy, sample_mp4):
    t = await start_tenancy(max_uploads_per_tenant=1)
    release = asyncio.Event()

    async def held_stream():
        yield header(data=sample_mp4)
        parts = chunks(sample_mp4)
        yield parts[0]
        await release.wait()
        for part in parts[1:]:
            yield part

    async def held_upload():
        return await t.stubs.jobs.SubmitVideo(held_stream(), metadata=t.acme.metadata)

    held = asyncio.create_task(held_upload())
    try:

        async def admitted() -> bool:
            return _uploads_in_flight(t.service) == 1

        await eventually(admitted, what="the held upload to be admitted")
        busy = await error_of(submit_as(t.stubs, t.acme.metadata, sample_mp4))
        detail = rich_error(busy)
        assert (busy.code(), detail.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "TOO_MANY_UPLOADS",
        )
        assert detail.metadata.get("scope") == "tenant"
        assert (retry_delay_seconds(busy) or 0) > 0
        # Staged uploads count against the same limit.
        assert await outcome_of(
            write_blob(t.stubs, t.acme.metadata, upload_key(), sample_mp4)
        ) == Outcome("RESOURCE_EXHAUSTED", "TOO_MANY_UPLOADS")
        # globex uploads meanwhile, both ways.
        await submit_as(t.stubs, t.globex.metadata, sample_mp4)
        await write_blob(t.stubs, t.globex.metadata, upload_key(), sample_mp4)
    finally:
        release.set()
    job = (await held).job
    assert job.tenant == "acme"
    await submit_as(t.stubs, t.acme.metadata, sample_mp4)


async def test_workers_and_stats_show_a_client_only_its_own_tenant(start_tenancy, sample_mp4):
    tenancy = await start_tenancy()
    stubs, acme, globex, admin = tenancy.stubs, tenancy.acme, tenancy.globex, tenancy.admin
    acme_job = await submit_as(stubs, acme.metadata, sample_mp4)
    globex_job = await submit_as(stubs, globex.metadata, sample_mp4)
    async with TokenScriptedWorker(
        tenancy.service.address, tenancy.worker, store=tenancy.service.storage, capacity=2
    ) as worker:
        held = {(await worker.next("assignment")).job_id for _ in range(2)}
        assert held == {acme_job.job_id, globex_job.job_id}

        async def workers_seen_by(caller):
            answer = await stubs.jobs.ListWorkers(js.ListWorkersRequest(), metadata=caller.metadata)
            [listed] = answer.workers
            return listed

        for caller, expected in [
            (acme, [acme_job.job_id]),
            (globex, [globex_job.job_id]),
            (admin, sorted(held)),
        ]:
            listed = await workers_seen_by(caller)
            assert (listed.slots, listed.slots_used) == (2, 2)
            assert list(listed.job_ids) == expected

    async def total(caller, **request) -> int:
        answer = await stubs.jobs.GetStats(js.GetStatsRequest(**request), metadata=caller.metadata)
        return sum(count.count for count in answer.total.counts)

    assert await total(acme) == 1
    assert await total(acme, tenant="globex") == 1  # a client's own tenant, whatever it asks
    assert await total(admin) == 2
    assert await total(admin, tenant="globex") == 1
