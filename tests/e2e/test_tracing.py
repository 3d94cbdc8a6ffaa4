"""OpenTelemetry tracing (VIDEOJOBS_TRACING): a job's submit, dispatch, run on
the worker and recorded result form one trace across both processes; with
tracing off nothing is written."""

from __future__ import annotations

import json

import pytest

from videojobs.v1 import job_pb2

from support.sync_api import Api

pytestmark = pytest.mark.e2e


def _spans(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_jobs_spans_form_one_trace_from_submit_to_result(stack, sample_mp4, tmp_path):
    server_spans, worker_spans = tmp_path / "server-spans.jsonl", tmp_path / "worker-spans.jsonl"
    stack.start_server(VIDEOJOBS_TRACING=f"jsonl:{server_spans}")
    stack.start_worker("traced", VIDEOJOBS_TRACING=f"jsonl:{worker_spans}")
    api = Api(stack.address)
    job = api.submit_with(sample_mp4)
    assert api.wait_terminal(job.job_id).state == job_pb2.JOB_STATE_SUCCEEDED
    api.close()
    stack.stop_all()

    on_server, on_worker = _spans(server_spans), _spans(worker_spans)
    submit = next(s for s in on_server if s["name"].endswith("JobService/SubmitVideo"))
    trace_id, submit_id = submit["context"]["trace_id"], submit["context"]["span_id"]

    def of_job(spans, name):
        return next(
            s
            for s in spans
            if s["name"] == name and s["attributes"].get("videojobs.job_id") == job.job_id
        )

    dispatch = of_job(on_server, "dispatch")
    run = of_job(on_worker, "run job")
    recorded = of_job(on_server, "record completion")
    for span in (dispatch, run, recorded):
        assert span["context"]["trace_id"] == trace_id, span
        assert span["parent_id"] == submit_id, span
    assert run["attributes"]["videojobs.worker_id"] == "traced"
    assert run["resource"]["attributes"]["service.name"] == "videojobs-worker"
    assert submit["resource"]["attributes"]["service.name"] == "videojobs-server"
    # The dispatch span starts when the job could run and ends at its assignment.
    assert dispatch["start_time"] <= dispatch["end_time"] <= run["start_time"]


def test_no_spans_without_tracing(stack, sample_mp4, tmp_path):
    stack.start_server()
    stack.start_worker("untraced")
    api = Api(stack.address)
    job = api.submit_with(sample_mp4)
    assert api.wait_terminal(job.job_id).state == job_pb2.JOB_STATE_SUCCEEDED
    api.close()
    assert "tracing on" not in stack.server.log_tail(200)
