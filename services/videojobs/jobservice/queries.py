"""Reading jobs: GetStatus and ListJobs (AIP-158 pagination).

Page tokens are opaque to clients and signed by the server: a token is the
page's end position and a fingerprint of the filter it was made for, with an
HMAC-SHA256 under a key every replica shares (stored in the database, so
tokens survive restarts). A token the server did not issue is refused before
anything in it is parsed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from videojobs.common import errors
from videojobs.common.auth import LOCAL_PRINCIPAL, Principal
from videojobs.common.text import echo
from videojobs.jobservice.domain import Job, JobState, check_job_id, check_visible
from videojobs.jobservice.limits import MAX_PAGE_TOKEN_CHARS, MAX_PIPELINE_NAME_CHARS
from videojobs.jobservice.store import Database
from videojobs.pipelines.plan import KEY_SEPARATOR

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
PAGE_TOKEN_SECRET = "page_token_hmac"
_SIGNATURE_BYTES = 16
# Positions are database row ids: positive and far below this.
_MAX_POSITION = 2**62

Rendered = TypeVar("Rendered")


@dataclass(frozen=True)
class JobPage(Generic[Rendered]):
    """One page of ListJobs: the jobs as the caller rendered them."""

    jobs: list[Rendered]
    next_page_token: str


def _invalid_token(description: str = "not a token this server issued") -> errors.ServiceError:
    return errors.invalid_argument("page_token is invalid", [("page_token", description)])


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode((text + "=" * (-len(text) % 4)).encode("ascii"))


class PageTokens:
    """Issues and checks signed page tokens. The key is the database's shared
    secret PAGE_TOKEN_SECRET, loaded once at start-up (`load_key`)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key

    async def load_key(self, database: Database) -> None:
        """Reads (or creates) the shared signing key."""
        self._key = await database.shared_secret(PAGE_TOKEN_SECRET)

    @staticmethod
    def _filter_fingerprint(
        states: Sequence[JobState], pipeline: str, tenant: str | None = None
    ) -> str:
        canonical = json.dumps([sorted(s.value for s in states), pipeline, tenant])
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def _signature(self, payload: bytes) -> bytes:
        if self._key is None:
            raise RuntimeError("page-token key not loaded (PageTokens.load_key)")
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]

    def encode(
        self,
        last_position: int,
        states: Sequence[JobState],
        pipeline: str,
        tenant: str | None = None,
    ) -> str:
        """A token for the page after `last_position`, bound to the filter
        (the tenant whose jobs are listed included)."""
        payload = json.dumps(
            {"p": last_position, "f": self._filter_fingerprint(states, pipeline, tenant)},
            separators=(",", ":"),
        ).encode()
        return f"{_b64encode(payload)}.{_b64encode(self._signature(payload))}"

    def decode(
        self, token: str, states: Sequence[JobState], pipeline: str, tenant: str | None = None
    ) -> int:
        """The position a token continues after. INVALID_ARGUMENT for anything
        this server did not issue, or a token made for another filter."""
        if len(token) > MAX_PAGE_TOKEN_CHARS or token.count(".") != 1:
            raise _invalid_token()
        encoded_payload, encoded_signature = token.split(".")
        try:
            payload = _b64decode(encoded_payload)
            signature = _b64decode(encoded_signature)
        except (ValueError, binascii.Error, UnicodeEncodeError):
            raise _invalid_token() from None
        if not hmac.compare_digest(signature, self._signature(payload)):
            raise _invalid_token()
        # Signed by us, so the payload is our own JSON; still checked, never trusted blindly.
        try:
            content = json.loads(payload)
            position, fingerprint = content["p"], content["f"]
        except (ValueError, KeyError, TypeError):
            raise _invalid_token() from None
        if type(position) is not int or not 0 < position < _MAX_POSITION:
            raise _invalid_token()
        if fingerprint != self._filter_fingerprint(states, pipeline, tenant):
            raise errors.invalid_argument(
                "page_token was issued for a different filter",
                [("page_token", "use it with the same states and pipeline as the first page")],
            )
        return position


class JobQueries:
    """Application service for reading jobs."""

    def __init__(
        self, database: Database, page_tokens: PageTokens, pipeline_names: Iterable[str]
    ) -> None:
        self._database = database
        self._page_tokens = page_tokens
        # What a `pipeline` filter may name (the installed pipelines).
        self._pipeline_names = frozenset(pipeline_names)

    async def get(self, job_id: str, principal: Principal = LOCAL_PRINCIPAL) -> Job:
        """The job; INVALID_ARGUMENT for a malformed id, NOT_FOUND for an
        unknown one or one of a tenant the principal does not see."""
        check_job_id(job_id)
        async with self._database.reading() as repository:
            job = await repository.get(job_id)
        check_visible(job_id, None if job is None else job.tenant, principal)
        return job

    async def list(
        self,
        *,
        page_size: int,
        page_token: str,
        states: Sequence[JobState],
        pipeline: str,
        render: Callable[[Job], Rendered],
        size_of: Callable[[Rendered], int],
        max_page_bytes: int,
        principal: Principal = LOCAL_PRINCIPAL,
        tenant: str = "",
    ) -> JobPage[Rendered]:
        """A page of jobs, newest first, rendered by `render`. The page ends
        early (with a next-page token) once it would exceed `max_page_bytes`
        as measured by `size_of`; it always holds at least one job.

        A client lists its own tenant's jobs only (a `tenant` filter naming
        another gives an empty page); an administrator lists every tenant's,
        or `tenant`'s."""
        if page_size < 0:
            raise errors.invalid_argument(
                "page_size must not be negative", [("page_size", "must be 0 or more")]
            )
        if len(pipeline) > MAX_PIPELINE_NAME_CHARS:
            raise errors.invalid_argument(
                "pipeline is too long",
                [("pipeline", f"at most {MAX_PIPELINE_NAME_CHARS} characters")],
            )
        unknown = [
            name
            for name in filter(None, pipeline.split(KEY_SEPARATOR))
            if name not in self._pipeline_names
        ]
        if unknown:
            raise errors.invalid_argument(
                f"no pipeline is called {echo(unknown[0])}",
                [("pipeline", f"one of {', '.join(sorted(self._pipeline_names))}")],
            )
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if principal.is_admin:
            scope = tenant or None
        elif tenant and tenant != principal.tenant:
            return JobPage(jobs=[], next_page_token="")
        else:
            scope = principal.tenant
        before = (
            self._page_tokens.decode(page_token, states, pipeline, scope) if page_token else None
        )
        async with self._database.reading() as repository:
            rows = await repository.list_page(
                states=states,
                pipeline=pipeline,
                before_position=before,
                limit=size + 1,
                tenant=scope,
            )
        rendered: list[Any] = []
        used_bytes = 0
        last_position = None
        for position, job in rows[:size]:
            item = render(job)
            item_bytes = size_of(item)
            if rendered and used_bytes + item_bytes > max_page_bytes:
                break
            rendered.append(item)
            used_bytes += item_bytes
            last_position = position
        more = len(rows) > len(rendered)
        token = (
            self._page_tokens.encode(last_position, states, pipeline, scope)
            if more and last_position is not None
            else ""
        )
        return JobPage(jobs=rendered, next_page_token=token)
