"""A real videojobs-server with an auth file and TLS, as grpcurl (the real
binary), the CLI and a real worker see it: bearer tokens in `-H`, the CA in
`-cacert`, client certificates in `-cert/-key`; reflection and health stay
open without a token."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from videojobs.client import JobClient
from videojobs.v1 import job_pb2

from support.certificates import CertificateSet, make_certificates
from support.videos import write_sample_video

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
GRPCURL = BIN / "grpcurl"
LIST_JOBS = "videojobs.v1.JobService/ListJobs"
# grpcurl keeps redialling a refused handshake until its connect timeout (10 s
# by default); a handshake that works takes milliseconds on loopback.
REFUSED_DIAL = ("-connect-timeout", "3")


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    """Runs grpcurl (TLS: no -plaintext) with a deadline."""
    return subprocess.run(
        [str(GRPCURL), "-max-time", "20", *args], timeout=30, capture_output=True, text=True
    )


def grpcurl_ok(*args: str) -> str:
    """Runs grpcurl and returns stdout; fails the test on a non-zero exit."""
    result = grpcurl(*args)
    assert result.returncode == 0, f"grpcurl {' '.join(args)}: {result.returncode}\n{result}"
    return result.stdout


def tokens(auth_file: Path, *args: str) -> str:
    """`videojobs-server tokens --auth-file F ...`; its stdout (the token, for `add`)."""
    result = subprocess.run(
        [str(BIN / "videojobs-server"), "tokens", "--auth-file", str(auth_file), *args],
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result
    return result.stdout.strip()


@pytest.fixture
def certificates(tmp_path) -> CertificateSet:
    return make_certificates(tmp_path / "pki")


@pytest.fixture
def video(tmp_path) -> Path:
    path = tmp_path / "small.mp4"
    write_sample_video(path, width=160, height=96, fps=10, frames=15)
    return path


def test_grpcurl_over_tls_needs_a_token_for_jobs_but_not_for_reflection_or_health(
    stack, certificates, video, tmp_path
):
    auth_file = tmp_path / "auth.json"
    token = tokens(auth_file, "add", "alice", "--role", "client", "--tenant", "acme")
    ca = str(certificates.ca.cert)
    stack.start_server(
        VIDEOJOBS_AUTH_FILE=str(auth_file),
        VIDEOJOBS_TLS_CERT=str(certificates.server.cert),
        VIDEOJOBS_TLS_KEY=str(certificates.server.key),
    )
    with JobClient(stack.address, token=token, tls_ca=ca) as client:
        job = client.submit(video)
    assert job.tenant == "acme"

    authorization = f"authorization: Bearer {token}"
    listed = json.loads(grpcurl_ok("-cacert", ca, "-H", authorization, stack.address, LIST_JOBS))
    assert [(j["job_id"], j["tenant"]) for j in listed["jobs"]] == [(job.job_id, "acme")]

    refused = grpcurl("-cacert", ca, stack.address, LIST_JOBS)
    assert refused.returncode != 0, refused
    assert "Unauthenticated" in refused.stderr, refused.stderr
    assert "CREDENTIALS_MISSING" in refused.stderr, refused.stderr
    assert refused.stdout.strip() == ""

    wrong = grpcurl("-cacert", ca, "-H", "authorization: Bearer vj_wrong", stack.address, LIST_JOBS)
    assert wrong.returncode != 0 and "TOKEN_UNKNOWN" in wrong.stderr, wrong.stderr

    services = set(grpcurl_ok("-cacert", ca, stack.address, "list").split())
    assert {"videojobs.v1.JobService", "grpc.health.v1.Health"} <= services, services
    health = json.loads(grpcurl_ok("-cacert", ca, stack.address, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}

    # A CA that did not sign the server's certificate, or no TLS at all.
    other_ca = str(certificates.other_ca.cert)
    untrusted = grpcurl("-cacert", other_ca, "-H", authorization, stack.address, LIST_JOBS)
    assert untrusted.returncode != 0, untrusted
    plaintext = grpcurl(*REFUSED_DIAL, "-plaintext", "-H", authorization, stack.address, LIST_JOBS)
    assert plaintext.returncode != 0, plaintext

    # The CLI, with a token file and the CA.
    token_file = tmp_path / "alice.token"
    token_file.write_text(token + "\n")
    status = stack.cli("--tls-ca", ca, "--token-file", str(token_file), "status", job.job_id)
    assert ["tenant:", "acme"] in [line.split() for line in status.stdout.splitlines()]
    missing = stack.cli("--tls-ca", ca, "status", job.job_id, check=False)
    assert missing.returncode == 1 and "UNAUTHENTICATED" in missing.stderr, missing


def test_grpcurl_and_a_worker_identified_by_client_certificates(
    stack, certificates, video, tmp_path
):
    auth_file = tmp_path / "auth.json"
    client_cert = certificates.client("curl-client")
    worker_cert = certificates.client("worker-1")
    tokens(auth_file, "add", "curl-client", "--role", "client", "--subject", "CN=curl-client")
    tokens(auth_file, "add", "worker-1", "--role", "worker", "--subject", "CN=worker-1")
    ca = str(certificates.ca.cert)
    stack.start_server(
        VIDEOJOBS_AUTH_FILE=str(auth_file),
        VIDEOJOBS_TLS_CERT=str(certificates.server.cert),
        VIDEOJOBS_TLS_KEY=str(certificates.server.key),
        VIDEOJOBS_TLS_CLIENT_CA=ca,
    )
    stack.start_worker(
        "worker-1",
        VIDEOJOBS_TLS_CA=ca,
        VIDEOJOBS_TLS_CLIENT_CERT=str(worker_cert.cert),
        VIDEOJOBS_TLS_CLIENT_KEY=str(worker_cert.key),
    )
    mutual = ("-cacert", ca, "-cert", str(client_cert.cert), "-key", str(client_cert.key))
    with JobClient(
        stack.address, token="", tls_ca=ca, tls_cert=client_cert.cert, tls_key=client_cert.key
    ) as client:
        job = client.submit(video)
        done = client.wait(job.job_id)
        assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error
        assert client.read_result(job.job_id)["job_id"] == job.job_id
    assert [a.worker_id for a in done.attempts] == ["worker-1"]

    request = json.dumps({"job_id": job.job_id})
    reply = json.loads(
        grpcurl_ok(*mutual, "-d", request, stack.address, "videojobs.v1.JobService/GetStatus")
    )
    assert reply["job"]["state"] == "JOB_STATE_SUCCEEDED"
    listed = json.loads(grpcurl_ok(*mutual, stack.address, LIST_JOBS))
    assert [j["job_id"] for j in listed["jobs"]] == [job.job_id]
    health = json.loads(grpcurl_ok(*mutual, stack.address, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}

    # The worker's certificate names a worker: it may not call JobService.
    as_worker = grpcurl(
        "-cacert", ca, "-cert", str(worker_cert.cert), "-key", str(worker_cert.key),
        stack.address, LIST_JOBS,
    )  # fmt: skip
    assert as_worker.returncode != 0 and "ROLE_NOT_ALLOWED" in as_worker.stderr, as_worker

    # Without a client certificate, or with one from another CA: no handshake.
    foreign = certificates.foreign_client("curl-client")
    for attempt in (
        ("-cacert", ca),
        ("-cacert", ca, "-cert", str(foreign.cert), "-key", str(foreign.key)),
    ):
        refused = grpcurl(*REFUSED_DIAL, *attempt, stack.address, LIST_JOBS)
        assert refused.returncode != 0, (attempt, refused)
        assert refused.stdout.strip() == ""
