"""How the client proves who it is and protects the connection: a bearer
token sent with every call, and TLS (or mutual TLS) from PEM files.

A job-service with an auth file wants `authorization: Bearer <token>`
metadata on every call, or, under mutual TLS, a client certificate whose
subject its auth file names. The token is attached to each call by the stubs
the client makes (`with_call_metadata`), so it travels on TLS channels and on
plaintext loopback channels alike, and on every kind of call: unary, server
and client streams, BlobService reads and resumable writes.

Without a `token` argument the client reads `VIDEOJOBS_TOKEN` from the
environment; `token=""` means no token, whatever the environment says.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

#: Environment variable holding the bearer token when none is passed.
TOKEN_ENV_VAR = "VIDEOJOBS_TOKEN"

#: The metadata key job-service reads the bearer token from.
AUTHORIZATION_KEY = "authorization"

# A token is sent as a header value: visible ASCII only, and not absurdly long
# (job-service refuses tokens over 256 characters anyway).
_MAX_TOKEN_CHARS = 4096

Metadata = tuple[tuple[str, str], ...]
StubT = TypeVar("StubT")


class CredentialsError(ValueError):
    """A token or TLS file cannot be used; the message names the file or
    setting (never a token's value)."""


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in the file at `path`, surrounding white space removed.

    Raises:
        CredentialsError: the file cannot be read, is empty, or holds
            characters a header cannot carry.
    """
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise CredentialsError(f"cannot read the token file {path}: {reason}") from None
    if not token:
        raise CredentialsError(f"the token file {path} is empty")
    return check_token(token, f"the token in {path}")


def check_token(token: str, what: str = "the token") -> str:
    """`token` without surrounding white space, if a header can carry it.

    Raises:
        CredentialsError: empty, too long, or not visible ASCII.
    """
    token = token.strip()
    if not token:
        raise CredentialsError(f"{what} is empty")
    if len(token) > _MAX_TOKEN_CHARS:
        raise CredentialsError(f"{what} is longer than {_MAX_TOKEN_CHARS} characters")
    if not all("!" <= char <= "~" for char in token):
        raise CredentialsError(f"{what} holds characters other than visible ASCII")
    return token


def read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of a PEM file.

    Raises:
        CredentialsError: the file cannot be read or is not PEM.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise CredentialsError(f"cannot read {what} {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise CredentialsError(f"{what} {path} is not a PEM file")
    return data


def tls_credentials(
    ca: str | os.PathLike[str] | None = None,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files: `ca`, the CA that signed the
    server's certificate (default: the system's trusted roots), and for
    mutual TLS the client's certificate `cert` and its private `key`.

    Raises:
        CredentialsError: a file cannot be read, or a certificate comes
            without its key (or a key without its certificate).
    """
    if bool(cert) != bool(key):
        raise CredentialsError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "the TLS CA") if ca else None,
        private_key=read_pem(key, "the client key") if key else None,
        certificate_chain=read_pem(cert, "the client certificate") if cert else None,
    )


@dataclass(frozen=True)
class ClientCredentials:
    """What a client's channel and calls carry: the bearer token (or None)
    and the TLS credentials of the channel (None: plaintext)."""

    token: str | None = None
    channel_credentials: grpc.ChannelCredentials | None = None

    @classmethod
    def resolve(
        cls,
        *,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        channel_given: bool = False,
    ) -> ClientCredentials:
        """The credentials the client's keyword arguments describe.

        `token` None reads `VIDEOJOBS_TOKEN` (unset or empty: no token);
        `token=""` sends none. TLS comes from `credentials`, or is built from
        the PEM files `tls_ca`, `tls_cert`, `tls_key`; both at once is an
        error. With `channel_given` (the caller made the channel) only an
        explicit `token` applies: the environment is not read, and TLS
        settings are refused because the caller's channel is used as it is.

        Raises:
            CredentialsError: unreadable files, a token a header cannot carry,
                or settings that contradict each other.
        """
        tls_files = any((tls_ca, tls_cert, tls_key))
        if credentials is not None and tls_files:
            raise CredentialsError("pass either credentials or tls_ca/tls_cert/tls_key, not both")
        if channel_given and (credentials is not None or tls_files):
            raise CredentialsError(
                "a channel passed in is used as it is: make it with the TLS credentials "
                "instead of passing credentials or tls_* files"
            )
        if token is None and not channel_given:
            token = os.environ.get(TOKEN_ENV_VAR, "").strip() or None
            what = f"${TOKEN_ENV_VAR}"
        else:
            what = "the token"
        if token is not None and token != "":
            token = check_token(token, what)
        if tls_files:
            credentials = tls_credentials(tls_ca, tls_cert, tls_key)
        return cls(token or None, credentials)

    @property
    def tls(self) -> bool:
        """Whether the client's own channels use TLS."""
        return self.channel_credentials is not None

    def metadata(self) -> Metadata:
        """The metadata every call carries: the bearer token, if any."""
        return bearer_metadata(self.token) if self.token else ()

    def sync_channel(self, address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking channel to `address`, TLS if configured."""
        if self.channel_credentials is not None:
            return grpc.secure_channel(address, self.channel_credentials, options=options)
        return grpc.insecure_channel(address, options=options)

    def aio_channel(
        self, address: str, options: Sequence[tuple[str, Any]] = ()
    ) -> grpc.aio.Channel:
        """An asyncio channel to `address`, TLS if configured (make it inside
        the event loop that will use it)."""
        if self.channel_credentials is not None:
            return grpc.aio.secure_channel(address, self.channel_credentials, options=options)
        return grpc.aio.insecure_channel(address, options=options)

    def stub(self, stub_class: type[StubT], channel: Any) -> StubT:
        """A `stub_class` stub on `channel` whose every call carries `metadata()`."""
        return with_call_metadata(stub_class(channel), self.metadata())


def bearer_metadata(token: str) -> Metadata:
    """`authorization: Bearer <token>`, as call metadata."""
    return ((AUTHORIZATION_KEY, f"Bearer {token}"),)


def with_call_metadata(stub: StubT, metadata: Metadata) -> StubT:
    """`stub` with `metadata` added to every call made through it (any kind
    of call, sync or asyncio, including `.future()` and `.with_call()`).
    Metadata a caller passes to one call comes first. No metadata: `stub`
    as it was."""
    if not metadata:
        return stub
    for name, method in list(vars(stub).items()):
        if callable(method):
            setattr(stub, name, _MethodWithMetadata(method, metadata))
    return stub


class _MethodWithMetadata:
    """A stub method (a gRPC multi-callable) that adds fixed metadata."""

    def __init__(self, method: Any, metadata: Metadata) -> None:
        self._method = method
        self._metadata = metadata

    def _merged(self, metadata: Any) -> Metadata:
        return tuple(metadata or ()) + self._metadata

    def __call__(self, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        return self._method(*args, metadata=self._merged(metadata), **kwargs)

    def future(self, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        return self._method.future(*args, metadata=self._merged(metadata), **kwargs)

    def with_call(self, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        return self._method.with_call(*args, metadata=self._merged(metadata), **kwargs)
