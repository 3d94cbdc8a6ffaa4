"""What a completion claims is in storage, checked; earlier attempts' files removed."""

from __future__ import annotations

import asyncio
import logging

from videojobs.jobservice.domain import Artifact, JobError, job_id_of
from videojobs.storage import BlobStore, StorageKey
from videojobs.storage.blobstore import BlobNotFound, BlobStoreError

log = logging.getLogger(__name__)


class AttemptOutputs:
    """The files of job attempts in storage (None: nothing is checked, for
    unit tests without storage)."""

    def __init__(self, blob_store: BlobStore | None) -> None:
        self._store = blob_store

    async def missing(self, output_key: StorageKey, artifacts: list[Artifact]) -> JobError | None:
        """Why the outputs a completion names are not (all) in storage as
        reported, or None."""
        if self._store is None:
            return None
        store = self._store
        expected: list[tuple[StorageKey, int | None]] = [(output_key, None)] + [
            (a.key, a.size_bytes) for a in artifacts
        ]

        def check() -> str | None:
            for key, size in expected:
                if job_id_of(key) is None:
                    return f"{key.value} belongs to no job"  # refused by prefix later anyway
                try:
                    info = store.stat(key)
                except BlobNotFound:
                    return f"{key.value} is not in storage"
                except BlobStoreError as exc:
                    return f"{key.value} cannot be checked ({exc})"
                if size is not None and info.size_bytes != size:
                    return f"{key.value} holds {info.size_bytes} bytes, not the {size} reported"
            return None

        problem = await asyncio.to_thread(check)
        if problem is None:
            return None
        return JobError(
            "INTERNAL",
            f"the worker reported outputs that storage does not hold as reported ({problem})",
            "OUTPUT_MISSING",
        )

    async def remove_other_attempts(self, job_id: str, winner: StorageKey) -> None:
        """Deletes what earlier (lost or failed) attempts wrote: the job keeps
        exactly one output, its winner's. Best effort: a failure only logs."""
        if self._store is None:
            return
        store = self._store

        def sweep() -> int:
            removed = 0
            attempts = StorageKey(winner.value.rsplit("/", 1)[0])  # .../attempts
            for info in list(store.list(attempts)):
                if not info.key.is_within(winner):
                    store.delete(info.key)
                    removed += 1
            return removed

        try:
            removed = await asyncio.to_thread(sweep)
        except Exception:  # noqa: BLE001 - cleanup must never fail a completion
            log.warning("could not remove old attempt outputs of job %s", job_id, exc_info=True)
            return
        if removed:
            log.info("removed %d file(s) of earlier attempts of job %s", removed, job_id)
