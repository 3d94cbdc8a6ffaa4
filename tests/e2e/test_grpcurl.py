"""The servers as a generic gRPC tool sees them: grpcurl (the real binary)
discovers the services by reflection, describes them, calls them with JSON,
and checks health, against real videojobs-server and videojobs-worker
processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from videojobs.pipelines import builtin_catalogue
from videojobs.v1 import job_pb2

from support.sync_api import Api
from support.videos import write_sample_video

pytestmark = pytest.mark.e2e

GRPCURL = Path(sys.executable).parent / "grpcurl"

# grpcurl 1.8.x prints responses with the proto field names (job_id, output_key).


def grpcurl(*args: str) -> subprocess.CompletedProcess:
    """Runs grpcurl in plaintext mode with a deadline."""
    return subprocess.run(
        [str(GRPCURL), "-plaintext", *args], timeout=30, capture_output=True, text=True
    )


def grpcurl_ok(*args: str) -> str:
    """Runs grpcurl and returns stdout; fails the test on a non-zero exit."""
    result = grpcurl(*args)
    assert result.returncode == 0, f"grpcurl {' '.join(args)}: {result.returncode}\n{result}"
    return result.stdout


@pytest.fixture
def running(stack):
    """A server and one worker."""
    stack.start_server()
    worker = stack.start_worker("curl-worker")
    return stack, worker


def test_reflection_lists_and_describes_the_services(running):
    stack, worker = running

    server_services = set(grpcurl_ok(stack.address, "list").split())
    assert {
        "videojobs.v1.JobService",
        "videojobs.v1.DispatchService",
        "grpc.health.v1.Health",
    } <= server_services, server_services
    assert any(s.startswith("grpc.reflection.") for s in server_services), server_services
    assert "videojobs.v1.WorkerService" not in server_services

    worker_services = set(grpcurl_ok(worker.address, "list").split())
    assert {"videojobs.v1.WorkerService", "grpc.health.v1.Health"} <= worker_services
    assert any(s.startswith("grpc.reflection.") for s in worker_services), worker_services
    assert "videojobs.v1.JobService" not in worker_services

    methods = set(grpcurl_ok(stack.address, "list", "videojobs.v1.JobService").split())
    assert methods == {
        f"videojobs.v1.JobService.{name}"
        for name in (
            "SubmitVideo",
            "GetStatus",
            "StreamResults",
            "ListJobs",
            "CancelJob",
            "DeleteJob",
            "ListPipelines",
            "ListWorkers",
            "GetStats",
        )
    }, methods
    blob_methods = set(grpcurl_ok(stack.address, "list", "videojobs.v1.BlobService").split())
    assert blob_methods == {
        f"videojobs.v1.BlobService.{name}"
        for name in ("Read", "Write", "QueryWriteStatus", "GetBlobInfo")
    }, blob_methods

    service = grpcurl_ok(stack.address, "describe", "videojobs.v1.JobService")
    rpcs = {
        line.split()[1]: line for line in service.splitlines() if line.strip().startswith("rpc ")
    }
    assert "( stream .videojobs.v1.SubmitVideoRequest )" in rpcs["SubmitVideo"], service
    assert "returns ( .videojobs.v1.SubmitVideoResponse )" in rpcs["SubmitVideo"], service
    assert "returns ( stream .videojobs.v1.StreamResultsResponse )" in rpcs["StreamResults"]
    assert "stream" not in rpcs["GetStatus"], service

    message = grpcurl_ok(stack.address, "describe", "videojobs.v1.Job")
    assert "string output_key = 8;" in message, message
    assert "string input_key = 7;" in message, message
    assert ".videojobs.v1.JobState state = 2;" in message, message


def test_json_calls_return_the_job_and_the_worker_status(running, tmp_path):
    stack, worker = running
    path = tmp_path / "small.mp4"
    write_sample_video(path, width=160, height=96, fps=10, frames=15)
    api = Api(stack.address)
    try:
        submitted = api.submit(path.read_bytes(), file_name="small.mp4")
        done = api.wait_terminal(submitted.job_id)
    finally:
        api.close()
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.error

    request = json.dumps({"job_id": done.job_id})
    reply = json.loads(
        grpcurl_ok("-d", request, stack.address, "videojobs.v1.JobService/GetStatus")
    )
    job = reply["job"]
    assert job["job_id"] == done.job_id
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert job["output_key"] == done.output_key == f"jobs/{done.job_id}/attempts/1/results.json"
    assert job["file_name"] == "small.mp4"
    assert job["summary"]["frame_count"] == 15
    assert (job["summary"]["width"], job["summary"]["height"]) == (160, 96)

    status = json.loads(grpcurl_ok(worker.address, "videojobs.v1.WorkerService/GetWorkerStatus"))
    assert status["worker_id"] == "curl-worker"
    assert status["connected"] is True
    # A worker announces every installed pipeline unless told otherwise.
    assert status["pipelines"] == builtin_catalogue().names
    assert status["job_service_address"] == stack.address
    assert not status.get("jobs"), status  # the job is over

    for address in (stack.address, worker.address):
        health = json.loads(grpcurl_ok(address, "grpc.health.v1.Health/Check"))
        assert health == {"status": "SERVING"}, (address, health)


def test_unknown_job_makes_grpcurl_fail_with_not_found(running):
    stack, _ = running
    unknown = "0123456789abcdef0123456789abcdef"
    result = grpcurl(
        "-d", json.dumps({"job_id": unknown}), stack.address, "videojobs.v1.JobService/GetStatus"
    )
    assert result.returncode != 0, result
    assert "NotFound" in result.stderr, result.stderr
    assert "JOB_NOT_FOUND" in result.stderr, result.stderr
    assert result.stdout.strip() == ""

    malformed = grpcurl(
        "-d", json.dumps({"job_id": "0123"}), stack.address, "videojobs.v1.JobService/GetStatus"
    )
    assert malformed.returncode != 0, malformed
    assert "InvalidArgument" in malformed.stderr, malformed.stderr
    assert '"field":"job_id"' in malformed.stderr.replace(" ", ""), malformed.stderr
