"""Who is calling: principals, roles and the auth file.

A principal has a name, a role and (for clients) a tenant. It proves who it
is with a bearer token (`authorization: Bearer <token>`), or, under mutual
TLS, with its client certificate's subject. The auth file
(`VIDEOJOBS_AUTH_FILE`, JSON) lists the principals; tokens are stored as
their SHA-256, never in clear, and the file is re-read when it changes, so
adding or revoking a principal needs no restart.

Tokens are 256-bit random strings made by `videojobs-server tokens add`, so
one round of SHA-256 is the right hash: there is nothing to brute-force that
a slow hash would protect. A presented token is hashed and looked up; the
stored digest is then compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_PREFIX = "vj_"
# No ':' in principal names: a worker may run several processes as
# `<name>:<suffix>`, and the part before the first ':' must name exactly one
# principal (otherwise `w1` could take the worker id of a principal `w1:gpu`).
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
DEFAULT_TENANT = "default"
MAX_TOKEN_CHARS = 256
# The auth file is looked at (stat) at most this often.
RELOAD_CHECK_SECONDS = 0.5
FILE_VERSION = 1


class Role(enum.StrEnum):
    """What a principal may do."""

    CLIENT = "client"  # JobService, and the blobs of its own tenant's jobs
    WORKER = "worker"  # DispatchService, and its assignments' blobs
    ADMIN = "admin"  # everything, every tenant, WorkerService


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role
    # The tenant whose jobs a client sees and whose jobs it creates. Admins
    # see every tenant; their own jobs go to this tenant too.
    tenant: str = DEFAULT_TENANT

    @property
    def is_admin(self) -> bool:
        """Admins see and do everything."""
        return self.role is Role.ADMIN

    def sees_tenant(self, tenant: str) -> bool:
        """Whether this principal may see the jobs of `tenant`."""
        return self.is_admin or tenant == self.tenant


# With no auth file (a loopback-only server, `make run`), every caller is this
# principal: an administrator whose jobs belong to the default tenant.
LOCAL_PRINCIPAL = Principal("local", Role.ADMIN, DEFAULT_TENANT)

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "videojobs_principal", default=LOCAL_PRINCIPAL
)


def current_principal() -> Principal:
    """The principal of the RPC being handled (set by the auth interceptor)."""
    return _current.get()


@contextlib.contextmanager
def acting_as(principal: Principal):
    """Runs the block as `principal` (the interceptor; tests)."""
    token = _current.set(principal)
    try:
        yield principal
    finally:
        # A streaming handler's generator may be closed later, from another
        # context (the client went away): the context it set the principal
        # in is gone with its task, so there is nothing left to restore.
        with contextlib.suppress(ValueError):
            _current.reset(token)


def hash_token(token: str) -> str:
    """The stored form of a token: lowercase hex SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh bearer token (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class AuthFileError(ValueError):
    """The auth file cannot be read or does not describe principals."""


@dataclass(frozen=True)
class Credential:
    """What a call presented: a token (by its SHA-256) or a certificate subject.

    A streaming call keeps the credential it was admitted with and is ended
    when that credential stops naming the same principal (revoked, rotated,
    or moved to another principal), not merely when the principal's name
    disappears."""

    token_sha256: str = ""
    subject: str = ""


@dataclass
class AuthEntry:
    """One principal as the auth file stores it."""

    name: str
    role: str
    tenant: str = DEFAULT_TENANT
    token_sha256: str = ""
    subject: str = ""  # a client certificate's subject (mutual TLS), instead of a token
    created_at: str = ""
    revoked_at: str = ""

    def principal(self) -> Principal:
        """The principal this entry describes."""
        return Principal(self.name, Role(self.role), self.tenant)

    def check(self) -> None:
        """Raises AuthFileError for an entry no principal can have."""
        if not NAME_PATTERN.fullmatch(self.name):
            raise AuthFileError(
                f"principal name {self.name[:40]!r}: 1-128 of [A-Za-z0-9._-] (no ':', "
                "which separates a worker's name from its process suffix)"
            )
        if self.role not in Role.__members__.values():
            raise AuthFileError(f"principal {self.name}: unknown role {self.role[:20]!r}")
        if not TENANT_PATTERN.fullmatch(self.tenant):
            raise AuthFileError(
                f"principal {self.name}: tenant must match {TENANT_PATTERN.pattern}"
            )
        if not (self.token_sha256 or self.subject):
            raise AuthFileError(f"principal {self.name}: needs a token_sha256 or a subject")
        if self.token_sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.token_sha256):
            raise AuthFileError(f"principal {self.name}: token_sha256 is not a SHA-256")


@dataclass
class AuthFile:
    """The principals of the auth file, in file order."""

    entries: list[AuthEntry] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> AuthFile:
        """Reads and checks the file. A missing file is an empty one."""
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise AuthFileError(f"cannot read the auth file: {exc.strerror}") from None
        try:
            document = json.loads(raw) if raw.strip() else {"principals": []}
            entries = [AuthEntry(**item) for item in document.get("principals", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            raise AuthFileError(f"the auth file is not valid: {exc}") from None
        names = set()
        for entry in entries:
            entry.check()
            if entry.name in names:
                raise AuthFileError(f"principal {entry.name} is listed twice")
            names.add(entry.name)
        return cls(entries)

    def save(self, path: Path) -> None:
        """Writes the file atomically, readable by its owner only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {"version": FILE_VERSION, "principals": [asdict(e) for e in self.entries]}
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".auth-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=2)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp, 0o600)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def find(self, name: str) -> AuthEntry | None:
        """The entry called `name`, or None."""
        return next((e for e in self.entries if e.name == name), None)

    def add(self, entry: AuthEntry) -> None:
        """Adds an entry (replacing a revoked one of the same name)."""
        entry.check()
        existing = self.find(entry.name)
        if existing is not None and not existing.revoked_at:
            raise AuthFileError(f"principal {entry.name} exists; revoke it first")
        if existing is not None:
            self.entries.remove(existing)
        self.entries.append(entry)

    def revoke(self, name: str) -> AuthEntry:
        """Marks the entry revoked (its token and subject no longer work)."""
        entry = self.find(name)
        if entry is None:
            raise AuthFileError(f"no principal {name}")
        if not entry.revoked_at:
            entry.revoked_at = utc_stamp()
        return entry


def utc_stamp() -> str:
    """Now, as ISO 8601 UTC to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class AuthRegistry:
    """The live principals of an auth file, re-read when the file changes.

    Thread-safe; cheap to ask (a stat of the file at most every
    RELOAD_CHECK_SECONDS). A file that becomes unreadable or invalid keeps the
    last good principals and is reported; a file that disappears leaves no
    principal at all (fail closed).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._by_token: dict[str, Principal] = {}
        self._by_subject: dict[str, Principal] = {}
        self._live: set[Principal] = set()
        self._signature: tuple | None = None
        self._checked_at = 0.0
        self.revision = 0
        self._reload(force=True)

    def _file_signature(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _reload(self, force: bool = False) -> None:
        signature = self._file_signature()
        if not force and signature == self._signature:
            return
        try:
            document = AuthFile.load(self.path)
        except AuthFileError as exc:
            if force:
                raise
            log.error("auth file not reloaded, the previous principals stay: %s", exc)
            self._signature = signature
            return
        by_token: dict[str, Principal] = {}
        by_subject: dict[str, Principal] = {}
        for entry in document.entries:
            if entry.revoked_at:
                continue
            principal = entry.principal()
            if entry.token_sha256:
                by_token[entry.token_sha256] = principal
            if entry.subject:
                by_subject[entry.subject] = principal
        self._by_token, self._by_subject = by_token, by_subject
        self._live = set(by_token.values()) | set(by_subject.values())
        self._signature = signature
        self.revision += 1
        log.info("auth file loaded: %d principal(s)", len(self._live))

    def refresh(self) -> None:
        """Re-reads the file if it changed (at most every RELOAD_CHECK_SECONDS)."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked_at < RELOAD_CHECK_SECONDS:
                return
            self._checked_at = now
            self._reload()

    def by_token(self, token: str) -> Principal | None:
        """The live principal whose token this is, or None."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        self.refresh()
        digest = hash_token(token)
        principal = self._by_token.get(digest)
        if principal is None:
            return None
        # The lookup found the entry by its digest; the comparison itself is
        # constant-time all the same.
        for stored, candidate in self._by_token.items():
            if candidate is principal and hmac.compare_digest(stored, digest):
                return principal
        return None

    def by_subject(self, subject: str) -> Principal | None:
        """The live principal identified by this certificate subject, or None."""
        self.refresh()
        return self._by_subject.get(subject)

    def still_admits(self, credential: Credential, principal: Principal) -> bool:
        """Whether `credential` still identifies exactly `principal`: false
        once its token or subject was revoked or rotated away, even when a
        principal of the same name, role and tenant came back with another."""
        self.refresh()
        return self.admits(credential, principal)

    def admits(self, credential: Credential, principal: Principal) -> bool:
        """`still_admits` as of the last reading of the file (no file access)."""
        if credential.token_sha256:
            return self._by_token.get(credential.token_sha256) == principal
        if credential.subject:
            return self._by_subject.get(credential.subject) == principal
        return False


def with_tenant(principal: Principal, tenant: str) -> Principal:
    """The principal acting in `tenant` (admins may pick one)."""
    return replace(principal, tenant=tenant)
