"""The orphan sweep: storage holds nothing no job refers to, for long.

Staged uploads (`uploads/{id}`) nobody turned into a job are removed after
`staged_upload_ttl`; resumable writes nobody resumed count as dead writes.

A process killed between publishing an upload and committing its job row
leaves an input no job refers to; one killed mid-write leaves a temporary
file. Neither is ever read again. The sweep runs at start-up and then every
`interval` seconds (not only at start-up: a server that never restarts must
not leak), and removes such debris once it is older than `grace` seconds, so
an upload in progress, or one whose row is being committed, is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from videojobs.common.failures import RepeatedFailureLog
from videojobs.jobservice.domain import is_staged_upload_key, job_id_of, utc_now
from videojobs.jobservice.store import Database
from videojobs.storage import BlobInfo, BlobStore

log = logging.getLogger(__name__)

# Job ids looked up in the database per query.
_LOOKUP_BATCH = 500


@dataclass
class SweepReport:
    """What one sweep removed."""

    partial_writes: int = 0
    orphaned_blobs: int = 0
    expired_uploads: int = 0


class OrphanSweeper:
    """Periodically removes dead temporary files and blobs of jobs that do not exist."""

    def __init__(
        self,
        database: Database,
        blob_store: BlobStore,
        interval: float,
        grace: float,
        staged_upload_ttl: float = 86_400.0,
    ) -> None:
        self._database = database
        self._blob_store = blob_store
        self._interval = interval
        self._grace = grace
        self._staged_upload_ttl = staged_upload_ttl
        self._task: asyncio.Task | None = None
        self._failures = RepeatedFailureLog(log, "orphan sweep")

    def start(self) -> None:
        """Starts sweeping in the background (one sweep at once)."""
        self._task = asyncio.create_task(self._loop(), name="orphan-sweeper")

    async def stop(self) -> None:
        """Stops the background sweeps."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                report = await self.sweep()
                self._failures.succeeded()
                if report.partial_writes or report.orphaned_blobs or report.expired_uploads:
                    log.info(
                        "sweep removed %d dead temporary file(s), %d orphaned blob(s) and "
                        "%d staged upload(s) nobody used",
                        report.partial_writes,
                        report.orphaned_blobs,
                        report.expired_uploads,
                    )
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                self._failures.failed(exc)
            await asyncio.sleep(self._interval)

    async def sweep(self) -> SweepReport:
        """One sweep; see the module docstring."""
        report = SweepReport()
        report.partial_writes = await asyncio.to_thread(
            self._blob_store.sweep_partial_writes, self._grace
        )
        now = utc_now()
        cutoff = now - timedelta(seconds=self._grace)
        upload_cutoff = now - timedelta(seconds=self._staged_upload_ttl)
        blobs = await asyncio.to_thread(lambda: list(self._blob_store.list()))
        by_job: dict[str, list[BlobInfo]] = {}
        for info in blobs:
            if is_staged_upload_key(info.key):
                if info.modified_at is not None and info.modified_at < upload_cutoff:
                    await asyncio.to_thread(self._blob_store.delete, info.key)
                    report.expired_uploads += 1
                continue
            job_id = job_id_of(info.key)
            if job_id is None:
                continue  # not laid out by videojobs: not ours to judge
            if info.modified_at is not None and info.modified_at > cutoff:
                continue  # young: its job row may be committing right now
            by_job.setdefault(job_id, []).append(info)
        async with self._database.transaction() as repository:
            await repository.forget_staged_uploads_before(upload_cutoff)
        job_ids = list(by_job)
        for start in range(0, len(job_ids), _LOOKUP_BATCH):
            batch = job_ids[start : start + _LOOKUP_BATCH]
            async with self._database.reading() as repository:
                existing = await repository.existing_job_ids(batch)
            for job_id in batch:
                if job_id in existing:
                    continue
                for info in by_job[job_id]:
                    await asyncio.to_thread(self._blob_store.delete, info.key)
                    report.orphaned_blobs += 1
                log.info("removed %d orphaned blob(s) of job %s", len(by_job[job_id]), job_id)
        return report
