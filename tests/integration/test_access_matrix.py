"""Who may call what: every RPC of job-service, called by every kind of caller,
over a real channel to a server with an auth file.

One table says what each caller gets from each RPC: a principal whose role
may call it gets a working call (a real success, not a domain error); a role
that may not gets PERMISSION_DENIED (ROLE_NOT_ALLOWED); a call without
credentials, or with a token the server does not know, gets UNAUTHENTICATED
(CREDENTIALS_MISSING / TOKEN_UNKNOWN). Health and reflection stay open.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from videojobs.v1 import blob_service_pb2 as bs
from videojobs.v1 import dispatch_service_pb2, job_pb2
from videojobs.v1 import job_service_pb2 as js

from support.principals import (
    NO_CREDENTIALS,
    OK,
    AuthFileWriter,
    Caller,
    Outcome,
    Stubs,
    TokenScriptedWorker,
    connect_outcome,
    outcome_of,
    read_blob,
    submit_as,
    upload_key,
    write_blob,
)

SERVICES = {
    "JobService": js.DESCRIPTOR.services_by_name["JobService"],
    "BlobService": bs.DESCRIPTOR.services_by_name["BlobService"],
    "DispatchService": dispatch_service_pb2.DESCRIPTOR.services_by_name["DispatchService"],
}
# The roles each service admits (design brief, section 5; the .proto comments).
ROLES_ALLOWED = {
    "JobService": {"client", "admin"},
    "BlobService": {"client", "worker", "admin"},
    "DispatchService": {"worker", "admin"},
}
# What a caller that is no principal gets, whatever it calls.
REFUSED_BEFORE_ROLES = {
    "no credentials": Outcome("UNAUTHENTICATED", "CREDENTIALS_MISSING"),
    "unknown token": Outcome("UNAUTHENTICATED", "TOKEN_UNKNOWN"),
    "revoked token": Outcome("UNAUTHENTICATED", "TOKEN_UNKNOWN"),
    "not a bearer token": Outcome("UNAUTHENTICATED", "CREDENTIALS_MISSING"),
}
ROLE_NOT_ALLOWED = Outcome("PERMISSION_DENIED", "ROLE_NOT_ALLOWED")


def expected_outcome(service: str, caller: Caller) -> Outcome:
    """What the table says `caller` gets from any RPC of `service`."""
    if caller.label in REFUSED_BEFORE_ROLES:
        return REFUSED_BEFORE_ROLES[caller.label]
    return OK if caller.role in ROLES_ALLOWED[service] else ROLE_NOT_ALLOWED


@dataclass
class World:
    """The running server, its callers, and what the calls act on."""

    stubs: Stubs
    sample: bytes
    client: Caller
    worker: Caller
    # A RUNNING job of the client's tenant, leased by the worker's session.
    leased_job: job_pb2.Job
    lease: dispatch_service_pb2.Assignment
    counter: itertools.count

    def credentials(self, caller: Caller):
        """The caller's metadata; a worker also proves the lease it holds."""
        if caller.role == "worker":
            return caller.with_lease(self.lease.lease_token)
        return caller.metadata

    async def fresh_job(self, *, ended: bool = False) -> job_pb2.Job:
        """A new job of the client's tenant (cancelled when `ended`), made with
        the client's credentials, so only the call under test can touch it."""
        job = await submit_as(self.stubs, self.client.metadata, self.sample)
        if ended:
            await self.stubs.jobs.CancelJob(
                js.CancelJobRequest(job_id=job.job_id), metadata=self.client.metadata
            )
        return job


# -- one way to call each RPC, which succeeds for a caller allowed to make it --


async def submit_video(world: World, caller: Caller) -> None:
    job = await submit_as(world.stubs, world.credentials(caller), world.sample)
    assert job.state == job_pb2.JOB_STATE_QUEUED


async def get_status(world: World, caller: Caller) -> None:
    response = await world.stubs.jobs.GetStatus(
        js.GetStatusRequest(job_id=world.leased_job.job_id), metadata=world.credentials(caller)
    )
    assert response.job.job_id == world.leased_job.job_id


async def stream_results(world: World, caller: Caller) -> None:
    call = world.stubs.jobs.StreamResults(
        js.StreamResultsRequest(job_id=world.leased_job.job_id),
        metadata=world.credentials(caller),
    )
    try:
        first = await call.read()
        assert first is not grpc.aio.EOF and first.event.sequence == 1
    finally:
        call.cancel()


async def list_jobs(world: World, caller: Caller) -> None:
    response = await world.stubs.jobs.ListJobs(
        js.ListJobsRequest(page_size=5), metadata=world.credentials(caller)
    )
    assert response.jobs


async def cancel_job(world: World, caller: Caller) -> None:
    target = await world.fresh_job()
    response = await world.stubs.jobs.CancelJob(
        js.CancelJobRequest(job_id=target.job_id), metadata=world.credentials(caller)
    )
    assert response.job.state == job_pb2.JOB_STATE_CANCELLED


async def delete_job(world: World, caller: Caller) -> None:
    target = await world.fresh_job(ended=True)
    await world.stubs.jobs.DeleteJob(
        js.DeleteJobRequest(job_id=target.job_id), metadata=world.credentials(caller)
    )


async def list_pipelines(world: World, caller: Caller) -> None:
    response = await world.stubs.jobs.ListPipelines(
        js.ListPipelinesRequest(), metadata=world.credentials(caller)
    )
    assert {p.name for p in response.pipelines} >= {"probe", "ocr"}


async def list_workers(world: World, caller: Caller) -> None:
    response = await world.stubs.jobs.ListWorkers(
        js.ListWorkersRequest(), metadata=world.credentials(caller)
    )
    assert "w1:lease" in {w.worker_id for w in response.workers}


async def get_stats(world: World, caller: Caller) -> None:
    response = await world.stubs.jobs.GetStats(
        js.GetStatsRequest(), metadata=world.credentials(caller)
    )
    assert response.total.counts


async def read(world: World, caller: Caller) -> None:
    data = await read_blob(world.stubs, world.credentials(caller), world.lease.input_key)
    assert data == world.sample


async def write(world: World, caller: Caller) -> None:
    if caller.role == "worker":
        key, data = f"{world.lease.output_prefix}/part-{next(world.counter)}.json", b"{}"
    else:
        key, data = upload_key(), world.sample
    response = await write_blob(world.stubs, world.credentials(caller), key, data)
    assert response.complete and response.committed_size == len(data)


async def query_write_status(world: World, caller: Caller) -> None:
    if caller.role == "worker":
        key = f"{world.lease.output_prefix}/unwritten-{next(world.counter)}.json"
    else:
        key = upload_key()
    response = await world.stubs.blobs.QueryWriteStatus(
        bs.QueryWriteStatusRequest(key=key), metadata=world.credentials(caller)
    )
    assert response.committed_size == 0 and not response.complete


async def get_blob_info(world: World, caller: Caller) -> None:
    response = await world.stubs.blobs.GetBlobInfo(
        bs.GetBlobInfoRequest(key=world.lease.input_key), metadata=world.credentials(caller)
    )
    assert response.size_bytes == len(world.sample)


async def connect(world: World, caller: Caller) -> None:
    # A worker may use its own name with a suffix; the pipeline matches no
    # queued job, so the session is only welcomed.
    outcome = await connect_outcome(
        world.stubs.channel,
        caller.metadata,
        worker_id=f"{world.worker.label}:matrix-{next(world.counter)}",
        pipelines=("scenes",),
    )
    if outcome != OK:
        raise _Refused(outcome)


class _Refused(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(str(outcome))
        self.outcome = outcome


CALLS: dict[str, Callable[[World, Caller], Awaitable[None]]] = {
    "JobService/SubmitVideo": submit_video,
    "JobService/GetStatus": get_status,
    "JobService/StreamResults": stream_results,
    "JobService/ListJobs": list_jobs,
    "JobService/CancelJob": cancel_job,
    "JobService/DeleteJob": delete_job,
    "JobService/ListPipelines": list_pipelines,
    "JobService/ListWorkers": list_workers,
    "JobService/GetStats": get_stats,
    "BlobService/Read": read,
    "BlobService/Write": write,
    "BlobService/QueryWriteStatus": query_write_status,
    "BlobService/GetBlobInfo": get_blob_info,
    "DispatchService/Connect": connect,
}


async def _outcome(world: World, rpc: str, caller: Caller) -> Outcome:
    try:
        return await outcome_of(CALLS[rpc](world, caller))
    except _Refused as refused:
        return refused.outcome


def test_the_table_covers_every_rpc():
    every_rpc = {
        f"{name}/{method.name}" for name, service in SERVICES.items() for method in service.methods
    }
    assert set(CALLS) == every_rpc


async def test_every_rpc_for_every_caller(start_job_service, tmp_path, sample_mp4):
    auth = AuthFileWriter(tmp_path / "auth.json")
    client = auth.add("acme-app", "client", tenant="acme")
    worker = auth.add("w1", "worker")
    admin = auth.add("ops", "admin")
    revoked = auth.add("former-admin", "admin")
    auth.revoke("former-admin")
    callers = [
        client,
        worker,
        admin,
        NO_CREDENTIALS,
        AuthFileWriter.unknown(),
        Caller("revoked token", token=revoked.token),
        Caller("not a bearer token", raw_authorization=f"Basic {admin.token}"),
    ]
    # Long leases: the matrix outlasts the test default, and nobody heartbeats.
    service = await start_job_service(auth_file=str(auth.path), lease_duration=120.0)
    stubs = Stubs(service.address)
    try:
        leased_job = await submit_as(stubs, client.metadata, sample_mp4, pipeline="ocr")
        async with TokenScriptedWorker(
            service.address, worker, worker_id="w1:lease", pipelines=("ocr",)
        ) as lease_holder:
            lease = await lease_holder.next("assignment")
            assert lease.job_id == leased_job.job_id
            world = World(stubs, sample_mp4, client, worker, leased_job, lease, itertools.count())
            actual, expected = {}, {}
            for rpc, caller in itertools.product(CALLS, callers):
                expected[rpc, caller.label] = expected_outcome(rpc.split("/")[0], caller)
                actual[rpc, caller.label] = await _outcome(world, rpc, caller)
            # The session holding the lease was never disturbed by the calls.
            assert lease_holder.error is None
    finally:
        await stubs.close()
    wrong = [
        f"{rpc:<30} {who:<20} expected {expected[rpc, who]}, got {actual[rpc, who]}"
        for rpc, who in expected
        if actual[rpc, who] != expected[rpc, who]
    ]
    assert not wrong, "calls that did not end as the table says:\n" + "\n".join(wrong)


@pytest.mark.parametrize("credentials", ["none", "unknown token"])
async def test_health_and_reflection_need_no_credentials(start_job_service, tmp_path, credentials):
    auth = AuthFileWriter(tmp_path / "auth.json")
    auth.add("ops", "admin")
    service = await start_job_service(auth_file=str(auth.path))
    metadata = NO_CREDENTIALS.metadata if credentials == "none" else auth.unknown().metadata
    async with grpc.aio.insecure_channel(service.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "videojobs.v1.JobService", "videojobs.v1.DispatchService"):
            response = await health.Check(
                health_pb2.HealthCheckRequest(service=name), metadata=metadata
            )
            assert response.status == health_pb2.HealthCheckResponse.SERVING, name
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        answers = [
            answer async for answer in reflection.ServerReflectionInfo(ask(), metadata=metadata)
        ]
        listed = {s.name for s in answers[0].list_services_response.service}
        assert {
            "videojobs.v1.JobService",
            "videojobs.v1.BlobService",
            "videojobs.v1.DispatchService",
            "grpc.health.v1.Health",
        } <= listed


async def test_roles_admitted_still_meet_the_per_key_rules(start_job_service, tmp_path, sample_mp4):
    """Admission by role is not access to every key: a worker without a lease
    reads nothing of a job and writes nothing; a client writes no job key.
    Those refusals are the key rules' (NOT_FOUND / KEY_NOT_WRITABLE), never
    ROLE_NOT_ALLOWED."""
    auth = AuthFileWriter(tmp_path / "auth.json")
    client = auth.add("acme-app", "client", tenant="acme")
    worker = auth.add("w1", "worker")
    service = await start_job_service(auth_file=str(auth.path))
    stubs = Stubs(service.address)
    try:
        job = await submit_as(stubs, client.metadata, sample_mp4)
        prefix = job.input_key.rsplit("/input/", 1)[0]
        outcomes = {
            "worker reads an input without a lease": await outcome_of(
                read_blob(stubs, worker.metadata, job.input_key)
            ),
            "worker reads an input with a made-up lease": await outcome_of(
                read_blob(stubs, worker.with_lease("0" * 32), job.input_key)
            ),
            "worker writes under an attempt without a lease": await outcome_of(
                write_blob(stubs, worker.metadata, f"{prefix}/attempts/1/x.json", b"{}")
            ),
            "worker writes a staged upload": await outcome_of(
                write_blob(stubs, worker.metadata, upload_key(), sample_mp4)
            ),
            "client writes under its own job's attempt": await outcome_of(
                write_blob(stubs, client.metadata, f"{prefix}/attempts/1/x.json", b"{}")
            ),
            "client overwrites its own job's input": await outcome_of(
                write_blob(stubs, client.metadata, job.input_key, sample_mp4)
            ),
        }
    finally:
        await stubs.close()
    not_found = Outcome("NOT_FOUND", "BLOB_NOT_FOUND")
    not_writable = Outcome("PERMISSION_DENIED", "KEY_NOT_WRITABLE")
    assert outcomes == {
        "worker reads an input without a lease": not_found,
        "worker reads an input with a made-up lease": not_found,
        "worker writes under an attempt without a lease": not_writable,
        "worker writes a staged upload": not_writable,
        "client writes under its own job's attempt": not_writable,
        "client overwrites its own job's input": not_writable,
    }
