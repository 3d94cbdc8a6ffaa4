"""Maps ServiceError (and anything unexpected) to gRPC statuses with rich details."""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import Callable

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from videojobs.common.aio import run_to_completion
from videojobs.common.errors import ERROR_DOMAIN, ServiceError, resource_error_for
from videojobs.common.failures import FailureLogs

log = logging.getLogger(__name__)
# Full disks and databases fail every call the same way: logged once with a
# count, not once per call.
_resource_failures = FailureLogs(log)


def to_status_proto(error: ServiceError) -> status_pb2.Status:
    """The google.rpc.Status for `error`: code, message, ErrorInfo, BadRequest, RetryInfo."""
    status = status_pb2.Status(code=code_pb2.Code.Value(error.code), message=error.message)
    details = [
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=dict(error.metadata)
        )
    ]
    if error.field_violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in error.field_violations
                ]
            )
        )
    if error.retry_after_seconds is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_seconds * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


def _unexpected(exc: BaseException, handler_name: str) -> ServiceError:
    """The status for an exception no handler turned into a ServiceError: a
    request message protobuf cannot parse (nested past its recursion limit) is
    INVALID_ARGUMENT, a full disk or database a retryable UNAVAILABLE,
    anything else INTERNAL."""
    if isinstance(exc, DecodeError):
        return ServiceError(
            "a request message could not be parsed (malformed, or nested too deeply)",
            "INVALID_ARGUMENT",
            "MALFORMED_REQUEST",
            field_violations=[("request", "protobuf could not parse this message")],
        )
    resource = resource_error_for(exc)
    if resource is not None:
        _resource_failures.failed(f"{handler_name} ({resource.reason})", exc)
        return resource
    return _internal(exc)


def _internal(exc: BaseException) -> ServiceError:
    incident = uuid.uuid4().hex[:12]
    log.error("unexpected error (incident %s)", incident, exc_info=exc)
    return ServiceError(
        f"internal error (incident {incident}; the server log has the details)",
        "INTERNAL",
        "INTERNAL",
        metadata={"incident": incident},
    )


async def abort_with(context: grpc.aio.ServicerContext, error: ServiceError) -> None:
    """Ends the RPC with `error` as a rich status."""
    await context.abort_with_status(rpc_status.to_status(to_status_proto(error)))


def maps_service_errors(handler: Callable) -> Callable:
    """Decorator for grpc.aio servicer methods (unary or streaming): ServiceError
    becomes its status with details; a full disk or database becomes UNAVAILABLE
    with RetryInfo (logged once with a count); any other exception becomes
    INTERNAL with an incident id (logged with its traceback, never sent)."""

    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream_wrapper(self, request, context):
            try:
                async for item in handler(self, request, context):
                    yield item
            except ServiceError as exc:
                await abort_with(context, exc)
            except (grpc.aio.AbortError, GeneratorExit):
                raise
            except Exception as exc:  # noqa: BLE001 - last line of defence, logged
                await abort_with(context, _unexpected(exc, handler.__name__))

        return stream_wrapper

    @functools.wraps(handler)
    async def unary_wrapper(self, request, context):
        try:
            if hasattr(request, "__aiter__"):  # a client stream: it ends when the call does
                return await handler(self, request, context)
            # One request message: the handler finishes even when the client
            # cancels meanwhile, so a cancellation never cuts a transaction
            # in half (see run_to_completion).
            return await run_to_completion(handler(self, request, context))
        except ServiceError as exc:
            await abort_with(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - last line of defence, logged
            await abort_with(context, _unexpected(exc, handler.__name__))

    return unary_wrapper
