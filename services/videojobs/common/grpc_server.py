"""What every videojobs gRPC server serves besides its own services."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

# 4 MiB of payload per message plus room for the envelope.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024 + 64 * 1024

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Detect dead peers on idle long-lived streams (workers, followers).
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC turns SO_REUSEPORT on by default on Linux: a second server on a
    # port already in use would then start and share it with the first (calls
    # reaching either at random). Off, a taken port fails the bind.
    ("grpc.so_reuseport", 0),
]


class ListenError(OSError):
    """The service cannot listen on its address (taken, or not this host's)."""


def add_health_and_reflection(
    server: grpc.aio.Server, service_names: list[str]
) -> health.aio.HealthServicer:
    """Serves grpc.health.v1 and server reflection for `service_names`.

    Health starts as NOT_SERVING until `mark_serving` is called, once the
    server is really ready."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    enable_reflection(server, service_names)
    return servicer


async def mark_serving(servicer: health.aio.HealthServicer, service_names: list[str]) -> None:
    """Reports SERVING for the server as a whole and for each service."""
    for name in ["", *service_names]:
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def enable_reflection(server: grpc.aio.Server, service_names: list[str]) -> None:
    """Serves server reflection, so `grpcurl list` and `describe` work."""
    reflection.enable_server_reflection(
        [
            *service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )


async def mark_not_serving(servicer: health.aio.HealthServicer, service_names: list[str]) -> None:
    """Flips health to NOT_SERVING (at shutdown), so balancers stop sending work."""
    for name in ["", *service_names]:
        await servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


def bind(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None = None
) -> str:
    """Binds `address` (port 0 picks a free one), with TLS when `credentials`
    are given, and returns the address actually bound.

    Raises:
        ListenError: the port is taken (never shared: SO_REUSEPORT is off) or
            the address cannot be bound.
    """
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio's way of saying the bind failed
        port = 0
    if port == 0:
        raise ListenError(
            f"cannot listen on {address}: the port is in use (is another job-service or "
            "worker running there?) or the address is not one of this host's"
        )
    host = address.rsplit(":", 1)[0]
    return f"{host}:{port}"


def handler_parts(handler: grpc.RpcMethodHandler):
    """(behavior, factory) of a method handler: the function that serves its
    calls, and the grpc function that builds a handler of the same kind
    (unary/stream request, unary/stream response) around a new behavior.
    Interceptors that wrap calls use it."""
    if handler.unary_unary:
        return handler.unary_unary, grpc.unary_unary_rpc_method_handler
    if handler.unary_stream:
        return handler.unary_stream, grpc.unary_stream_rpc_method_handler
    if handler.stream_unary:
        return handler.stream_unary, grpc.stream_unary_rpc_method_handler
    return handler.stream_stream, grpc.stream_stream_rpc_method_handler
