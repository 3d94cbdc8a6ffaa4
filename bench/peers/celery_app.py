"""Celery app for the benchmark: Redis broker and result backend (the URL in
BENCH_REDIS_URL), JSON serializer (the video travels base64-encoded), one
queue. Worker: `celery -A peers.celery_app worker -P prefork -c 2`."""

from __future__ import annotations

import base64
import os

from celery import Celery

from peers.probe_task import probe_bytes

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
QUEUE = "bench_celery"

app = Celery("bench_peers", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.probe")
def probe(data_b64: str) -> dict:
    """The probe job."""
    return probe_bytes(base64.b64decode(data_b64))
