"""Dramatiq broker and actor for the benchmark: Redis broker and Redis result
backend (the URL in BENCH_REDIS_URL), JSON encoder (the video travels
base64-encoded), no retries. Worker: `dramatiq peers.dramatiq_app -p 2 -t 4`."""

from __future__ import annotations

import base64
import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from peers.probe_task import probe_bytes

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
QUEUE = "bench_dramatiq"

broker = RedisBroker(url=REDIS_URL)
backend = RedisBackend(url=REDIS_URL)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, store_results=True, max_retries=0)
def probe(data_b64: str) -> dict:
    """The probe job."""
    return probe_bytes(base64.b64decode(data_b64))
