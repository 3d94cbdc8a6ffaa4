"""Domain errors with the information a gRPC status needs, but no grpc import.

Application code raises these; one decorator per server (see
`videojobs.common.grpc_errors`) turns them into canonical gRPC codes with
`google.rpc.Status` details. Messages are written for the client: never a
stack trace, SQL text or host path.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

ERROR_DOMAIN = "videojobs.dev"
# Field violations listed in one error; the rest are counted in one more entry.
MAX_FIELD_VIOLATIONS = 20
# A violation's field path and description are cut to these lengths.
MAX_FIELD_PATH_CHARS = 160
MAX_DESCRIPTION_CHARS = 400


@dataclass
class ServiceError(Exception):
    """Base of every error a client may see. `code` is a canonical gRPC code name."""

    message: str
    code: str = "INTERNAL"
    reason: str = "INTERNAL"
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    retry_after_seconds: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bounded_violations(violations: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """At most MAX_FIELD_VIOLATIONS violations, each cut to a bounded size, so
    an error about a huge request is never huge itself."""
    kept = [
        (_cut(path, MAX_FIELD_PATH_CHARS), _cut(description, MAX_DESCRIPTION_CHARS))
        for path, description in violations[:MAX_FIELD_VIOLATIONS]
    ]
    if len(violations) > MAX_FIELD_VIOLATIONS:
        kept.append(("", f"{len(violations) - MAX_FIELD_VIOLATIONS} more violation(s) not listed"))
    return kept


def invalid_argument(
    message: str, violations: list[tuple[str, str]], reason: str = "INVALID_ARGUMENT"
) -> ServiceError:
    """INVALID_ARGUMENT with (bounded) BadRequest field violations."""
    return ServiceError(
        message, "INVALID_ARGUMENT", reason, field_violations=bounded_violations(violations)
    )


def not_found(message: str, reason: str, **metadata: str) -> ServiceError:
    """NOT_FOUND."""
    return ServiceError(message, "NOT_FOUND", reason, metadata=metadata)


def failed_precondition(message: str, reason: str, **metadata: str) -> ServiceError:
    """FAILED_PRECONDITION."""
    return ServiceError(message, "FAILED_PRECONDITION", reason, metadata=metadata)


def resource_exhausted(
    message: str, reason: str, retry_after_seconds: float | None = None, **metadata: str
) -> ServiceError:
    """RESOURCE_EXHAUSTED, with RetryInfo when waiting may help."""
    return ServiceError(
        message,
        "RESOURCE_EXHAUSTED",
        reason,
        metadata=metadata,
        retry_after_seconds=retry_after_seconds,
    )


def deadline_exceeded(message: str, reason: str, **metadata: str) -> ServiceError:
    """DEADLINE_EXCEEDED."""
    return ServiceError(message, "DEADLINE_EXCEEDED", reason, metadata=metadata)


def already_exists(message: str, reason: str, **metadata: str) -> ServiceError:
    """ALREADY_EXISTS."""
    return ServiceError(message, "ALREADY_EXISTS", reason, metadata=metadata)


def unavailable(message: str, reason: str, retry_after_seconds: float = 1.0) -> ServiceError:
    """UNAVAILABLE with RetryInfo."""
    return ServiceError(message, "UNAVAILABLE", reason, retry_after_seconds=retry_after_seconds)


# errno values of a full disk or an exceeded disk quota.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# SQLSTATE of PostgreSQL's disk_full; SQLite says "database or disk is full".
_PG_DISK_FULL = "53100"
_SQLITE_FULL_TEXT = "database or disk is full"
# How long a client is told to wait before retrying after a full disk.
FULL_RETRY_SECONDS = 30.0


def _causes(exc: BaseException):
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def resource_error_for(exc: BaseException) -> ServiceError | None:
    """The retryable UNAVAILABLE error for a full disk or a full database
    anywhere in `exc`'s chain (OSError ENOSPC/EDQUOT, SQLite's SQLITE_FULL,
    PostgreSQL's disk_full) or for storage that cannot be reached (an object
    store's connection failures), or None for any other exception.

    Recognised by errno, SQLSTATE and SQLite's fixed message, so this module
    needs neither the storage package nor a database driver.
    """
    for cause in _causes(exc):
        if getattr(cause, "storage_unavailable", False):
            return unavailable(
                "the server cannot reach its storage; retry later", "STORAGE_UNAVAILABLE", 5.0
            )
        if getattr(cause, "storage_full", False) or (
            isinstance(cause, OSError) and cause.errno in _FULL_ERRNOS
        ):
            return unavailable(
                "the server's storage is full; retry later", "STORAGE_FULL", FULL_RETRY_SECONDS
            )
        if getattr(cause, "sqlstate", None) == _PG_DISK_FULL or _SQLITE_FULL_TEXT in str(cause):
            return unavailable(
                "the server's database is full; retry later", "DATABASE_FULL", FULL_RETRY_SECONDS
            )
    return None
