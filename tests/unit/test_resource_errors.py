"""Full disks and databases become retryable UNAVAILABLE errors; upload slots
and storage budgets are counted exactly; the sweep knows whose blob is whose."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from videojobs.common import errors
from videojobs.jobservice.domain import job_id_of
from videojobs.jobservice.limits import UploadLimits
from videojobs.jobservice.upload_admission import StorageBudget, UploadAdmission, peer_host
from videojobs.storage import StorageKey
from videojobs.storage.blobstore import StorageFull


def test_full_disks_and_databases_are_unavailable_with_retry_info() -> None:
    full_disk = OSError(errno.ENOSPC, "No space left on device")
    sqlite_full = OperationalError(
        "INSERT ...", {}, sqlite3.OperationalError("database or disk is full")
    )

    class DiskFullError(Exception):
        sqlstate = "53100"

    for exc, reason in [
        (full_disk, "STORAGE_FULL"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "STORAGE_FULL"),
        (StorageFull("cannot write 'k': no space left in storage"), "STORAGE_FULL"),
        (sqlite_full, "DATABASE_FULL"),
        (DiskFullError("could not extend file"), "DATABASE_FULL"),
    ]:
        error = errors.resource_error_for(exc)
        assert error is not None and error.code == "UNAVAILABLE", exc
        assert error.reason == reason and error.retry_after_seconds > 0
    # Found through the chain of causes too, and nothing else is classified.
    try:
        try:
            raise full_disk
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert errors.resource_error_for(outer).reason == "STORAGE_FULL"
    assert errors.resource_error_for(OSError(errno.EACCES, "denied")) is None
    assert errors.resource_error_for(ValueError("x")) is None


def test_upload_slots_are_counted_per_peer_host_and_overall() -> None:
    admission = UploadAdmission(UploadLimits(max_concurrent_uploads=3, max_uploads_per_peer=2))
    assert peer_host("ipv4:10.0.0.7:51234") == "ipv4:10.0.0.7"
    assert peer_host("ipv6:[::1]:5000") == "ipv6:[::1]"
    with admission.admit("ipv4:10.0.0.7:1"), admission.admit("ipv4:10.0.0.7:2"):
        with pytest.raises(errors.ServiceError) as raised, admission.admit("ipv4:10.0.0.7:3"):
            pass
        assert raised.value.metadata["scope"] == "peer"
        with admission.admit("ipv4:10.0.0.8:1"):
            with pytest.raises(errors.ServiceError) as raised, admission.admit("ipv4:10.0.0.9:1"):
                pass
            assert raised.value.metadata["scope"] == "server"
            assert raised.value.retry_after_seconds
    assert admission.active == 0
    with admission.admit("ipv4:10.0.0.7:4"):
        assert admission.active == 1


class _Store:
    def __init__(self, free: int) -> None:
        self.free = free

    def available_bytes(self) -> int:
        return self.free


async def test_the_budget_counts_promises_of_uploads_in_flight() -> None:
    store = _Store(free=1000)
    stored = [0]

    async def stored_bytes() -> int:
        return stored[0]

    budget = StorageBudget(
        UploadLimits(min_free_bytes=100, storage_quota_bytes=1500), store, stored_bytes
    )
    with budget.reserve() as first:
        await first.promise(600)  # 1000 free - 600 coming >= 100 reserve
        with budget.reserve() as second:
            with pytest.raises(errors.ServiceError) as raised:
                await second.promise(400)  # 1000 - 1000 coming < 100
            assert raised.value.reason == "INSUFFICIENT_STORAGE"
        # Bytes that arrived already show in the free space: not counted twice.
        store.free = 700
        await first.wrote(300)
        with budget.reserve() as third:
            await third.promise(250)  # 700 - (300 + 250) = 150 >= 100
    stored[0] = 1400
    with budget.reserve() as fourth:
        with pytest.raises(errors.ServiceError) as raised:
            await fourth.promise(200)
        assert raised.value.reason == "STORAGE_QUOTA_EXCEEDED"


def test_the_sweep_reads_job_ids_from_keys_with_or_without_a_tenant_prefix() -> None:
    job = "0123456789abcdef0123456789abcdef"
    assert job_id_of(StorageKey(f"jobs/{job}/input/source.mp4")) == job
    assert job_id_of(StorageKey(f"tenants/acme/jobs/{job}/attempts/1/results.json")) == job
    assert job_id_of(StorageKey("jobs/not-a-job-id/input/x")) is None
    assert job_id_of(StorageKey(f"other/{job}/x")) is None
    assert job_id_of(StorageKey(f"jobs/{job}")) is None
