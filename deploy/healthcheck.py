#!/usr/bin/env python3
"""videojobs-healthcheck: asks a gRPC server `grpc.health.v1.Health/Check` and
exits 0 when it answers SERVING.

The container image installs it as `videojobs-healthcheck`, for Docker and
Compose health checks and for Kubernetes exec probes on a server that speaks
TLS (the kubelet's built-in gRPC probe connects in plaintext only). Health
checks need no token: job-service and the workers leave grpc.health.v1 open.

Exit status: 0 SERVING; 1 any other answer, or no answer in time; 2 a TLS file
that cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videojobs-healthcheck",
        description="Exit 0 when a gRPC server reports SERVING (grpc.health.v1).",
    )
    parser.add_argument("--address", default="127.0.0.1:50051", help="HOST:PORT to ask")
    parser.add_argument(
        "--service", default="", help="service to ask about (default: the server as a whole)"
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    parser.add_argument("--tls-ca", default="", help="PEM CA: connect with TLS, trusting it")
    parser.add_argument("--tls-cert", default="", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    parser.add_argument(
        "--server-name",
        default="",
        help="name the server's certificate must carry, when it does not name --address "
        "(e.g. the Kubernetes Service name while probing 127.0.0.1)",
    )
    return parser


def _channel(args: argparse.Namespace) -> grpc.Channel:
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    if not (args.tls_ca or args.tls_cert):
        return grpc.insecure_channel(args.address, options=options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(args.tls_ca).read_bytes() if args.tls_ca else None,
        private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
        certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
    )
    return grpc.secure_channel(args.address, credentials, options=options)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        channel = _channel(args)
    except OSError as exc:
        print(f"videojobs-healthcheck: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(
                f"videojobs-healthcheck: {args.address}: {exc.code().name}: {exc.details()}",
                file=sys.stderr,
            )
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"videojobs-healthcheck: {args.address}: {status}", file=sys.stderr)
        return 1
    print(f"{args.address}: {status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
