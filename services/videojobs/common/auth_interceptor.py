"""The one place that decides who may call what, on every videojobs server.

Before any handler runs, the interceptor finds the caller (a bearer token in
`authorization` metadata, or a client certificate's subject under mutual
TLS) and checks the method against the service's policy (method -> roles).
No credential, or an unknown one: UNAUTHENTICATED. A known principal whose
role may not call the method: PERMISSION_DENIED. Both carry an ErrorInfo.
Health checks and reflection stay open. The principal is then available to
the handler through `current_principal()`; handlers never re-check roles.

A streaming call is watched while it runs: when the credential it was
admitted with is revoked or rotated (or now names another principal), the call ends with UNAUTHENTICATED within about a
second, however long it would otherwise have lasted.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Mapping

import grpc

from videojobs.common.auth import (
    LOCAL_PRINCIPAL,
    AuthRegistry,
    Credential,
    Principal,
    Role,
    acting_as,
    hash_token,
)
from videojobs.common.errors import ServiceError
from videojobs.common.grpc_errors import abort_with
from videojobs.common.grpc_server import handler_parts

log = logging.getLogger(__name__)

OPEN_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
AUTHORIZATION = "authorization"
# How often a streaming call checks that its principal is still live.
REVOCATION_CHECK_SECONDS = 1.0

Policy = Mapping[str, frozenset[Role]]


def unauthenticated(message: str, reason: str = "UNAUTHENTICATED") -> ServiceError:
    """UNAUTHENTICATED with an ErrorInfo."""
    return ServiceError(message, "UNAUTHENTICATED", reason)


def bearer_token(metadata) -> str | None:
    """The token of an `authorization: Bearer <token>` entry, or None."""
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def certificate_subjects(context) -> list[str]:
    """The peer certificate's subject as the auth file may name it: the full
    subject and `CN=<common name>` (empty without mutual TLS)."""
    try:
        auth = context.auth_context() or {}
    except Exception:  # noqa: BLE001 - no TLS: no auth context
        return []
    subjects = [value.decode("utf-8", "replace") for value in auth.get("x509_subject", [])]
    subjects += [
        "CN=" + value.decode("utf-8", "replace") for value in auth.get("x509_common_name", [])
    ]
    return subjects


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates and authorises every call (see the module docstring).

    `registry` None means no auth file: the server listens on loopback only
    and every caller is LOCAL_PRINCIPAL (an administrator of the default
    tenant), which keeps `make run` free of set-up.
    """

    def __init__(self, registry: AuthRegistry | None, policy: Policy) -> None:
        self._registry = registry
        self._policy = dict(policy)
        self._watcher = _RevocationWatcher(registry) if registry is not None else None
        # method -> (the handler it wrapped, the wrapper): built once per
        # method, not per call (the check itself runs on every call).
        self._wrapped: dict[str, tuple[object, object]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_SERVICE_PREFIXES):
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        allowed = self._policy.get(method, frozenset())
        wrapped = _wrap(handler, lambda context: self._admit(context, method, allowed), self)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _admit(
        self, context, method: str, allowed: frozenset[Role]
    ) -> tuple[Principal, Credential]:
        """The caller's principal and the credential that proved it, or a
        ServiceError saying why not."""
        credential = Credential()
        if self._registry is None:
            principal = LOCAL_PRINCIPAL
        else:
            principal = None
            token = bearer_token(context.invocation_metadata())
            if token is not None:
                principal = self._registry.by_token(token)
                if principal is None:
                    raise unauthenticated("the token is unknown or was revoked", "TOKEN_UNKNOWN")
                credential = Credential(token_sha256=hash_token(token))
            else:
                for subject in certificate_subjects(context):
                    principal = self._registry.by_subject(subject)
                    if principal is not None:
                        credential = Credential(subject=subject)
                        break
            if principal is None:
                raise unauthenticated(
                    "this call needs credentials: 'authorization: Bearer <token>' metadata, "
                    "or a client certificate the server knows",
                    "CREDENTIALS_MISSING",
                )
        if principal.role not in allowed:
            raise ServiceError(
                f"the {principal.role.value} role may not call {method.rsplit('/', 1)[-1]}",
                "PERMISSION_DENIED",
                "ROLE_NOT_ALLOWED",
                metadata={"role": principal.role.value, "method": method},
            )
        return principal, credential


def _wrap(handler, admit, interceptor: AuthInterceptor):
    """A handler of the same kind that admits the caller first."""
    behavior, factory = handler_parts(handler)

    if inspect.isasyncgenfunction(behavior):

        async def streaming(request, context):
            try:
                principal, credential = admit(context)
            except ServiceError as refusal:
                await abort_with(context, refusal)
                return
            watch = _RevocationWatch(interceptor, principal, credential)
            with acting_as(principal), watch:
                try:
                    async for response in behavior(request, context):
                        yield response
                except asyncio.CancelledError:
                    if watch.revoked:
                        asyncio.current_task().uncancel()
                        await abort_with(context, watch.error())
                    raise

        wrapped = streaming
    else:

        async def unary(request, context):
            try:
                principal, credential = admit(context)
            except ServiceError as refusal:
                await abort_with(context, refusal)
                return None
            streaming_request = handler.stream_unary is not None
            with acting_as(principal):
                if not streaming_request:
                    return await behavior(request, context)
                with _RevocationWatch(interceptor, principal, credential) as watch:
                    try:
                        return await behavior(request, context)
                    except asyncio.CancelledError:
                        if watch.revoked:
                            asyncio.current_task().uncancel()
                            await abort_with(context, watch.error())
                        raise

        wrapped = unary
    return factory(
        wrapped,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _RevocationWatch:
    """Cancels the current task when the credential it was admitted with no
    longer identifies its principal (checked by the interceptor's one
    `_RevocationWatcher`, with every other open call)."""

    def __init__(
        self, interceptor: AuthInterceptor, principal: Principal, credential: Credential
    ) -> None:
        self._watcher = interceptor._watcher
        self.principal = principal
        self.credential = credential
        self.call: asyncio.Task | None = None
        self.revoked = False

    def __enter__(self) -> _RevocationWatch:
        if self._watcher is not None:
            self.call = asyncio.current_task()
            self._watcher.add(self)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._watcher is not None:
            self._watcher.discard(self)

    def end(self) -> None:
        """The credential is gone: ends the call."""
        log.info("credentials of %s were revoked: ending its call", self.principal.name)
        self.revoked = True
        if self.call is not None:
            self.call.cancel()

    def error(self) -> ServiceError:
        """What the call ends with."""
        return unauthenticated("the credentials of this call were revoked", "TOKEN_REVOKED")


class _RevocationWatcher:
    """Checks every open streaming call's credential each
    REVOCATION_CHECK_SECONDS, all at once: one task and one thread hand-off
    (the auth file's re-read) per interval however many calls are open, and
    none while no call is."""

    def __init__(self, registry: AuthRegistry) -> None:
        self._registry = registry
        self._watches: set[_RevocationWatch] = set()
        self._task: asyncio.Task | None = None

    def add(self, watch: _RevocationWatch) -> None:
        """Watches `watch`'s call until `discard`."""
        self._watches.add(watch)
        if self._task is None or self._task.done():
            # A context of its own: not the log fields of the call that started it.
            self._task = asyncio.get_running_loop().create_task(
                self._run(), context=contextvars.Context()
            )

    def discard(self, watch: _RevocationWatch) -> None:
        """Stops watching `watch`'s call (it ended); the last one stops the task."""
        self._watches.discard(watch)
        if not self._watches and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while self._watches:
            await asyncio.sleep(REVOCATION_CHECK_SECONDS)
            try:
                await asyncio.to_thread(self._registry.refresh)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.warning("could not re-read the auth file", exc_info=True)
                continue
            for watch in list(self._watches):
                if not self._registry.admits(watch.credential, watch.principal):
                    self._watches.discard(watch)  # its __exit__ finds it gone
                    watch.end()
