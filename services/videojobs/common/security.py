"""Transport security and credentials, for servers and for the channels a
worker opens: TLS and mutual TLS from PEM files, bearer tokens on every call,
and the rule that keeps an unprotected server off the network.

A server without an auth file listens on loopback only; on any other address
it starts only with both an auth file and TLS, or with `--insecure`, which
prints a warning. Tokens travel in `authorization: Bearer <token>` metadata,
added by a client interceptor so they work on TLS channels and on plaintext
loopback channels alike.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

AUTHORIZATION = "authorization"


class SecurityConfigError(ValueError):
    """The TLS or credential settings cannot be used (said in words for the operator)."""


def read_pem(path: str | Path, what: str) -> bytes:
    """The bytes of a PEM file, or SecurityConfigError naming the setting."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read {what} ({path}): {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise SecurityConfigError(f"{what} ({path}) is not a PEM file")
    return data


@dataclass(frozen=True)
class ServerTls:
    """A server's certificate and key, and the CA its clients' certificates
    must come from (mutual TLS) when `client_ca` is set."""

    cert: str
    key: str
    client_ca: str = ""

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials from the PEM files."""
        pair = (read_pem(self.key, "the TLS key"), read_pem(self.cert, "the TLS certificate"))
        if self.client_ca:
            return grpc.ssl_server_credentials(
                [pair],
                root_certificates=read_pem(self.client_ca, "the client CA"),
                require_client_auth=True,
            )
        return grpc.ssl_server_credentials([pair])


def server_tls(cert: str, key: str, client_ca: str) -> ServerTls | None:
    """The server's TLS settings, None without a certificate."""
    if not cert and not key:
        if client_ca:
            raise SecurityConfigError("a client CA needs the server's own TLS certificate and key")
        return None
    if not (cert and key):
        raise SecurityConfigError("TLS needs both a certificate and its key")
    return ServerTls(cert, key, client_ca)


@dataclass(frozen=True)
class ClientSecurity:
    """How a client or worker reaches a server: a bearer token, and TLS (the
    CA that signed the server's certificate, and for mutual TLS a client
    certificate and key). Empty fields: plaintext, no token."""

    token: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""

    @property
    def tls(self) -> bool:
        """Whether channels use TLS."""
        return bool(self.ca or self.cert)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS credentials of the channel."""
        if bool(self.cert) != bool(self.key):
            raise SecurityConfigError("a client certificate needs its key (and the key its cert)")
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca, "the TLS CA") if self.ca else None,
            private_key=read_pem(self.key, "the client key") if self.key else None,
            certificate_chain=read_pem(self.cert, "the client certificate") if self.cert else None,
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call carries."""
        return ((AUTHORIZATION, f"Bearer {self.token}"),) if self.token else ()

    def sync_channel(self, address: str, options: Sequence[tuple] = ()) -> grpc.Channel:
        """A blocking channel to `address`."""
        if self.tls:
            channel = grpc.secure_channel(address, self.channel_credentials(), options=options)
        else:
            channel = grpc.insecure_channel(address, options=options)
        if self.token:
            channel = grpc.intercept_channel(channel, _SyncMetadata(self.metadata()))
        return channel

    def aio_channel(self, address: str, options: Sequence[tuple] = ()) -> grpc.aio.Channel:
        """An asyncio channel to `address`."""
        interceptors = _aio_metadata_interceptors(self.metadata()) if self.token else None
        if self.tls:
            return grpc.aio.secure_channel(
                address, self.channel_credentials(), options=options, interceptors=interceptors
            )
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


def read_token(token: str, token_file: str) -> str:
    """The token given directly, or read from `token_file` (surrounding white
    space stripped); "" for none."""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecurityConfigError(
                f"cannot read the token file ({token_file}): {exc.strerror}"
            ) from None
        if not token:
            raise SecurityConfigError(f"the token file ({token_file}) is empty")
    return token.strip()


def is_loopback(address: str) -> bool:
    """Whether a listen address (`host:port`) binds loopback interfaces only."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "::", "*"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos
    )


def check_exposure(
    address: str, *, authenticated: bool, tls: bool, insecure: bool, service: str
) -> str | None:
    """Refuses (SecurityConfigError) to expose an unprotected server beyond
    loopback; returns the warning to print when `insecure` allows it."""
    if is_loopback(address) or (authenticated and tls):
        return None
    missing = [
        name for name, present in (("an auth file", authenticated), ("TLS", tls)) if not present
    ]
    if insecure:
        return (
            f"WARNING: {service} listens on {address} without {' and '.join(missing)} "
            "(--insecure): anyone who can reach it may call it"
        )
    raise SecurityConfigError(
        f"{service} will not listen on {address} without {' and '.join(missing)}: "
        "configure VIDEOJOBS_AUTH_FILE and VIDEOJOBS_TLS_CERT/VIDEOJOBS_TLS_KEY, listen on "
        "a loopback address, or pass --insecure to accept the risk"
    )


class _SyncMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the bearer token) to every call of a blocking channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details):
        metadata = list(details.metadata or ()) + list(self._metadata)
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: list
    credentials: object
    wait_for_ready: bool | None
    compression: object


def _aio_metadata_interceptors(metadata: tuple[tuple[str, str], ...]) -> list:
    """Interceptors adding `metadata` to every call of an asyncio channel."""

    def with_metadata(details):
        merged = grpc.aio.Metadata(*(details.metadata or ()), *metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, merged, details.credentials, details.wait_for_ready
        )

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, details, request):
            return await continuation(with_metadata(details), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, details, request):
            return await continuation(with_metadata(details), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation, details, request_iterator):
            return await continuation(with_metadata(details), request_iterator)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation, details, request_iterator):
            return await continuation(with_metadata(details), request_iterator)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]
