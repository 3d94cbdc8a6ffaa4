"""Support for property-based fuzzing of job-service (tests/security/test_fuzz.py).

A real job-service (grpc.aio, SQLite, a temp storage root) runs on an event
loop in a background thread for the whole of one test function, so hypothesis
drives many examples against one live server from synchronous test code:
coroutines (grpc.aio calls) go to the server's loop through `FuzzServer.run`;
calls whose client streams (SubmitVideo, Connect) use the synchronous API
from the test's thread (see `call_client_stream` for why). Each call is
recorded as an `Outcome`: everything a client can see (status code, message,
metadata, the google.rpc.Status trailer, every response message).
`check_outcome` holds the properties every call must keep, whatever it was
sent:

1. it ends OK or with a code the .proto documents for that RPC, never
   INTERNAL or UNKNOWN; an error carries google.rpc.Status details (an
   ErrorInfo always, BadRequest violations for INVALID_ARGUMENT, RetryInfo
   for UNAVAILABLE); every response message can be parsed by a client;
2. nothing the client sees holds a host path, a Python traceback or SQL text
   (markers the request itself carried, and which the server may echo, are
   not counted);
3. the error details stay small.

The server runs in this process, so its log is watched too: an "unexpected
error (incident ...)" or a worker stream broken by a server-side exception
names the exception behind a failure, and each distinct server exception
fails as its own exception class (`ServerMisbehaviour` subclasses), so
hypothesis reports (and shrinks) each bug separately.

`FuzzServer.check_quiescent` checks the server between and after examples:
health SERVING, a real small upload still succeeds, nothing new outside the
storage root and database, every stored file named by a valid StorageKey in
the documented layout, no temporary upload file left behind.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from videojobs.jobservice.server import SERVICE_NAMES, JobServiceApp, build_job_service
from videojobs.jobservice.settings import JobServiceSettings
from videojobs.storage.keys import is_valid_key
from videojobs.v1 import dispatch_service_pb2_grpc, job_pb2, job_service_pb2_grpc
from videojobs.v1 import job_service_pb2 as js

from support.uploads import chunks, header
from support.videos import write_sample_video

T = TypeVar("T")
Code = grpc.StatusCode

# -- the contract ---------------------------------------------------------------

# Status codes each RPC's comment in proto/videojobs/v1/*.proto documents.
# CancelJob's comment lists NOT_FOUND and FAILED_PRECONDITION only, but
# CancelJobRequest documents bounds on `reason`, GetStatus documents
# INVALID_ARGUMENT for a malformed job_id, and JobService's own comment says
# invalid input is refused with BadRequest field violations: INVALID_ARGUMENT
# is accepted for it (and must then name a field, as for every RPC).
DOCUMENTED_CODES: dict[str, frozenset[Code]] = {
    "SubmitVideo": frozenset(
        {
            Code.OK,
            Code.INVALID_ARGUMENT,
            Code.DEADLINE_EXCEEDED,
            Code.RESOURCE_EXHAUSTED,
            Code.ALREADY_EXISTS,
            Code.UNAVAILABLE,
        }
    ),
    "GetStatus": frozenset({Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND}),
    "StreamResults": frozenset({Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND}),
    "ListJobs": frozenset({Code.OK, Code.INVALID_ARGUMENT}),
    "GetStats": frozenset({Code.OK, Code.INVALID_ARGUMENT}),
    "CancelJob": frozenset(
        {Code.OK, Code.NOT_FOUND, Code.FAILED_PRECONDITION, Code.INVALID_ARGUMENT}
    ),
    "Connect": frozenset({Code.OK, Code.INVALID_ARGUMENT, Code.UNAVAILABLE}),
}
# Codes a call may end with because the test itself ended it (its own
# deadline, or a cancel once it had read what it wanted).
CLIENT_ENDED_CODES = frozenset({Code.CANCELLED, Code.DEADLINE_EXCEEDED})

ERROR_DOMAIN = "videojobs.dev"
REASON = re.compile(r"[A-Z][A-Z0-9_]*")
DETAILS_TRAILER = "grpc-status-details-bin"
MAX_DETAILS_BYTES = 16 * 1024
# What must never reach a client (design brief section 5, README "Errors").
LEAK_MARKERS = (
    "/tmp/",
    "/root/",
    "/work/",
    "Traceback",
    'File "',
    "SELECT ",
    "INSERT ",
    "sqlite3.",
    "sqlalchemy.",
    "aiosqlite",
)
# A stored file's key, by the layout in the README ("Storage keys").
STORED_KEY_LAYOUT = re.compile(
    r"jobs/[0-9a-f]{32}/(?:input/source\.[a-z0-9]+|attempts/[1-9][0-9]*/.+)"
)
PARTIAL_DIR = ".partial"

# Generous: these bound hangs on a loaded 2-core machine, they measure nothing.
CALL_TIMEOUT = 30.0
RUN_TIMEOUT = 60.0


# -- failures -------------------------------------------------------------------


class ServerMisbehaviour(AssertionError):
    """Base of the failures that describe something the server did wrong.
    Subclasses are made per kind of misbehaviour (`server_bug`)."""


_BUG_CLASSES: dict[str, type[ServerMisbehaviour]] = {}


def server_bug(kind: str, message: str) -> ServerMisbehaviour:
    """A failure whose class is unique to `kind` (for example the server-side
    exception behind an INTERNAL): hypothesis tells failures apart by class and
    place, so each distinct bug is shrunk and reported on its own."""
    cls = _BUG_CLASSES.get(kind)
    if cls is None:
        name = "Server_" + re.sub(r"\W+", "_", kind).strip("_")[:80]
        cls = _BUG_CLASSES[kind] = type(name, (ServerMisbehaviour,), {"__module__": __name__})
    return cls(message)


# -- the server's log -------------------------------------------------------------


@dataclass(frozen=True)
class LoggedProblem:
    """A log record of the server that signals an unexpected failure."""

    logger: str
    level: str
    message: str
    exception: str  # "TypeName: first line" or ""
    where: str  # innermost frame in the videojobs code, "file:line in function"

    @property
    def kind(self) -> str:
        """What tells this problem apart from others of its logger."""
        return f"{self.exception.split(':', 1)[0] or self.message[:40]}@{self.where}"

    def __str__(self) -> str:
        text = f"[{self.level} {self.logger}] {self.message}"
        if self.exception:
            text += f"\n    server-side exception: {self.exception}"
        if self.where:
            text += f"\n    raised at {self.where}"
        return text


def _describe_exception(exc: BaseException | None) -> tuple[str, str]:
    if exc is None:
        return "", ""
    first = str(exc).splitlines()[0] if str(exc) else ""
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if "/videojobs/" in filename:
            where = (
                f"{filename.split('/videojobs/', 1)[1]}:{tb.tb_lineno} "
                f"in {tb.tb_frame.f_code.co_name}"
            )
        tb = tb.tb_next
    return f"{type(exc).__name__}: {first[:300]}", where


def _exception_in_message(record: logging.LogRecord) -> BaseException | None:
    for arg in record.args if isinstance(record.args, tuple) else ():
        if isinstance(arg, BaseException):
            return arg
    return None


class ServerLogWatch(logging.Handler):
    """Collects the server's log records that mean something went wrong
    unexpectedly: ERROR and above from videojobs, asyncio and grpc, and a
    worker stream that a server-side exception broke (logged at INFO by the
    dispatch servicer, and otherwise invisible: the worker sees OK)."""

    WATCHED = ("videojobs", "asyncio", "grpc")
    # The dispatch servicer logs a reader task that raised something other
    # than a ServiceError at INFO; that is a swallowed server exception.
    BROKEN_STREAM = "stream of worker %s broke: %r"
    _DISPATCH_LOGGER = "videojobs.jobservice.api.dispatch_servicer"

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.problems: list[LoggedProblem] = []
        self._lock = threading.Lock()
        self._saved_level = logging.NOTSET

    def install(self) -> None:
        """Starts watching."""
        for name in self.WATCHED:
            logging.getLogger(name).addHandler(self)
        dispatch = logging.getLogger(self._DISPATCH_LOGGER)
        self._saved_level = dispatch.level
        dispatch.setLevel(logging.INFO)

    def uninstall(self) -> None:
        """Stops watching."""
        for name in self.WATCHED:
            logging.getLogger(name).removeHandler(self)
        logging.getLogger(self._DISPATCH_LOGGER).setLevel(self._saved_level)

    def emit(self, record: logging.LogRecord) -> None:
        broken_stream = record.msg == self.BROKEN_STREAM
        if record.levelno < logging.ERROR and not broken_stream:
            return
        if broken_stream:
            exception, where = _describe_exception(_exception_in_message(record))
        else:
            exception, where = _describe_exception(record.exc_info[1] if record.exc_info else None)
        problem = LoggedProblem(
            record.name, record.levelname, record.getMessage()[:500], exception, where
        )
        with self._lock:
            self.problems.append(problem)

    def mark(self) -> int:
        """A position to pass to `since`."""
        with self._lock:
            return len(self.problems)

    def since(self, mark: int) -> list[LoggedProblem]:
        """Problems logged after `mark`."""
        with self._lock:
            return list(self.problems[mark:])


# -- what a call showed the client ---------------------------------------------------


@dataclass
class Outcome:
    """Everything a client saw of one call."""

    rpc: str
    code: Code
    message: str = ""
    initial_metadata: tuple = ()
    trailing_metadata: tuple = ()
    responses: list[Message] = field(default_factory=list)
    # The test ended the call itself (its own deadline or cancel), by design.
    ended_by_client: bool = False
    # Responses the client could not parse (grpc.aio logs the error and hands
    # back None): the server sent something a protobuf client cannot read.
    unreadable: int = 0

    @property
    def details_bytes(self) -> bytes | None:
        """The raw grpc-status-details-bin trailer, if any."""
        for key, value in self.trailing_metadata:
            if key == DETAILS_TRAILER:
                return value if isinstance(value, bytes) else value.encode()
        return None

    def status(self) -> status_pb2.Status | None:
        """The decoded google.rpc.Status trailer, if any."""
        raw = self.details_bytes
        return None if raw is None else status_pb2.Status.FromString(raw)

    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        """The ErrorInfo detail, if any."""
        return _detail(self.status(), error_details_pb2.ErrorInfo)

    def bad_request(self) -> error_details_pb2.BadRequest | None:
        """The BadRequest detail, if any."""
        return _detail(self.status(), error_details_pb2.BadRequest)

    @property
    def label(self) -> str:
        """`code` and ErrorInfo reason, e.g. "INVALID_ARGUMENT NOT_A_VIDEO"
        (for hypothesis.event: the statistics show how often each came up)."""
        if self.ended_by_client:
            return f"{self.code.name} (ended by the test)"
        info = self.error_info()
        return f"{self.code.name} {info.reason}" if info is not None else self.code.name

    def summary(self) -> str:
        """One paragraph for a failure message."""
        lines = [f"{self.rpc} ended {self.code.name}: {self.message[:300]!r}"]
        info = self.error_info()
        if info is not None:
            lines.append(f"  ErrorInfo reason={info.reason} metadata={dict(info.metadata)}")
        bad = self.bad_request()
        if bad is not None:
            for violation in bad.field_violations[:5]:
                lines.append(f"  violation {violation.field}: {violation.description[:200]!r}")
        return "\n".join(lines)


def _detail(status: status_pb2.Status | None, cls: type[T]) -> T | None:
    if status is None:
        return None
    for packed in status.details:
        candidate = cls()
        if packed.Is(candidate.DESCRIPTOR):
            packed.Unpack(candidate)
            return candidate
    return None


def _failed(rpc: str, error: grpc.aio.AioRpcError, responses: list, by_client: bool) -> Outcome:
    return Outcome(
        rpc,
        error.code(),
        error.details() or "",
        tuple(error.initial_metadata() or ()),
        tuple(error.trailing_metadata() or ()),
        responses,
        ended_by_client=by_client,
    )


async def call_unary(rpc: str, method, request, timeout: float = CALL_TIMEOUT) -> Outcome:
    """A unary call over grpc.aio."""
    call = method(request, timeout=timeout)
    try:
        response = await call
    except grpc.aio.AioRpcError as exc:
        return _failed(rpc, exc, [], by_client=False)
    return Outcome(
        rpc,
        Code.OK,
        await call.details() or "",
        tuple(await call.initial_metadata() or ()),
        tuple(await call.trailing_metadata() or ()),
        [response] if response is not None else [],
        unreadable=int(response is None),
    )


def sync_outcome(rpc: str, call, responses: list[Message]) -> Outcome:
    """The Outcome of a finished call of the synchronous API (a call object or
    the grpc.RpcError it raised: both answer code(), details() and metadata)."""
    return Outcome(
        rpc,
        call.code(),
        call.details() or "",
        tuple(call.initial_metadata() or ()),
        tuple(call.trailing_metadata() or ()),
        responses,
    )


def call_client_stream(
    rpc: str, method, requests: Iterable[Message], timeout: float = CALL_TIMEOUT
) -> Outcome:
    """A client-streaming call over the synchronous API, from the calling thread.

    Not over grpc.aio: when the server ends a call while the aio client is
    still writing (an upload refused at its header), the aio client replaces
    the server's status with INTERNAL "Internal error from Core" (grpc/grpc
    issue 36066, PR 43486); the synchronous client reports the server's status."""
    try:
        response, call = method.with_call(iter(requests), timeout=timeout)
    except grpc.RpcError as exc:
        return sync_outcome(rpc, exc, [])
    return sync_outcome(rpc, call, [response])


async def call_server_stream(
    rpc: str,
    method,
    request,
    *,
    caught_up: Callable[[list[Message]], bool] | None,
    grace: float = 0.1,
    timeout: float = CALL_TIMEOUT,
) -> Outcome:
    """A server-streaming call read to its end. With `caught_up`, a stream that
    legitimately never ends (a job that is still running streams forever) is
    cancelled by the test once `caught_up(responses)` holds and nothing more
    came for `grace` seconds; without it, the server must end the stream."""
    call = method(request, timeout=timeout)
    responses: list[Message] = []
    unreadable = 0
    ended_by_client = False
    try:
        while True:
            if caught_up is not None and caught_up(responses):
                try:
                    message = await asyncio.wait_for(call.read(), grace)
                except TimeoutError:
                    call.cancel()  # our choice: the stream would go on forever
                    ended_by_client = True
                    break
            else:
                message = await call.read()
            if message is grpc.aio.EOF:
                break
            if message is None:
                unreadable += 1
            else:
                responses.append(message)
        code = await call.code()
    except grpc.aio.AioRpcError as exc:
        outcome = _failed(rpc, exc, responses, by_client=ended_by_client)
        outcome.unreadable = unreadable
        return outcome
    except asyncio.CancelledError:
        if not ended_by_client:
            raise
        code = Code.CANCELLED
    return Outcome(
        rpc,
        code,
        await call.details() or "",
        tuple(await call.initial_metadata() or ()),
        tuple(await call.trailing_metadata() or ()),
        responses,
        ended_by_client=ended_by_client and code != Code.OK,
        unreadable=unreadable,
    )


# -- every string a message holds ---------------------------------------------------------


def strings_in(message: Message) -> Iterator[str]:
    """Every string of `message`, recursively: string fields, map keys and
    values, Struct keys and values, and the contents of Any fields (unpacked
    when their type is known, else their bytes read as Latin-1)."""
    if message.DESCRIPTOR.full_name == "google.protobuf.Any":
        yield message.type_url
        inner = _unpack_any(message)
        if inner is None:
            yield message.value.decode("latin-1")
        else:
            yield from strings_in(inner)
        return
    for descriptor, value in message.ListFields():
        if descriptor.type == FieldDescriptor.TYPE_STRING:
            yield from (value if descriptor.is_repeated else [value])
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            if descriptor.message_type.GetOptions().map_entry:
                for key, item in value.items():
                    yield str(key)
                    if isinstance(item, Message):
                        yield from strings_in(item)
                    elif isinstance(item, str):
                        yield item
            elif descriptor.is_repeated:
                for item in value:
                    yield from strings_in(item)
            else:
                yield from strings_in(value)


def _unpack_any(packed) -> Message | None:
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(packed.TypeName())
        return message_factory.GetMessageClass(descriptor).FromString(packed.value)
    except (KeyError, TypeError, DecodeError):
        return None


def client_text(messages: Iterable[Message | str]) -> str:
    """All the text a client sent (what the server may legitimately echo)."""
    parts: list[str] = []
    for item in messages:
        if isinstance(item, str):
            parts.append(item)
        else:
            parts.extend(strings_in(item))
    return "\n".join(parts)


# -- the properties --------------------------------------------------------------------------


def check_outcome(
    outcome: Outcome,
    *,
    sent: str,
    host_paths: Iterable[str],
    logged: list[LoggedProblem] = (),
    allowed: frozenset[Code] | None = None,
) -> None:
    """Asserts the properties every call keeps (see the module docstring).
    `sent` is the text of what the client sent; `host_paths` the server's
    directories; `logged` what the server logged during the call."""
    allowed = DOCUMENTED_CODES[outcome.rpc] if allowed is None else allowed
    if outcome.unreadable:
        raise server_bug(
            f"unreadable_{outcome.rpc}",
            f"{outcome.rpc}: {outcome.unreadable} response message(s) could not be parsed by "
            f"a protobuf client (the server sent something nested deeper than clients "
            f"read?); the call ended {outcome.code.name} after {len(outcome.responses)} "
            f"readable response(s)\nclient log: "
            + "; ".join(str(p).splitlines()[0] for p in logged if p.logger.startswith("grpc")),
        )
    _check_code(outcome, allowed, logged)
    _check_details(outcome)
    _check_leaks(outcome, sent, host_paths)


def _check_code(outcome: Outcome, allowed: frozenset[Code], logged: list[LoggedProblem]) -> None:
    if outcome.code in allowed:
        return
    if outcome.ended_by_client and outcome.code in CLIENT_ENDED_CODES:
        return
    behind = "\n".join(str(p) for p in logged) or "(nothing in the server log)"
    kind = f"{outcome.rpc}_{outcome.code.name}"
    if logged:
        kind += "_" + logged[0].kind
    raise server_bug(
        kind,
        f"{outcome.rpc} ended with {outcome.code.name}, which its contract does not "
        f"document (allowed: {sorted(c.name for c in allowed)})\n{outcome.summary()}\n"
        f"server log:\n{behind}",
    )


def _check_details(outcome: Outcome) -> None:
    raw = outcome.details_bytes
    if raw is not None:
        assert len(raw) < MAX_DETAILS_BYTES, (
            f"{outcome.rpc}: the {DETAILS_TRAILER} trailer is {len(raw)} bytes "
            f"(limit {MAX_DETAILS_BYTES})\n{outcome.summary()}"
        )
    assert len(outcome.message.encode()) < MAX_DETAILS_BYTES, (
        f"{outcome.rpc}: the status message is {len(outcome.message.encode())} bytes"
    )
    if outcome.code == Code.OK or outcome.ended_by_client:
        return
    status = outcome.status()
    assert status is not None, (
        f"{outcome.rpc} failed without google.rpc.Status details (not an error the server "
        f"made: a transport or framework failure?)\n{outcome.summary()}"
    )
    assert status.code == outcome.code.value[0] and status.message == outcome.message, (
        f"{outcome.rpc}: the Status trailer ({status.code}, {status.message!r}) disagrees with "
        f"the call's status\n{outcome.summary()}"
    )
    info = outcome.error_info()
    assert info is not None and info.domain == ERROR_DOMAIN and REASON.fullmatch(info.reason), (
        f"{outcome.rpc}: an error must carry an ErrorInfo of domain {ERROR_DOMAIN} with an "
        f"UPPER_SNAKE reason\n{outcome.summary()}"
    )
    if outcome.code == Code.INVALID_ARGUMENT:
        bad = outcome.bad_request()
        assert bad is not None and len(bad.field_violations) > 0, (
            f"{outcome.rpc}: INVALID_ARGUMENT must name the field (BadRequest)\n{outcome.summary()}"
        )
    if outcome.code == Code.UNAVAILABLE:
        assert _detail(status, error_details_pb2.RetryInfo) is not None, (
            f"{outcome.rpc}: UNAVAILABLE must carry RetryInfo\n{outcome.summary()}"
        )


def _check_leaks(outcome: Outcome, sent: str, host_paths: Iterable[str]) -> None:
    seen: list[tuple[str, str]] = [("status message", outcome.message)]
    for where, metadata in (
        ("initial metadata", outcome.initial_metadata),
        ("trailing metadata", outcome.trailing_metadata),
    ):
        for key, value in metadata:
            if key == DETAILS_TRAILER:
                continue
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            seen.append((f"{where} {key}", text))
    status = outcome.status()
    if status is not None:
        seen.extend(("error details", text) for text in strings_in(status))
    for index, response in enumerate(outcome.responses):
        seen.extend((f"response #{index}", text) for text in strings_in(response))
    forbidden = [m for m in (*host_paths, *LEAK_MARKERS) if m and m not in sent]
    for where, text in seen:
        for marker in forbidden:
            if marker in text:
                start = max(0, text.index(marker) - 60)
                raise server_bug(
                    f"leak_{outcome.rpc}_{marker}",
                    f"{outcome.rpc}: {where} holds {marker!r}, which the request did not "
                    f"carry: ...{text[start : start + 200]!r}...\n{outcome.summary()}",
                )


# -- the server under test ----------------------------------------------------------------------


def fuzz_settings(data_dir: Path, **overrides: Any) -> JobServiceSettings:
    """The settings of tests/integration/conftest.py's `make_settings` (port 0,
    short leases, SQLite and storage under `data_dir`), with limits that make
    the bounds reachable by a fuzzer: a 1 MiB upload limit, no free-space
    reserve (so the host's disk cannot decide an outcome) and a short retry
    backoff (so jobs a fuzzed worker failed come back quickly)."""
    values: dict[str, Any] = dict(
        listen="127.0.0.1:0",
        database_url=f"sqlite+aiosqlite:///{data_dir / 'videojobs.db'}",
        storage_url=str(data_dir / "storage"),
        heartbeat_interval=0.2,
        lease_duration=2.0,
        shutdown_grace=0.5,
        max_upload_bytes=1024 * 1024,
        min_free_bytes=0,
        retry_backoff_base=0.01,
        retry_backoff_max=0.05,
    )
    values.update(overrides)
    return JobServiceSettings(**values)


def tiny_video(container_format: str = "mp4") -> bytes:
    """A valid 160x120, 10-frame H.264 video (a few KB), made with PyAV."""
    buffer = io.BytesIO()
    write_sample_video(
        buffer, width=160, height=120, fps=10, frames=10, container_format=container_format
    )
    return buffer.getvalue()


def _tree(root: Path, skip: Callable[[Path], bool]) -> set[str]:
    found: set[str] = set()
    for directory, dirnames, filenames in os.walk(root):
        current = Path(directory)
        dirnames[:] = [d for d in dirnames if not skip(current / d)]
        for name in [*dirnames, *filenames]:
            if not skip(current / name):
                found.add(str((current / name).relative_to(root)))
    return found


class FuzzServer:
    """One job-service for one test function, on a background event loop.

    `root` is the test's temp directory: the server's data lives in
    `root/data` (database file and storage root); nothing else under `root`
    may appear while it runs."""

    def __init__(self, root: Path, **overrides: Any) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.storage_root = (self.data_dir / "storage").resolve()
        self.settings = fuzz_settings(self.data_dir, **overrides)
        self.health_video = tiny_video()
        self.log = ServerLogWatch()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="fuzz-server", daemon=True)
        self._outside_before: set[str] = set()
        self.app: JobServiceApp | None = None
        self.address = ""
        self.channel: grpc.aio.Channel | None = None
        self.jobs: job_service_pb2_grpc.JobServiceStub | None = None
        self.dispatch: dispatch_service_pb2_grpc.DispatchServiceStub | None = None
        self.health: health_pb2_grpc.HealthStub | None = None
        # The synchronous API, for calls whose client streams (see call_client_stream).
        self.sync_channel: grpc.Channel | None = None
        self.sync_jobs: job_service_pb2_grpc.JobServiceStub | None = None
        self.sync_dispatch: dispatch_service_pb2_grpc.DispatchServiceStub | None = None
        self.examples = 0
        # What a test remembers between its examples (seeded jobs, page tokens
        # the server issued, the last lease a worker held...).
        self.memory: dict[str, Any] = {}

    # -- life cycle ---------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def _outside(self, path: Path) -> bool:
        """Whether `path` is the server's own (storage root or database files)."""
        resolved = path.resolve()
        if resolved == self.storage_root or self.storage_root in resolved.parents:
            return True
        return path.parent == self.data_dir and path.name.startswith("videojobs.db")

    def outside_entries(self) -> set[str]:
        """Every entry under `root` that is not the server's storage or database."""
        return _tree(self.root, self._outside)

    def start(self) -> FuzzServer:
        """Starts the loop thread and the server on it."""
        self._outside_before = self.outside_entries()
        self.log.install()
        self._thread.start()

        async def start() -> None:
            # Built on the loop it runs on: grpc.aio objects belong to one loop.
            self.app = build_job_service(self.settings)
            self.address = await self.app.start()
            self.channel = grpc.aio.insecure_channel(self.address)
            self.jobs = job_service_pb2_grpc.JobServiceStub(self.channel)
            self.dispatch = dispatch_service_pb2_grpc.DispatchServiceStub(self.channel)
            self.health = health_pb2_grpc.HealthStub(self.channel)

        self.run(start())
        self.sync_channel = grpc.insecure_channel(self.address)
        self.sync_jobs = job_service_pb2_grpc.JobServiceStub(self.sync_channel)
        self.sync_dispatch = dispatch_service_pb2_grpc.DispatchServiceStub(self.sync_channel)
        return self

    def stop(self) -> None:
        """Stops the server, closes the channels, ends the loop thread."""
        if self.sync_channel is not None:
            self.sync_channel.close()
        try:
            if self._thread.is_alive():

                async def stop() -> None:
                    if self.channel is not None:
                        await self.channel.close()
                    if self.app is not None:
                        await self.app.stop()
                    current = asyncio.current_task()
                    pending = [t for t in asyncio.all_tasks() if t is not current]
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)

                try:
                    self.run(stop())
                finally:
                    self._loop.call_soon_threadsafe(self._loop.stop)
                    self._thread.join(30)
        finally:
            self.log.uninstall()

    def run(self, coroutine: Awaitable[T], timeout: float = RUN_TIMEOUT) -> T:
        """Runs `coroutine` on the server's loop and returns its result."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise AssertionError(f"a call to the server did not finish in {timeout:g}s") from None

    # -- properties ---------------------------------------------------------------

    @property
    def host_paths(self) -> list[str]:
        """Host paths of the server that no client may ever see."""
        paths = {str(self.root), str(self.root.resolve()), str(self.data_dir)}
        paths |= {str(self.storage_root), str(self.data_dir / "storage")}
        return sorted(paths, key=len, reverse=True)

    def check(self, outcome: Outcome, sent: str, mark: int, **kwargs: Any) -> None:
        """`check_outcome` with this server's host paths and log."""
        check_outcome(
            outcome, sent=sent, host_paths=self.host_paths, logged=self.log.since(mark), **kwargs
        )

    def check_log(self, mark: int, context: str) -> None:
        """Nothing unexpected was logged since `mark`."""
        problems = self.log.since(mark)
        if problems:
            raise server_bug(
                f"log_{problems[0].logger}_{problems[0].kind}",
                f"the server logged an unexpected failure ({context}):\n"
                + "\n".join(str(p) for p in problems[:5]),
            )

    def stored_files(self) -> set[str]:
        """Keys of the stored objects (the storage root minus temporary files)."""
        return {
            name
            for name in _tree(self.storage_root, lambda p: p.name == PARTIAL_DIR)
            if (self.storage_root / name).is_file()
        }

    def storage_problems(self) -> list[str]:
        """What is wrong under the storage root now (with no upload in progress):
        temporary files left behind, links, files named by no valid StorageKey
        or outside the documented layout."""
        problems = []
        partial = self.storage_root / PARTIAL_DIR
        for name in sorted(_tree(partial, lambda p: False)) if partial.is_dir() else []:
            if not (partial / name).is_dir():
                problems.append(f"temporary file left behind: {PARTIAL_DIR}/{name}")
        for name in sorted(_tree(self.storage_root, lambda p: p.name == PARTIAL_DIR)):
            path = self.storage_root / name
            if path.is_symlink():
                problems.append(f"a link in storage: {name}")
            elif path.is_file() and not is_valid_key(name):
                problems.append(f"a stored file whose name is no valid StorageKey: {name!r}")
            elif path.is_file() and not STORED_KEY_LAYOUT.fullmatch(name):
                problems.append(f"a stored file outside the documented layout: {name!r}")
        return problems

    def check_quiescent(self, context: str) -> None:
        """Health SERVING, a real small upload succeeds, no debris anywhere."""
        mark = self.log.mark()
        self.run(self._health_and_upload(context))
        problems = self.storage_problems()
        assert not problems, f"storage after {context}:\n" + "\n".join(problems[:20])
        created = self.outside_entries() - self._outside_before
        assert not created, (
            f"after {context}, the server created entries outside its storage root and "
            f"database: {sorted(created)[:20]}"
        )
        self.check_log(mark, f"health check after {context}")

    async def _health_and_upload(self, context: str) -> None:
        assert self.health is not None and self.jobs is not None
        for service in ["", *SERVICE_NAMES]:
            reply = await self.health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, (
                f"health of {service or 'the server'} is {reply.status} after {context}"
            )
        data = self.health_video
        messages = [header(data=data, file_name="health.mp4"), *chunks(data, 1024)]
        try:
            response = await self.jobs.SubmitVideo(iter(messages), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise AssertionError(
                f"a valid small upload failed after {context}: {exc.code().name} {exc.details()!r}"
            ) from None
        job = response.job
        assert job.state == job_pb2.JOB_STATE_QUEUED and job.input_size_bytes == len(data), job
        status = await self.jobs.GetStatus(js.GetStatusRequest(job_id=job.job_id))
        assert status.job.job_id == job.job_id

    def tick(self, every: int = 100) -> None:
        """Counts an example; every `every` examples checks the server is well."""
        self.examples += 1
        if self.examples % every == 0:
            self.check_quiescent(f"{self.examples} examples")
