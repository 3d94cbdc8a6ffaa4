"""The one exception type the client raises for failed calls, and how it is
built from a gRPC error or a `google.rpc.Status`.

job-service puts a `google.rpc.Status` with typed details (`BadRequest`,
`ErrorInfo`, `RetryInfo`, ...) into the `grpc-status-details-bin` trailer of
every error. `VideoJobsError` unpacks those details into plain attributes so
callers never deal with `Any` messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import grpc
from google.protobuf import any_pb2, message, message_factory, text_format
from google.protobuf import descriptor_pool as descriptor_pool_module
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

#: Trailing-metadata key under which gRPC carries a serialized google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"

#: Canonical numeric code -> grpc.StatusCode (for codes inside google.rpc.Status).
_STATUS_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def status_code_from_number(number: int) -> grpc.StatusCode:
    """Returns the `grpc.StatusCode` for a canonical code number; UNKNOWN for
    numbers gRPC does not define."""
    return _STATUS_CODES_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


class VideoJobsError(Exception):
    """A call to job-service failed.

    Attributes:
        code: The gRPC status code.
        message: The server's (or gRPC's) error message.
        field_violations: `(field, description)` pairs from `google.rpc.BadRequest`
            details, naming the request fields that were wrong.
        reason: The UPPER_SNAKE reason of the `google.rpc.ErrorInfo` detail, or "".
        domain: The domain of the `ErrorInfo` detail (`videojobs.dev`), or "".
        metadata: The `ErrorInfo` metadata (for example the job's state).
        retry_delay: Seconds the server asks to wait before retrying
            (`google.rpc.RetryInfo`), or None.
        details: Every detail message of the status, decoded where the type is
            known (undecodable ones stay `google.protobuf.Any`).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: Sequence[tuple[str, str]] = (),
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        retry_delay: float | None = None,
        details: Sequence[message.Message] = (),
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.field_violations = list(field_violations)
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.retry_delay = retry_delay
        self.details = list(details)

    @classmethod
    def from_status(
        cls, status: status_pb2.Status, *, code: grpc.StatusCode | None = None
    ) -> VideoJobsError:
        """Builds the error from a `google.rpc.Status` (from an error trailer, or
        `Job.error` / `JobFailed.error`). `code` overrides the status's own code."""
        details = [_unpack_detail(detail) for detail in status.details]
        field_violations: list[tuple[str, str]] = []
        error_info: error_details_pb2.ErrorInfo | None = None
        retry_delay: float | None = None
        for detail in details:
            if isinstance(detail, error_details_pb2.BadRequest):
                field_violations.extend((v.field, v.description) for v in detail.field_violations)
            elif isinstance(detail, error_details_pb2.ErrorInfo) and error_info is None:
                error_info = detail
            elif isinstance(detail, error_details_pb2.RetryInfo) and retry_delay is None:
                retry_delay = detail.retry_delay.ToTimedelta().total_seconds()
        return cls(
            code if code is not None else status_code_from_number(status.code),
            status.message,
            field_violations=field_violations,
            reason=error_info.reason if error_info else "",
            domain=error_info.domain if error_info else "",
            metadata=error_info.metadata if error_info else None,
            retry_delay=retry_delay,
            details=details,
        )

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> VideoJobsError:
        """Builds the error from a failed sync (`grpc.RpcError` that is a
        `grpc.Call`) or asyncio (`grpc.aio.AioRpcError`) call."""
        code_method = getattr(error, "code", None)
        if not callable(code_method):
            # Not a call (gRPC raises a few such errors, e.g. for a closed channel).
            return cls(grpc.StatusCode.UNKNOWN, str(error) or type(error).__name__)
        code = code_method() or grpc.StatusCode.UNKNOWN
        message = error.details() or ""
        status = _rich_status(error)
        if status is None:
            return cls(code, message)
        built = cls.from_status(status, code=code)
        # The gRPC status message is authoritative; the proto copy should match.
        built.message = message or built.message
        return built

    def __str__(self) -> str:
        """One readable line: `CODE: message [REASON] (field: description; ...)`."""
        text = f"{self.code.name}: {self.message}" if self.message else self.code.name
        if self.reason:
            text += f" [{self.reason}]"
        if self.field_violations:
            text += " (" + "; ".join(f"{f}: {d}" for f, d in self.field_violations) + ")"
        if self.retry_delay is not None:
            text += f" (retry after {self.retry_delay:g}s)"
        return text

    def __repr__(self) -> str:
        return f"VideoJobsError({self.code.name}, {self.message!r}, reason={self.reason!r})"

    def detail_lines(self) -> list[str]:
        """Every detail as one human-readable line each: field violations as
        `field: description`, the error reason with its domain and metadata,
        the retry delay, and any other detail type in protobuf text form."""
        lines = [f"{field}: {description}" for field, description in self.field_violations]
        if self.reason:
            extra = [f"domain {self.domain}"] if self.domain else []
            extra += [f"{key}={value}" for key, value in sorted(self.metadata.items())]
            lines.append(f"reason: {self.reason}" + (f" ({', '.join(extra)})" if extra else ""))
        if self.retry_delay is not None:
            lines.append(f"retry after: {self.retry_delay:g}s")
        lines.extend(_other_detail_lines(self.details))
        return lines


@contextmanager
def rpc_errors_raised_as_videojobs_errors() -> Iterator[None]:
    """Turns `grpc.RpcError` (sync or aio) raised inside the block into
    `VideoJobsError`, keeping the original as `__cause__`. Works around `await`
    too, since it only looks at the exception."""
    try:
        yield
    except grpc.RpcError as error:
        raise VideoJobsError.from_rpc_error(error) from error


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` carried by a failed call, or None."""
    if isinstance(error, grpc.aio.AioRpcError):
        # rpc_status.from_call needs a sync grpc.Call; an AioRpcError only has
        # its trailing metadata, so read the trailer directly.
        return _status_from_trailer(error.trailing_metadata())
    try:
        return rpc_status.from_call(error)
    except ValueError:
        # The trailer's code or message disagrees with the call's; the details
        # are still worth showing, with the call's code and message on top.
        return _status_from_trailer(error.trailing_metadata())


def _status_from_trailer(
    trailing_metadata: Iterable[tuple[str, str | bytes]] | None,
) -> status_pb2.Status | None:
    """Parses the `grpc-status-details-bin` entry of trailing metadata, if any."""
    for key, value in trailing_metadata or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except message.DecodeError:
                return None
    return None


def _unpack_detail(detail: any_pb2.Any) -> message.Message:
    """Decodes a status detail whose type is in the default descriptor pool
    (all `google.rpc` error details are, as error_details_pb2 is imported)."""
    try:
        descriptor = descriptor_pool_module.Default().FindMessageTypeByName(detail.TypeName())
    except KeyError:
        return detail
    unpacked = message_factory.GetMessageClass(descriptor)()
    return unpacked if detail.Unpack(unpacked) else detail


def _other_detail_lines(details: Iterable[message.Message]) -> list[str]:
    """Lines for the details the named attributes do not already summarize:
    BadRequest is always summarized, ErrorInfo and RetryInfo only the first
    of each (as `VideoJobsError.from_status` picks the first)."""
    lines = []
    seen_first: set[type] = set()
    for detail in details:
        if isinstance(detail, error_details_pb2.BadRequest):
            continue
        if isinstance(detail, error_details_pb2.ErrorInfo | error_details_pb2.RetryInfo):
            if type(detail) not in seen_first:
                seen_first.add(type(detail))
                continue
        if isinstance(detail, any_pb2.Any):
            lines.append(f"detail: {detail.type_url} ({len(detail.value)} bytes)")
            continue
        body = text_format.MessageToString(detail, as_one_line=True)
        lines.append(f"{detail.DESCRIPTOR.name}: {body}")
    return lines
