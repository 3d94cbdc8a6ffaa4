"""Domain errors with the information a gRPC status needs, but no grpc import.

Application code raises these; one decorator per server (see
`videojobs.common.grpc_errors`) turns them into canonical gRPC codes with
`google.rpc.Status` details. Messages are written for the client: never a
stack trace, SQL text or host path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ERROR_DOMAIN = "videojobs.dev"


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


def invalid_argument(
    message: str, violations: list[tuple[str, str]], reason: str = "INVALID_ARGUMENT"
) -> ServiceError:
    """INVALID_ARGUMENT with BadRequest field violations."""
    return ServiceError(message, "INVALID_ARGUMENT", reason, field_violations=violations)


def not_found(message: str, reason: str, **metadata: str) -> ServiceError:
    """NOT_FOUND."""
    return ServiceError(message, "NOT_FOUND", reason, metadata=metadata)


def failed_precondition(message: str, reason: str, **metadata: str) -> ServiceError:
    """FAILED_PRECONDITION."""
    return ServiceError(message, "FAILED_PRECONDITION", reason, metadata=metadata)


def resource_exhausted(message: str, reason: str, **metadata: str) -> ServiceError:
    """RESOURCE_EXHAUSTED."""
    return ServiceError(message, "RESOURCE_EXHAUSTED", reason, metadata=metadata)


def already_exists(message: str, reason: str, **metadata: str) -> ServiceError:
    """ALREADY_EXISTS."""
    return ServiceError(message, "ALREADY_EXISTS", reason, metadata=metadata)


def unavailable(message: str, reason: str, retry_after_seconds: float = 1.0) -> ServiceError:
    """UNAVAILABLE with RetryInfo."""
    return ServiceError(message, "UNAVAILABLE", reason, retry_after_seconds=retry_after_seconds)
