"""One RQ worker (the default forking `Worker`: a work horse forked per job)
on the benchmark queue. As the RQ docs advise for performance, the job's
module is imported before the worker starts, so every forked horse inherits
PyAV and the pipeline already loaded.

Usage: python -m peers.rq_worker NAME   (Redis URL in BENCH_REDIS_URL)
"""

from __future__ import annotations

import os
import sys

from redis import Redis
from rq import Queue, Worker

import peers.probe_task  # noqa: F401 - preloaded before forking

QUEUE = "bench_rq"


def main() -> None:
    """Runs the worker until SIGTERM."""
    connection = Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))
    name = sys.argv[1] if len(sys.argv) > 1 else None
    worker = Worker([Queue(QUEUE, connection=connection)], connection=connection, name=name)
    worker.work(with_scheduler=False, logging_level="WARNING")


if __name__ == "__main__":
    main()
