"""Principals for tests of who may call what: an auth file written with fresh
tokens, bearer metadata, the outcome of a call as (code, reason), and a
scripted worker that presents a token on its dispatch stream.

The auth file is written the way `videojobs-server tokens` writes it
(`AuthFile.save`: atomic replace), so a running server sees every change
through its own reload mechanism, never through a back door.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2

from videojobs.common.auth import (
    DEFAULT_TENANT,
    RELOAD_CHECK_SECONDS,
    AuthEntry,
    AuthFile,
    hash_token,
    new_token,
    utc_stamp,
)
from videojobs.common.auth_interceptor import REVOCATION_CHECK_SECONDS
from videojobs.v1 import blob_service_pb2 as bs
from videojobs.v1 import (
    blob_service_pb2_grpc,
    dispatch_service_pb2_grpc,
    job_pb2,
    job_service_pb2_grpc,
)
from videojobs.v1 import dispatch_service_pb2 as ds

from support.grpc_status import rich_error
from support.scripted_worker import ScriptedWorker
from support.uploads import chunks, header

AUTHORIZATION = "authorization"
LEASE_METADATA_KEY = "videojobs-lease-token"
# Room for a loaded machine (2 cores, PostgreSQL, the other tests' servers).
MARGIN_SECONDS = 2.0
# A change of the auth file reaches new calls once the registry re-reads the
# file, which it does at most every RELOAD_CHECK_SECONDS.
RELOAD_DEADLINE_SECONDS = RELOAD_CHECK_SECONDS + MARGIN_SECONDS
# An open stream's watch asks every REVOCATION_CHECK_SECONDS whether its
# principal is still live; the answer is at most RELOAD_CHECK_SECONDS stale.
REVOCATION_DEADLINE_SECONDS = REVOCATION_CHECK_SECONDS + RELOAD_CHECK_SECONDS + MARGIN_SECONDS


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata presenting `token` (none for None)."""
    return () if token is None else ((AUTHORIZATION, f"Bearer {token}"),)


@dataclass(frozen=True)
class Caller:
    """Someone calling: a principal of the auth file, or a made-up credential.

    `metadata` is what each call sends: `authorization: Bearer <token>`, or
    nothing for a caller without credentials."""

    label: str
    role: str = ""
    tenant: str = DEFAULT_TENANT
    token: str | None = None
    raw_authorization: str | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The credentials as call metadata."""
        if self.raw_authorization is not None:
            return ((AUTHORIZATION, self.raw_authorization),)
        return bearer(self.token)

    def with_lease(self, lease_token: str) -> tuple[tuple[str, str], ...]:
        """The credentials plus a lease token (BlobService calls of a worker)."""
        return (*self.metadata, (LEASE_METADATA_KEY, lease_token))


NO_CREDENTIALS = Caller("no credentials")


class AuthFileWriter:
    """The auth file of a test and the clear tokens of its principals."""

    def __init__(self, path: Path) -> None:
        self.path = path
        AuthFile().save(path)

    def add(self, name: str, role: str, tenant: str = DEFAULT_TENANT) -> Caller:
        """Adds a principal with a fresh token (replacing a revoked one)."""
        token = new_token()
        document = AuthFile.load(self.path)
        document.add(_entry(name, role, tenant, token))
        document.save(self.path)
        return Caller(name, role, tenant, token)

    def revoke(self, *names: str) -> None:
        """Revokes principals, in one write of the file."""
        document = AuthFile.load(self.path)
        for name in names:
            document.revoke(name)
        document.save(self.path)

    def rotate(self, caller: Caller) -> Caller:
        """Gives `caller`'s principal a new token in one write of the file (the
        old one revoked): what an operator's `revoke` + `add` becomes when both
        land before a server looks at the file again."""
        token = new_token()
        document = AuthFile.load(self.path)
        document.revoke(caller.label)
        document.add(_entry(caller.label, caller.role, caller.tenant, token))
        document.save(self.path)
        return Caller(caller.label, caller.role, caller.tenant, token)

    @staticmethod
    def unknown() -> Caller:
        """A well-formed token that is in no auth file."""
        return Caller("unknown token", token=new_token())


def _entry(name: str, role: str, tenant: str, token: str) -> AuthEntry:
    return AuthEntry(
        name=name,
        role=role,
        tenant=tenant,
        token_sha256=hash_token(token),
        created_at=utc_stamp(),
    )


@dataclass(frozen=True)
class Outcome:
    """How a call ended: "OK", or a status code name and the ErrorInfo reason."""

    code: str
    reason: str = ""

    def __str__(self) -> str:
        return self.code if not self.reason else f"{self.code}/{self.reason}"


OK = Outcome("OK")


async def outcome_of(call: Awaitable) -> Outcome:
    """Awaits `call`: OK, or the code and reason it failed with."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        error = rich_error(exc)
        return Outcome(error.code.name, error.reason)
    return OK


async def error_of(call: Awaitable) -> grpc.aio.AioRpcError:
    """Awaits `call`, which must fail; returns its error."""
    try:
        result = await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError(f"the call succeeded: {result!r}")


def retry_delay_seconds(error: grpc.aio.AioRpcError) -> float | None:
    """The RetryInfo delay of a failed call, or None without one."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            info = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                return info.retry_delay.ToTimedelta().total_seconds()
    return None


class TokenScriptedWorker(ScriptedWorker):
    """A ScriptedWorker whose dispatch stream presents `caller`'s credentials
    (and whose worker id is, unless given, the caller's name)."""

    def __init__(self, address: str, caller: Caller, **options) -> None:
        options.setdefault("worker_id", caller.label)
        super().__init__(address, metadata=caller.metadata, **options)
        self.caller = caller


async def connect_outcome(
    channel: grpc.aio.Channel,
    metadata,
    worker_id: str,
    capacity: int = 1,
    pipelines: tuple[str, ...] = ("probe",),
    timeout: float = 10.0,
) -> Outcome:
    """Opens a dispatch stream saying hello as `worker_id`: OK once the server
    welcomes it (the stream is then closed), or how the server refused it."""
    closing = asyncio.Event()

    async def requests():
        yield ds.ConnectRequest(
            hello=ds.WorkerHello(
                worker_id=worker_id, pipelines=list(pipelines), max_concurrent_jobs=capacity
            )
        )
        await closing.wait()

    call = dispatch_service_pb2_grpc.DispatchServiceStub(channel).Connect(
        requests(), metadata=metadata, timeout=timeout
    )
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as exc:
        error = rich_error(exc)
        return Outcome(error.code.name, error.reason)
    finally:
        closing.set()
    call.cancel()
    assert first is not grpc.aio.EOF, "the dispatch stream ended without a word"
    assert first.WhichOneof("payload") == "welcome", first
    return OK


class Stubs:
    """Stubs of job-service's three services on one plain channel (closed by
    `close`). Credentials travel per call, so one channel serves every caller."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.channel)
        self.blobs = blob_service_pb2_grpc.BlobServiceStub(self.channel)
        self.dispatch = dispatch_service_pb2_grpc.DispatchServiceStub(self.channel)

    async def close(self) -> None:
        """Closes the channel."""
        await self.channel.close()


async def submit_as(stubs: Stubs, metadata, data: bytes, **header_fields) -> job_pb2.Job:
    """SubmitVideo of `data` with `metadata` (uploads.header describes it); the Job."""
    messages = [header(data=data, **header_fields), *chunks(data)]

    async def stream():
        for message in messages:
            yield message

    return (await stubs.jobs.SubmitVideo(stream(), metadata=metadata)).job


async def write_blob(
    stubs: Stubs, metadata, key: str, data: bytes, finish: bool = True
) -> bs.WriteResponse:
    """One BlobService.Write stream of `data` to `key` from offset 0."""

    async def messages():
        parts = [data[i : i + 65536] for i in range(0, len(data), 65536)] or [b""]
        position = 0
        for index, part in enumerate(parts):
            yield bs.WriteRequest(
                key=key if index == 0 else "",
                write_offset=position,
                data=part,
                finish_write=finish and index == len(parts) - 1,
            )
            position += len(part)

    return await stubs.blobs.Write(messages(), metadata=metadata)


async def read_blob(stubs: Stubs, metadata, key: str) -> bytes:
    """The whole object at `key` through BlobService.Read."""
    call = stubs.blobs.Read(bs.ReadRequest(key=key), metadata=metadata)
    return b"".join([response.data async for response in call])


def upload_key() -> str:
    """A fresh staged-upload key (`uploads/{32 hex}`)."""
    return f"uploads/{uuid.uuid4().hex}"
