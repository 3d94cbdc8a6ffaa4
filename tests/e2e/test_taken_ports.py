"""A service started on a port another one already listens on refuses to
start, with a clear message, instead of sharing the port (gRPC's default
SO_REUSEPORT would let both listen and split the calls between them)."""

from __future__ import annotations

import subprocess

import grpc
import pytest

from videojobs.v1 import job_service_pb2 as js
from videojobs.v1 import worker_service_pb2, worker_service_pb2_grpc

from support.processes import BIN
from support.sync_api import Api

pytestmark = pytest.mark.e2e


def _run_until_exit(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_a_second_job_service_on_a_taken_port_refuses_to_start(stack, tmp_path, sample_mp4):
    stack.start_server()
    api = Api(stack.address)
    job = api.submit_with(sample_mp4)
    other_data = tmp_path / "other"
    result = _run_until_exit(
        [str(BIN / "videojobs-server")],
        stack.env(VIDEOJOBS_DATA_DIR=str(other_data)),
    )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on {stack.address}: the port is in use" in result.stderr
    assert "Traceback" not in result.stderr
    # The first one still answers every call: nothing shares its port.
    for _ in range(5):
        listed = api.stub.ListJobs(js.ListJobsRequest(), timeout=10)
        assert [j.job_id for j in listed.jobs] == [job.job_id]


def test_a_second_worker_on_a_taken_port_refuses_to_start(stack):
    stack.start_server()
    first = stack.start_worker("first")
    result = _run_until_exit(
        [str(BIN / "videojobs-worker"), "--worker-id", "second"],
        stack.env(VIDEOJOBS_WORKER_LISTEN=first.address),
    )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on {first.address}: the port is in use" in result.stderr
    assert "Traceback" not in result.stderr
    with grpc.insecure_channel(first.address) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        for _ in range(5):
            status = stub.GetWorkerStatus(worker_service_pb2.GetWorkerStatusRequest(), timeout=10)
            assert status.worker_id == "first"
