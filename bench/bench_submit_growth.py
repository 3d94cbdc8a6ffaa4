"""`make bench` (submit growth): does the submit rate stay flat as the jobs
table grows from empty to 100k jobs?

One job-service process on a fresh SQLite database, no worker. At each
table size the benchmark times 200 submits of a 5 KB clip from 8 concurrent
clients; between sizes it grows the table by copying the rows of a real
submitted job (job, pipeline-set row, first event) under new ids and as
SUCCEEDED (most of a real table has ended), straight
into the database in large batches (a submit at a time would take an hour).
Numbers are printed, never asserted (target: within 10 % from empty to 100k).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path

from benchkit import job_service, report_only

from videojobs.client import AsyncJobClient
from videojobs.stack.sample_video import write_sample_video

SIZES = (0, 25_000, 50_000, 100_000)
SUBMITS = 200
CLIENTS = 8
BATCH = 5_000


async def submit_rate(address: str, video: Path) -> float:
    """Submits per second of SUBMITS submits from CLIENTS clients."""
    async with AsyncJobClient(address, token="") as client:

        async def submitter(count: int) -> None:
            for _ in range(count):
                await client.submit(video, pipeline="probe")

        started = time.perf_counter()
        await asyncio.gather(*(submitter(SUBMITS // CLIENTS) for _ in range(CLIENTS)))
        return (SUBMITS // CLIENTS) * CLIENTS / (time.perf_counter() - started)


def grow(database: Path, target: int) -> int:
    """Copies the newest job (with its pipeline row and events) until the
    table holds `target` jobs; returns the count."""
    connection = sqlite3.connect(database, timeout=60, isolation_level=None)
    try:
        count = connection.execute("SELECT count(*) FROM jobs").fetchone()[0]
        if count >= target:
            return count
        columns = [row[1] for row in connection.execute("PRAGMA table_info(jobs)")]
        template = dict(
            zip(
                columns,
                connection.execute("SELECT * FROM jobs ORDER BY position DESC LIMIT 1").fetchone(),
                strict=True,
            )
        )
        events = connection.execute(
            "SELECT * FROM job_events WHERE job_id = ?", (template["job_id"],)
        ).fetchall()
        event_columns = [row[1] for row in connection.execute("PRAGMA table_info(job_events)")]
        copied = [c for c in columns if c != "position"]
        insert_job = (
            f"INSERT INTO jobs ({', '.join(copied)}) VALUES ({', '.join('?' for _ in copied)})"
        )
        insert_event = (
            f"INSERT INTO job_events ({', '.join(event_columns)}) "
            f"VALUES ({', '.join('?' for _ in event_columns)})"
        )
        while count < target:
            size = min(BATCH, target - count)
            jobs, pipelines, copies = [], [], []
            for _ in range(size):
                job_id = secrets.token_hex(16)
                # Most of a real table has ended: the copies are SUCCEEDED.
                values = {**template, "job_id": job_id, "request_id": None, "state": "SUCCEEDED"}
                jobs.append([values[c] for c in copied])
                pipelines.append((job_id, "probe"))
                for event in events:
                    row = dict(zip(event_columns, event, strict=True))
                    row["job_id"] = job_id
                    copies.append([row[c] for c in event_columns])
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(insert_job, jobs)
            connection.executemany(
                "INSERT INTO job_pipelines (job_id, pipeline) VALUES (?, ?)", pipelines
            )
            connection.executemany(insert_event, copies)
            connection.execute("COMMIT")
            count += size
        return count
    finally:
        connection.close()


async def run() -> None:
    with tempfile.TemporaryDirectory(prefix="videojobs-bench-growth-") as scratch:
        root = Path(scratch)
        video = root / "small.mp4"
        write_sample_video(video, width=160, height=120, fps=10, frames=10)
        async with job_service(root / "data") as server:
            rates = []
            for size in SIZES:
                count = await asyncio.to_thread(grow, root / "data" / "videojobs.db", size)
                rate = await submit_rate(server.address, video)
                rates.append(rate)
                print(f"submit growth: {count:>7} jobs in the table: {rate:.0f} submits/s")
            change = 100 * (rates[-1] - rates[0]) / rates[0]
            print(
                f"submit growth: from empty to {SIZES[-1]} jobs: {change:+.0f} % (target within 10 %)"
            )


def main() -> None:
    """Runs the measurement and prints it; exits 0 whatever it finds."""
    report_only("submit growth", run)


if __name__ == "__main__":
    main()
