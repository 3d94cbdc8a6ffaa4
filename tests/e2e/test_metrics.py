"""Prometheus metrics of both services, scraped while jobs run: the numbers
move as they should (RPCs by method and code, attempts and their durations,
dispatch latency, queue depth, bytes, workers and slots)."""

from __future__ import annotations

import re
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from videojobs.v1 import job_pb2

from support.sync_api import Api
from support.waiting import eventually_sync

pytestmark = pytest.mark.e2e


def _metrics_url(process) -> str:
    for line in process.stdout_lines:
        found = re.search(r"metrics on (http://\S+/metrics)", line)
        if found:
            return found.group(1)
    raise AssertionError(f"{process.name} printed no metrics address: {process.stdout_lines}")


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_while_jobs_run(stack, sample_mp4):
    server = stack.start_server(VIDEOJOBS_METRICS_LISTEN="127.0.0.1:0")
    server_url = _metrics_url(server)
    before = scrape(server_url)
    assert value(before, "videojobs_connected_workers") == 0

    api = Api(stack.address)
    queued = [api.submit_with(sample_mp4).job_id for _ in range(3)]
    eventually_sync(
        lambda: value(scrape(server_url), "videojobs_jobs", state="QUEUED", pipeline="probe") == 3,
        timeout=20,
        what="queue depth 3",
    )

    worker = stack.start_worker(
        "metered", VIDEOJOBS_WORKER_METRICS_LISTEN="127.0.0.1:0", VIDEOJOBS_WORKER_CONCURRENCY="2"
    )
    worker_url = _metrics_url(worker)
    for job_id in queued:
        assert api.wait_terminal(job_id).state == job_pb2.JOB_STATE_SUCCEEDED

    after = eventually_sync(
        lambda: (
            (s := scrape(server_url))
            and value(s, "videojobs_jobs", state="SUCCEEDED", pipeline="probe") == 3
            and s
        ),
        timeout=20,
        what="the job counts to catch up",
    )
    assert value(after, "videojobs_jobs", state="QUEUED", pipeline="probe") == 0
    submits = ("videojobs_rpc_requests_total", "videojobs.v1.JobService", "SubmitVideo", "OK")
    assert (
        value(after, submits[0], service=submits[1], method=submits[2], code=submits[3])
        - value(before, submits[0], service=submits[1], method=submits[2], code=submits[3])
        == 3
    )
    assert (
        value(
            after,
            "videojobs_attempts_total",
            pipeline="probe",
            outcome="succeeded",
        )
        - value(before, "videojobs_attempts_total", pipeline="probe", outcome="succeeded")
        == 3
    )
    assert (
        value(after, "videojobs_dispatch_latency_seconds_count")
        - value(before, "videojobs_dispatch_latency_seconds_count")
        == 3
    )
    assert value(after, "videojobs_job_queue_wait_seconds_count", pipeline="probe") >= 3
    # The jobs waited for a worker that was not there yet: the queue wait shows it.
    assert value(after, "videojobs_job_queue_wait_seconds_sum", pipeline="probe") > 0
    assert (
        value(
            after, "videojobs_attempt_duration_seconds_count", pipeline="probe", outcome="succeeded"
        )
        >= 3
    )
    uploaded = value(after, "videojobs_upload_bytes_total") - value(
        before, "videojobs_upload_bytes_total"
    )
    # Three uploads, and the three result documents the worker wrote through BlobService.
    assert uploaded >= 3 * len(sample_mp4)
    assert value(after, "videojobs_served_bytes_total") >= 3 * len(sample_mp4)  # the inputs
    assert value(after, "videojobs_connected_workers") == 1
    assert value(after, "videojobs_connected_worker_slots", state="free") == 2
    assert value(after, "videojobs_connected_worker_slots", state="used") == 0

    on_worker = scrape(worker_url)
    assert (
        value(on_worker, "videojobs_worker_jobs_total", pipeline="probe", outcome="completed") == 3
    )
    assert value(on_worker, "videojobs_worker_job_duration_seconds_count", pipeline="probe") == 3
    assert value(on_worker, "videojobs_worker_slots", state="free") == 2
    assert value(on_worker, "videojobs_worker_connected") == 1

    # A refused call is counted with its code.
    with pytest.raises(grpc.RpcError) as caught:
        api.job("0" * 32)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    last = scrape(server_url)
    not_found = dict(service="videojobs.v1.JobService", method="GetStatus", code="NOT_FOUND")
    assert value(last, "videojobs_rpc_requests_total", **not_found) >= 1
    assert value(last, "videojobs_rpc_duration_seconds_count", **not_found) >= 1
    api.close()
