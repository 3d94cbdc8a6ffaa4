"""`--log-format json` (VIDEOJOBS_LOG_FORMAT=json): every line both services
write is one JSON object, and the lines about a job name it, its attempt,
its worker and the request they belong to."""

from __future__ import annotations

import json

import pytest

from videojobs.v1 import job_pb2

from support.sync_api import Api

pytestmark = pytest.mark.e2e


def _lines(path) -> list[dict]:
    parsed = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        try:
            parsed.append(json.loads(text))
        except json.JSONDecodeError as error:
            raise AssertionError(f"{path.name}:{number} is not JSON: {text!r}") from error
    return parsed


def test_json_lines_carry_job_attempt_worker_and_request(stack, sample_mp4):
    stack.start_server(VIDEOJOBS_LOG_FORMAT="json")
    worker = stack.start_worker("json-logger", VIDEOJOBS_LOG_FORMAT="json")
    api = Api(stack.address)
    job = api.submit_with(sample_mp4)
    assert api.wait_terminal(job.job_id).state == job_pb2.JOB_STATE_SUCCEEDED
    api.close()
    stack.stop_all()

    server_lines = _lines(stack.root / "server.log")
    worker_lines = _lines(worker.log_path)
    for line in server_lines + worker_lines:
        assert {"time", "level", "logger", "message"} <= set(line), line

    about_job = [line for line in server_lines if job.job_id in line["message"]]
    assert [line["message"].split()[2] for line in about_job][:1] == ["accepted"]
    for line in about_job:
        assert line.get("job_id") == job.job_id, line
    # Lines written while serving a call name it; the dispatcher's own do not.
    accepted = about_job[0]
    assert accepted["rpc"] == "SubmitVideo" and len(accepted["request_id"]) == 16
    assigned = next(line for line in about_job if "assigned to worker" in line["message"])
    assert (assigned["attempt"], assigned["worker_id"]) == (1, "json-logger")
    succeeded = next(line for line in about_job if "succeeded" in line["message"])
    assert succeeded["worker_id"] == "json-logger"
    assert succeeded["rpc"] == "Connect" and succeeded["request_id"] != accepted["request_id"]

    on_worker = [line for line in worker_lines if job.job_id in line["message"]]
    assert on_worker, "the worker logged nothing about the job"
    for line in on_worker:
        assert (line.get("job_id"), line.get("attempt"), line.get("worker_id")) == (
            job.job_id,
            1,
            "json-logger",
        ), line
    assert all(line.get("worker_id") == "json-logger" for line in worker_lines[1:]), [
        line for line in worker_lines if line.get("worker_id") != "json-logger"
    ]
