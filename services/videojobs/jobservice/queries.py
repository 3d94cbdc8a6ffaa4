"""Reading jobs: GetStatus and ListJobs (AIP-158 pagination)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from videojobs.common import errors
from videojobs.jobservice.domain import Job, JobState, check_job_id, job_not_found
from videojobs.jobservice.store import Database

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class JobPage:
    """One page of ListJobs."""

    jobs: list[Job]
    next_page_token: str


def _filter_fingerprint(states: Sequence[JobState], pipeline: str) -> str:
    canonical = json.dumps([sorted(s.value for s in states), pipeline])
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode_page_token(last_position: int, states: Sequence[JobState], pipeline: str) -> str:
    """An opaque token: where the page ended, bound to the filter it was made for."""
    payload = json.dumps({"p": last_position, "f": _filter_fingerprint(states, pipeline)})
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, states: Sequence[JobState], pipeline: str) -> int:
    """The position a token continues after; INVALID_ARGUMENT when it is not ours
    or was made for another filter."""
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position = int(payload["p"])
        fingerprint = payload["f"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise errors.invalid_argument(
            "page_token is invalid", [("page_token", "not a token this server issued")]
        ) from None
    if fingerprint != _filter_fingerprint(states, pipeline):
        raise errors.invalid_argument(
            "page_token was issued for a different filter",
            [("page_token", "use it with the same states and pipeline as the first page")],
        )
    return position


class JobQueries:
    """Application service for reading jobs."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def get(self, job_id: str) -> Job:
        """The job; INVALID_ARGUMENT for a malformed id, NOT_FOUND for an unknown one."""
        check_job_id(job_id)
        async with self._database.reading() as repository:
            job = await repository.get(job_id)
        if job is None:
            raise job_not_found(job_id)
        return job

    async def list(
        self, *, page_size: int, page_token: str, states: Sequence[JobState], pipeline: str
    ) -> JobPage:
        """A page of jobs, newest first."""
        if page_size < 0:
            raise errors.invalid_argument(
                "page_size must not be negative", [("page_size", "must be 0 or more")]
            )
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = decode_page_token(page_token, states, pipeline) if page_token else None
        async with self._database.reading() as repository:
            rows = await repository.list_page(
                states=states, pipeline=pipeline, before_position=before, limit=size + 1
            )
        more = len(rows) > size
        rows = rows[:size]
        token = encode_page_token(rows[-1][0], states, pipeline) if more else ""
        return JobPage(jobs=[job for _, job in rows], next_page_token=token)
