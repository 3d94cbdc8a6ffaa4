"""VideoJobsError: built from real google.rpc.Status messages, from sync and
asyncio gRPC errors, and shown as one line."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from videojobs.client import VideoJobsError
from videojobs.client.errors import (
    STATUS_DETAILS_KEY,
    rpc_errors_raised_as_videojobs_errors,
    status_code_from_number,
)


def pack(detail) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def invalid_header_status() -> status_pb2.Status:
    """What job-service sends for an upload with an unknown pipeline and no file name."""
    return status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT,
        message="invalid upload header",
        details=[
            pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="header.pipeline", description="unknown pipeline 'nope'"
                        ),
                        error_details_pb2.BadRequest.FieldViolation(
                            field="header.file_name", description="required"
                        ),
                    ]
                )
            ),
            pack(
                error_details_pb2.ErrorInfo(
                    reason="UNKNOWN_PIPELINE",
                    domain="videojobs.dev",
                    metadata={"pipeline": "nope", "known": "probe"},
                )
            ),
            pack(
                error_details_pb2.RetryInfo(
                    retry_delay=duration_pb2.Duration(seconds=1, nanos=5 * 10**8)
                )
            ),
        ],
    )


class FakeSyncCallError(grpc.RpcError):
    """A failed sync call as grpc raises it: an RpcError with the grpc.Call accessors."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata=()) -> None:
        self._code, self._details, self._trailing = code, details, tuple(trailing_metadata)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return self._trailing


def test_from_status_unpacks_bad_request_error_info_and_retry_info() -> None:
    error = VideoJobsError.from_status(invalid_header_status())
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "invalid upload header"
    assert error.field_violations == [
        ("header.pipeline", "unknown pipeline 'nope'"),
        ("header.file_name", "required"),
    ]
    assert error.reason == "UNKNOWN_PIPELINE"
    assert error.domain == "videojobs.dev"
    assert error.metadata == {"pipeline": "nope", "known": "probe"}
    assert error.retry_delay == pytest.approx(1.5)
    assert len(error.details) == 3


def test_str_is_one_readable_line() -> None:
    text = str(VideoJobsError.from_status(invalid_header_status()))
    assert text == (
        "INVALID_ARGUMENT: invalid upload header [UNKNOWN_PIPELINE] "
        "(header.pipeline: unknown pipeline 'nope'; header.file_name: required) "
        "(retry after 1.5s)"
    )
    assert "\n" not in text


def test_str_without_details_is_code_and_message() -> None:
    assert str(VideoJobsError(grpc.StatusCode.NOT_FOUND, "job x not found")) == (
        "NOT_FOUND: job x not found"
    )
    assert str(VideoJobsError(grpc.StatusCode.CANCELLED, "")) == "CANCELLED"


def test_detail_lines_list_every_detail() -> None:
    status = invalid_header_status()
    status.details.append(
        pack(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type="STATE", subject="job/1", description="already ended"
                    )
                ]
            )
        )
    )
    unknown = any_pb2.Any(type_url="type.googleapis.com/example.Unknown", value=b"\x01\x02")
    status.details.append(unknown)
    assert VideoJobsError.from_status(status).detail_lines() == [
        "header.pipeline: unknown pipeline 'nope'",
        "header.file_name: required",
        "reason: UNKNOWN_PIPELINE (domain videojobs.dev, known=probe, pipeline=nope)",
        "retry after: 1.5s",
        'PreconditionFailure: violations { type: "STATE" subject: "job/1" description: "already ended" }',
        "detail: type.googleapis.com/example.Unknown (2 bytes)",
    ]


def test_from_sync_rpc_error_reads_the_status_trailer() -> None:
    status = invalid_header_status()
    error = FakeSyncCallError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid upload header",
        [("other", "x"), (STATUS_DETAILS_KEY, status.SerializeToString())],
    )
    wrapped = VideoJobsError.from_rpc_error(error)
    assert wrapped.code is grpc.StatusCode.INVALID_ARGUMENT
    assert wrapped.reason == "UNKNOWN_PIPELINE"
    assert wrapped.field_violations[0] == ("header.pipeline", "unknown pipeline 'nope'")


def test_from_sync_rpc_error_with_disagreeing_trailer_keeps_call_code_and_details() -> None:
    # rpc_status.from_call refuses a trailer whose message differs from the call's.
    error = FakeSyncCallError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "something else",
        [(STATUS_DETAILS_KEY, invalid_header_status().SerializeToString())],
    )
    wrapped = VideoJobsError.from_rpc_error(error)
    assert wrapped.message == "something else"
    assert wrapped.reason == "UNKNOWN_PIPELINE"


def test_from_sync_rpc_error_without_trailer() -> None:
    wrapped = VideoJobsError.from_rpc_error(
        FakeSyncCallError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    )
    assert wrapped.code is grpc.StatusCode.UNAVAILABLE
    assert wrapped.message == "failed to connect to all addresses"
    assert (wrapped.field_violations, wrapped.reason, wrapped.retry_delay) == ([], "", None)


def test_from_aio_rpc_error_reads_the_status_trailer() -> None:
    status = invalid_header_status()
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((STATUS_DETAILS_KEY, status.SerializeToString())),
        details="invalid upload header",
    )
    wrapped = VideoJobsError.from_rpc_error(error)
    assert wrapped.code is grpc.StatusCode.INVALID_ARGUMENT
    assert wrapped.message == "invalid upload header"
    assert wrapped.metadata == {"pipeline": "nope", "known": "probe"}
    assert wrapped.retry_delay == pytest.approx(1.5)


def test_from_aio_rpc_error_with_garbage_trailer_still_has_code_and_message() -> None:
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((STATUS_DETAILS_KEY, b"\xff\xff not a status")),
        details="boom",
    )
    wrapped = VideoJobsError.from_rpc_error(error)
    assert (wrapped.code, wrapped.message, wrapped.details) == (
        grpc.StatusCode.INTERNAL,
        "boom",
        [],
    )


def test_from_rpc_error_that_is_not_a_call() -> None:
    wrapped = VideoJobsError.from_rpc_error(grpc.RpcError("channel closed"))
    assert wrapped.code is grpc.StatusCode.UNKNOWN
    assert wrapped.message == "channel closed"


def test_context_manager_wraps_rpc_errors_and_keeps_the_cause() -> None:
    original = FakeSyncCallError(grpc.StatusCode.NOT_FOUND, "no such job")
    with pytest.raises(VideoJobsError) as caught, rpc_errors_raised_as_videojobs_errors():
        raise original
    assert caught.value.code is grpc.StatusCode.NOT_FOUND
    assert caught.value.__cause__ is original


def test_context_manager_lets_other_errors_through() -> None:
    with pytest.raises(KeyError), rpc_errors_raised_as_videojobs_errors():
        raise KeyError("x")


def test_status_code_from_number() -> None:
    assert (
        status_code_from_number(code_pb2.FAILED_PRECONDITION) is grpc.StatusCode.FAILED_PRECONDITION
    )
    assert status_code_from_number(0) is grpc.StatusCode.OK
    assert status_code_from_number(999) is grpc.StatusCode.UNKNOWN
