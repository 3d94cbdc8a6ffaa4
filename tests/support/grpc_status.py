"""Reading rich error details off an aio RPC error."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2


@dataclass
class RichError:
    """What a failed call said: code, message, ErrorInfo and BadRequest details."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    violations: dict[str, str] = field(default_factory=dict)


def rich_error(error: grpc.aio.AioRpcError) -> RichError:
    """Parses the `grpc-status-details-bin` trailer of `error`."""
    result = RichError(code=error.code(), message=error.details() or "")
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(info):
                result.reason = info.reason
                result.metadata = dict(info.metadata)
            elif detail.Unpack(bad):
                result.violations = {v.field: v.description for v in bad.field_violations}
    return result
