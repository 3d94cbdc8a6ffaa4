"""Prometheus metrics shared by both services: every RPC counted and timed
by method and status code (one server interceptor), and the HTTP endpoint
that serves them (`VIDEOJOBS_METRICS_LISTEN`, off unless set).

Metrics live in prometheus-client's default registry, created once per
process at import; each service adds its own (see `jobservice/metrics.py`
and `worker/metrics.py`). README lists every metric.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from prometheus_client import Counter, Histogram, start_http_server

from videojobs.common.grpc_server import ListenError, handler_parts
from videojobs.common.logs import bind_log_fields

log = logging.getLogger(__name__)

RPC_REQUESTS = Counter(
    "videojobs_rpc_requests",
    "RPCs handled, by service, method and final status code.",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "videojobs_rpc_duration_seconds",
    "Time from an RPC's start to its end (streams: the whole stream), by service, method "
    "and final status code.",
    ["service", "method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


def _split(method: str) -> tuple[str, str]:
    """`/videojobs.v1.JobService/GetStatus` -> (`videojobs.v1.JobService`, `GetStatus`)."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _code_name(context, failure: BaseException | None) -> str:
    if isinstance(failure, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if code is None:
        return grpc.StatusCode.UNKNOWN.name if failure is not None else grpc.StatusCode.OK.name
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode.UNKNOWN.name


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC (`videojobs_rpc_requests_total`,
    `videojobs_rpc_duration_seconds`), and gives each a request id that its
    log lines carry (`request_id`: the caller's `x-request-id` metadata, or
    a fresh one). Placed first, so calls the auth interceptor refuses are
    counted too (UNAUTHENTICATED, PERMISSION_DENIED)."""

    def __init__(self) -> None:
        # method -> (the handler it wrapped, the wrapper): built once per
        # method, not per call.
        self._wrapped: dict[str, tuple[object, object]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        full_name = handler_call_details.method
        cached = self._wrapped.get(full_name)
        if cached is not None and cached[0] is handler:
            return cached[1]
        service, method = _split(full_name)
        wrapped = _timed(handler, service, method)
        self._wrapped[full_name] = (handler, wrapped)
        return wrapped


def _timed(handler, service: str, method: str):
    behavior, factory = handler_parts(handler)
    # The metric children of this method, by status code name.
    children: dict[str, tuple] = {}

    def record(started: float, context, failure: BaseException | None) -> None:
        code = _code_name(context, failure)
        pair = children.get(code)
        if pair is None:
            pair = children[code] = (
                RPC_REQUESTS.labels(service, method, code),
                RPC_DURATION.labels(service, method, code),
            )
        pair[0].inc()
        pair[1].observe(time.perf_counter() - started)

    def name_the_call(context) -> None:
        bind_log_fields(request_id=_request_id(context), rpc=method)

    if inspect.isasyncgenfunction(behavior):

        async def streaming(request, context):
            started, failure = time.perf_counter(), None
            name_the_call(context)
            try:
                async for item in behavior(request, context):
                    yield item
            except BaseException as error:
                failure = error
                raise
            finally:
                record(started, context, failure)

        wrapped = streaming
    else:

        async def unary(request, context):
            started, failure = time.perf_counter(), None
            name_the_call(context)
            try:
                return await behavior(request, context)
            except BaseException as error:
                failure = error
                raise
            finally:
                record(started, context, failure)

        wrapped = unary
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _request_id(context) -> str:
    """The caller's `x-request-id` when it is a short plain token, else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex[:16]


@dataclass
class MetricsEndpoint:
    """The HTTP server of `/metrics` (a thread of its own)."""

    address: str
    stop: Callable[[], None]


def serve_metrics(listen: str) -> MetricsEndpoint:
    """Serves the default registry over HTTP on `listen` (`HOST:PORT`, port 0
    picks one).

    Raises:
        ListenError: the address cannot be bound (taken, malformed, or not this host's).
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        server, thread = start_http_server(int(port), addr=host)
    except (OSError, ValueError) as error:
        raise ListenError(f"cannot serve metrics on {listen}: {error}") from error
    bound = f"{host}:{server.server_port}"
    log.info("metrics on http://%s/metrics", bound)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return MetricsEndpoint(bound, stop)
