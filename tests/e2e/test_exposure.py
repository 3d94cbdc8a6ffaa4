"""Exposure on real processes: videojobs-server and videojobs-worker refuse to
listen beyond loopback without an auth file and TLS, start there with
--insecure (saying so), and start on loopback with no set-up at all; and a
worker with an auth file lets only administrators drain it."""

from __future__ import annotations

import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from videojobs.v1 import worker_service_pb2 as ws
from videojobs.v1 import worker_service_pb2_grpc

from support.grpc_status import rich_error
from support.principals import NO_CREDENTIALS, OK, AuthFileWriter, Caller, Outcome
from support.processes import BIN, ServiceProcess, free_port
from support.waiting import eventually_sync

pytestmark = pytest.mark.e2e

COMMANDS = {
    # command -> the variable that names its own listen address
    "videojobs-server": "VIDEOJOBS_LISTEN",
    "videojobs-worker": "VIDEOJOBS_WORKER_LISTEN",
}
EXPOSURE_WARNING = "anyone who can reach it may call it"
# A refusal happens before anything is served: the command exits at once.
REFUSAL_TIMEOUT_SECONDS = 30


def _exposed_env(stack, command: str, **extra: str) -> tuple[dict[str, str], int]:
    port = free_port()
    return stack.env(**{COMMANDS[command]: f"0.0.0.0:{port}"}, **extra), port


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("protection", ["nothing", "an auth file without TLS"])
def test_refuses_to_listen_beyond_loopback_unprotected(stack, command, protection):
    extra = {}
    if protection != "nothing":
        auth = AuthFileWriter(stack.root / "auth.json")
        auth.add("ops", "admin")
        extra["VIDEOJOBS_AUTH_FILE"] = str(auth.path)
    env, port = _exposed_env(stack, command, **extra)
    result = subprocess.run(
        [str(BIN / command)],
        env=env,
        capture_output=True,
        text=True,
        timeout=REFUSAL_TIMEOUT_SECONDS,
    )
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "listening on" not in result.stdout
    message = result.stderr
    assert f"0.0.0.0:{port}" in message
    assert "VIDEOJOBS_AUTH_FILE" in message and "--insecure" in message, message
    missing = "an auth file and TLS" if protection == "nothing" else "without TLS"
    assert missing in message, message
    assert "Traceback" not in message


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("how", ["--insecure", "VIDEOJOBS_INSECURE=1"])
def test_insecure_listens_beyond_loopback_with_a_warning(stack, command, how):
    extra = {"VIDEOJOBS_INSECURE": "1"} if how != "--insecure" else {}
    env, port = _exposed_env(stack, command, **extra)
    argv = [str(BIN / command)] + (["--insecure"] if how == "--insecure" else [])
    process = ServiceProcess(command, argv, env, stack.root / f"{command}.log")
    stack.processes.append(process)
    process.start()
    assert process.address == f"0.0.0.0:{port}"
    # It serves (reached here over loopback, one of the interfaces it bound).
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = health.Check(health_pb2.HealthCheckRequest(), timeout=10, wait_for_ready=True)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    log = process.log_path.read_text()
    assert "WARNING" in log and EXPOSURE_WARNING in log, log
    assert process.terminate() == 0


def test_loopback_needs_no_set_up(stack):
    server = stack.start_server()
    worker = stack.start_worker("local-1")  # waits until it is connected
    for process in (server, worker):
        assert process.address.startswith("127.0.0.1:")
        assert EXPOSURE_WARNING not in process.log_path.read_text()


def _call(stub_method, request, caller: Caller):
    try:
        stub_method(request, metadata=caller.metadata, timeout=10)
    except grpc.RpcError as exc:
        detail = rich_error(exc)
        return Outcome(detail.code.name, detail.reason)
    return OK


def test_only_an_administrator_drains_a_worker(stack):
    auth = AuthFileWriter(stack.root / "auth.json")
    admin = auth.add("ops", "admin")
    worker_token = auth.add("w1", "worker")
    client = auth.add("acme-app", "client", tenant="acme")
    stack.start_server(VIDEOJOBS_AUTH_FILE=str(auth.path))
    # Not stack.start_worker: its readiness probe calls WorkerService without a token.
    worker = ServiceProcess(
        "worker w1",
        [str(BIN / "videojobs-worker"), "--worker-id", "w1"],
        stack.env(VIDEOJOBS_AUTH_FILE=str(auth.path), VIDEOJOBS_TOKEN=worker_token.token),
        stack.root / "worker-w1.log",
    )
    stack.processes.append(worker)
    worker.start()
    with grpc.insecure_channel(worker.address) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        status_request = ws.GetWorkerStatusRequest()

        def status():
            return stub.GetWorkerStatus(status_request, metadata=admin.metadata, timeout=10)

        # Connected: job-service accepted the worker's own token.
        eventually_sync(lambda: status().connected, timeout=30, what="the worker to connect")

        refusals = {
            "DrainWorker, no credentials": _call(
                stub.DrainWorker, ws.DrainWorkerRequest(), NO_CREDENTIALS
            ),
            "DrainWorker, unknown token": _call(
                stub.DrainWorker, ws.DrainWorkerRequest(), auth.unknown()
            ),
            "DrainWorker, the worker's own token": _call(
                stub.DrainWorker, ws.DrainWorkerRequest(), worker_token
            ),
            "DrainWorker, a client's token": _call(
                stub.DrainWorker, ws.DrainWorkerRequest(), client
            ),
            "GetWorkerStatus, no credentials": _call(
                stub.GetWorkerStatus, status_request, NO_CREDENTIALS
            ),
        }
        assert refusals == {
            "DrainWorker, no credentials": Outcome("UNAUTHENTICATED", "CREDENTIALS_MISSING"),
            "DrainWorker, unknown token": Outcome("UNAUTHENTICATED", "TOKEN_UNKNOWN"),
            "DrainWorker, the worker's own token": Outcome("PERMISSION_DENIED", "ROLE_NOT_ALLOWED"),
            "DrainWorker, a client's token": Outcome("PERMISSION_DENIED", "ROLE_NOT_ALLOWED"),
            "GetWorkerStatus, no credentials": Outcome("UNAUTHENTICATED", "CREDENTIALS_MISSING"),
        }
        # A drain, once requested, shows at once in the status (the request sets
        # it before answering): none of the refused calls started one.
        current = status()
        assert (current.connected, current.draining) == (True, False)
        assert worker.running()
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        assert _call(stub.DrainWorker, ws.DrainWorkerRequest(), admin) == OK
    # Idle, so the drain ends at once and the process exits cleanly.
    assert worker.wait_exit(timeout=30) == 0
