"""The client library (and the CLI) with credentials, against a real
job-service that has an auth file: bearer tokens on every kind of call,
tenants, revocation, TLS with the right and the wrong CA, and mutual TLS
where the client certificate's subject is the identity."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

import grpc
import pytest

from videojobs.cli import main as cli_main
from videojobs.client import (
    AsyncJobClient,
    CredentialsError,
    JobClient,
    RetryPolicy,
    VideoJobsError,
    tls_credentials,
)
from videojobs.common.auth import RELOAD_CHECK_SECONDS
from videojobs.common.auth_interceptor import REVOCATION_CHECK_SECONDS
from videojobs.jobservice import tokens_command
from videojobs.v1 import job_pb2

from support.certificates import CertificateSet, KeyPair, make_certificates
from support.scripted_worker import ScriptedWorker

WORKER = "scripted-1"  # ScriptedWorker's default worker id: its principal's name
# How long a revocation may take to show: the auth file is looked at every
# RELOAD_CHECK_SECONDS, an open stream checks its principal every
# REVOCATION_CHECK_SECONDS; the rest is slack for a loaded machine.
REVOCATION_DEADLINE = RELOAD_CHECK_SECONDS + REVOCATION_CHECK_SECONDS + 8.0
# Calls expected to fail at the connection get a deadline, not a retry loop.
NO_RETRY = RetryPolicy(timeout=0.0)


class Principals:
    """The auth file of one test, edited with the real `tokens` command."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _run(self, *argv: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = tokens_command.main(["--auth-file", str(self.path), *argv])
        assert code == 0, (argv, out.getvalue())
        return out.getvalue().strip()

    def add(self, name: str, role: str, tenant: str = "default") -> str:
        """A principal known by a token; returns the token (printed once)."""
        token = self._run("add", name, "--role", role, "--tenant", tenant)
        assert token.startswith("vj_") and "\n" not in token
        return token

    def add_subject(self, name: str, role: str, subject: str, tenant: str = "default") -> None:
        """A principal known by its client certificate's subject."""
        self._run("add", name, "--role", role, "--tenant", tenant, "--subject", subject)

    def revoke(self, name: str) -> None:
        self._run("revoke", name)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def video_file(tmp_path, sample_mp4) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(sample_mp4)
    return path


@pytest.fixture
def principals(tmp_path) -> Principals:
    return Principals(tmp_path / "auth.json")


@pytest.fixture
def certificates(tmp_path) -> CertificateSet:
    return make_certificates(tmp_path / "pki")


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch):
    """What the developer's shell holds must not decide these tests."""
    for name in (
        "VIDEOJOBS_TOKEN",
        "VIDEOJOBS_TOKEN_FILE",
        "VIDEOJOBS_TLS_CA",
        "VIDEOJOBS_TLS_CLIENT_CERT",
        "VIDEOJOBS_TLS_CLIENT_KEY",
    ):
        monkeypatch.delenv(name, raising=False)


async def finish_job(client: AsyncJobClient, service, job_id: str, **worker_credentials):
    """A scripted worker (with the given credentials) runs the job to its end;
    returns the final job, as `client` sees it."""
    async with ScriptedWorker(service.address, store=service.storage, **worker_credentials) as w:
        assignment = await w.next("assignment")
        assert assignment.job_id == job_id
        w.progress(assignment, 0.5)
        w.complete(assignment)
        return await client.wait(job_id)


# -- bearer tokens on a plaintext loopback server ---------------------------------


async def test_a_client_token_works_for_every_kind_of_call(
    start_job_service, principals, video_file, sample_mp4, monkeypatch
):
    alice = principals.add("alice", "client", tenant="acme")
    worker = principals.add(WORKER, "worker")
    service = await start_job_service(auth_file=str(principals.path))

    async with AsyncJobClient(service.address, token=alice) as client:
        # chunk_size below the file's size: a resumable staged upload
        # (BlobService.Write, QueryWriteStatus), then SubmitVideo.
        job = await client.submit(video_file, chunk_size=16 * 1024)
        assert job.tenant == "acme"
        assert (await client.get_status(job.job_id)).job_id == job.job_id
        jobs, _ = await client.list_jobs()
        assert [j.job_id for j in jobs] == [job.job_id]
        events = client.follow(job.job_id)
        async with ScriptedWorker(
            service.address, store=service.storage, metadata=bearer(worker)
        ) as scripted:
            assignment = await scripted.next("assignment")
            scripted.progress(assignment, 0.5)
            scripted.complete(assignment)
            seen = [event async for event in events]
        assert seen[-1].WhichOneof("payload") == "completed"
        assert await client.read_result(job.job_id) == {"ok": True}
        async with client.open_blob(job.input_key) as blob:
            assert await blob.read_all() == sample_mp4

    # The blocking client, its token from the environment.
    monkeypatch.setenv("VIDEOJOBS_TOKEN", alice)

    def blocking(directory: Path):
        with JobClient(service.address) as client:
            second = client.submit(video_file, chunk_size=16 * 1024)
            return (
                client.get_status(job.job_id),
                client.read_result(job.job_id),
                client.download(job.job_id, directory),
                second,
            )

    final, document, paths, second = await asyncio.to_thread(blocking, service.data_dir / "out")
    assert final.state == job_pb2.JOB_STATE_SUCCEEDED
    assert document == {"ok": True}
    assert [p.name for p in paths] == ["results.json"]
    assert second.tenant == "acme" and second.job_id != job.job_id


async def test_calls_without_a_valid_token_are_unauthenticated(
    start_job_service, principals, video_file
):
    alice = principals.add("alice", "client")
    service = await start_job_service(auth_file=str(principals.path))
    async with AsyncJobClient(service.address, token=alice) as client:
        job = await client.submit(video_file)

    async with AsyncJobClient(service.address, token="") as anonymous:
        for call in (
            anonymous.get_status(job.job_id),
            anonymous.list_jobs(),
            anonymous.open_blob(job.input_key).read_all(),
        ):
            with pytest.raises(VideoJobsError) as refused:
                await call
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert refused.value.reason == "CREDENTIALS_MISSING"

    async with AsyncJobClient(service.address, token="vj_" + "x" * 43) as stranger:
        with pytest.raises(VideoJobsError) as refused:
            await stranger.get_status(job.job_id)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.reason == "TOKEN_UNKNOWN"
        # An upload, too, is refused before a byte is stored.
        with pytest.raises(VideoJobsError) as refused:
            await stranger.submit(video_file, chunk_size=16 * 1024)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_a_worker_token_may_not_call_job_service(start_job_service, principals):
    worker = principals.add(WORKER, "worker")
    service = await start_job_service(auth_file=str(principals.path))
    async with AsyncJobClient(service.address, token=worker) as client:
        with pytest.raises(VideoJobsError) as refused:
            await client.list_jobs()
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.reason == "ROLE_NOT_ALLOWED"


async def test_a_revoked_token_is_refused_and_its_open_stream_ends(
    start_job_service, principals, video_file
):
    alice = principals.add("alice", "client")
    service = await start_job_service(auth_file=str(principals.path))
    async with AsyncJobClient(service.address, token=alice) as client:
        job = await client.submit(video_file)  # stays QUEUED: no worker
        events = client.follow(job.job_id)
        first = await anext(events)  # the stream is open and has replayed event 1
        assert first.sequence == 1
        principals.revoke("alice")
        with pytest.raises(VideoJobsError) as ended:
            await asyncio.wait_for(anext(events), REVOCATION_DEADLINE)
        assert ended.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert ended.value.reason == "TOKEN_REVOKED"
        # New calls are refused too (the file is re-read by then).
        with pytest.raises(VideoJobsError) as refused:
            await client.get_status(job.job_id)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_tenants_see_only_their_jobs_and_admins_see_all(
    start_job_service, principals, video_file
):
    acme = principals.add("acme-client", "client", tenant="acme")
    globex = principals.add("globex-client", "client", tenant="globex")
    admin = principals.add("root", "admin")
    service = await start_job_service(auth_file=str(principals.path))
    async with (
        AsyncJobClient(service.address, token=acme) as acme_client,
        AsyncJobClient(service.address, token=globex) as globex_client,
        AsyncJobClient(service.address, token=admin) as admin_client,
    ):
        acme_job = await acme_client.submit(video_file)
        globex_job = await globex_client.submit(video_file)
        with pytest.raises(VideoJobsError) as hidden:
            await globex_client.get_status(acme_job.job_id)
        assert hidden.value.code == grpc.StatusCode.NOT_FOUND
        assert [j.job_id for j in (await globex_client.list_jobs())[0]] == [globex_job.job_id]
        # A client's tenant filter cannot widen what it sees.
        assert (await globex_client.list_jobs(tenant="acme"))[0] == []
        everything = {j.job_id async for j in admin_client.iter_jobs()}
        assert everything == {acme_job.job_id, globex_job.job_id}
        only_acme, _ = await admin_client.list_jobs(tenant="acme")
        assert [(j.job_id, j.tenant) for j in only_acme] == [(acme_job.job_id, "acme")]


# -- TLS ---------------------------------------------------------------------------


async def test_tls_with_the_right_ca_works_and_with_the_wrong_ca_fails(
    start_job_service, principals, certificates, video_file
):
    alice = principals.add("alice", "client")
    worker = principals.add(WORKER, "worker")
    service = await start_job_service(
        auth_file=str(principals.path),
        tls_cert=str(certificates.server.cert),
        tls_key=str(certificates.server.key),
    )
    ca = certificates.ca.cert
    async with AsyncJobClient(service.address, token=alice, tls_ca=ca) as client:
        job = await client.submit(video_file, chunk_size=16 * 1024)
        final = await finish_job(
            client, service, job.job_id, metadata=bearer(worker), credentials=tls_credentials(ca)
        )
        assert final.state == job_pb2.JOB_STATE_SUCCEEDED
        assert await client.read_result(job.job_id) == {"ok": True}

    # Credentials built by the caller work the same.
    def blocking() -> job_pb2.Job:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        with JobClient(service.address, token=alice, credentials=credentials) as client:
            return client.get_status(job.job_id)

    assert (await asyncio.to_thread(blocking)).state == job_pb2.JOB_STATE_SUCCEEDED

    for connect in (
        {"tls_ca": certificates.other_ca.cert},  # a CA that did not sign the server
        {},  # plaintext to a TLS port
    ):
        async with AsyncJobClient(
            service.address, token=alice, timeout=5, retry=NO_RETRY, **connect
        ) as client:
            with pytest.raises(VideoJobsError) as refused:
                await client.get_status(job.job_id)
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE, connect


async def test_mutual_tls_identifies_clients_and_workers_by_certificate(
    start_job_service, principals, certificates, video_file
):
    ca = certificates.ca.cert
    alice_cert = certificates.client("alice")
    worker_cert = certificates.client(WORKER)
    principals.add_subject("alice", "client", alice_cert.subject, tenant="acme")
    principals.add_subject(WORKER, "worker", worker_cert.subject)
    bob = principals.add("bob", "client", tenant="acme")
    service = await start_job_service(
        auth_file=str(principals.path),
        tls_cert=str(certificates.server.cert),
        tls_key=str(certificates.server.key),
        tls_client_ca=str(ca),
    )

    def pair(cert: KeyPair) -> dict:
        return {"tls_ca": ca, "tls_cert": cert.cert, "tls_key": cert.key}

    # No token: the certificate's subject is the identity.
    async with AsyncJobClient(service.address, token="", **pair(alice_cert)) as client:
        job = await client.submit(video_file, chunk_size=16 * 1024)
        assert job.tenant == "acme"
        final = await finish_job(
            client,
            service,
            job.job_id,
            credentials=tls_credentials(ca, worker_cert.cert, worker_cert.key),
        )
        assert final.state == job_pb2.JOB_STATE_SUCCEEDED
        assert await client.read_result(job.job_id) == {"ok": True}

    # A certificate from the right CA whose subject nobody registered: a token
    # still identifies the caller, without one the call is unauthenticated.
    stranger = certificates.client("mallory")
    async with AsyncJobClient(service.address, token=bob, **pair(stranger)) as client:
        assert (await client.get_status(job.job_id)).job_id == job.job_id
    async with AsyncJobClient(service.address, token="", **pair(stranger)) as client:
        with pytest.raises(VideoJobsError) as refused:
            await client.get_status(job.job_id)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert refused.value.reason == "CREDENTIALS_MISSING"

    # A certificate from another CA, even with a registered subject, or none at
    # all: the handshake fails.
    foreign = certificates.foreign_client("alice")
    for connect in (
        {"tls_ca": ca, "tls_cert": foreign.cert, "tls_key": foreign.key},
        {"tls_ca": ca},
    ):
        async with AsyncJobClient(
            service.address, token=bob, timeout=5, retry=NO_RETRY, **connect
        ) as client:
            with pytest.raises(VideoJobsError) as refused:
                await client.get_status(job.job_id)
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE, connect


async def test_unusable_credential_files_fail_before_any_call(certificates, tmp_path):
    with pytest.raises(CredentialsError, match="cannot read the TLS CA"):
        JobClient("127.0.0.1:1", tls_ca=tmp_path / "missing.pem")
    with pytest.raises(CredentialsError, match="needs its key"):
        AsyncJobClient("127.0.0.1:1", tls_cert=certificates.client("x").cert)


# -- the CLI -------------------------------------------------------------------------


async def test_cli_uses_a_token_file_and_tls_options(
    start_job_service, principals, certificates, video_file, tmp_path, capsys, monkeypatch
):
    alice = principals.add("alice", "client", tenant="acme")
    admin = principals.add("root", "admin")
    service = await start_job_service(
        auth_file=str(principals.path),
        tls_cert=str(certificates.server.cert),
        tls_key=str(certificates.server.key),
    )
    alice_file = tmp_path / "alice.token"
    alice_file.write_text(alice + "\n")
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(admin)
    ca = str(certificates.ca.cert)

    def cli(*argv: str) -> tuple[int, str, str]:
        code = cli_main.main(["--address", service.address, *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, err = await asyncio.to_thread(
        cli, "--tls-ca", ca, "--token-file", str(alice_file), "submit", str(video_file), "--json"
    )
    assert code == 0, err
    job_id = json.loads(out)["jobId"]

    # Options after the command, and the CA from the environment.
    monkeypatch.setenv("VIDEOJOBS_TLS_CA", ca)
    code, out, err = await asyncio.to_thread(cli, "status", job_id, "--token-file", str(alice_file))
    assert code == 0, err
    assert ["tenant:", "acme"] in [line.split() for line in out.splitlines()]

    monkeypatch.setenv("VIDEOJOBS_TOKEN_FILE", str(admin_file))
    code, out, err = await asyncio.to_thread(cli, "list", "--tenant", "acme")
    assert code == 0, err
    header, *rows = [line for line in out.splitlines() if line.strip()]
    assert header.split()[-1] == "TENANT"
    assert rows[-1].split()[0] == job_id and rows[-1].split()[-1] == "acme"

    monkeypatch.delenv("VIDEOJOBS_TOKEN_FILE")
    monkeypatch.setenv("VIDEOJOBS_TOKEN", alice)
    code, out, err = await asyncio.to_thread(cli, "list", "--json")
    assert code == 0, err
    assert [job["jobId"] for job in json.loads(out)["jobs"]] == [job_id]

    monkeypatch.delenv("VIDEOJOBS_TOKEN")
    code, _, err = await asyncio.to_thread(cli, "list")
    assert code == 1
    assert "UNAUTHENTICATED" in err and "CREDENTIALS_MISSING" in err

    code, _, err = await asyncio.to_thread(cli, "--token-file", str(tmp_path / "none"), "list")
    assert code == 2
    assert "cannot read the token file" in err
