"""S3-compatible BlobStore: `s3://bucket/prefix` through aiobotocore.

Keys map to object keys `<prefix>/<key>` (the key itself without a prefix), so
the same key names the same object here as in every other backend.

The BlobStore interface is synchronous (see `blobstore.py`), aiobotocore is
not. The store therefore owns a private asyncio event loop running in a daemon
thread, with one aiobotocore client created on it the first time the store is
used. Every public method submits a coroutine to that loop and waits for it
with a timeout, so the store can be shared by any number of threads (the
client's connection pool serves them concurrently) and is usable from worker
child processes that know nothing about asyncio. Construction does no I/O; the
loop, the client and the credential lookup happen on first use. `close()`
stops them.

Atomic writes stream into a multipart upload (nothing is visible before
`CompleteMultipartUpload`); objects smaller than one part go up in one
PutObject at commit. Resumable writes keep their state in S3 itself, as the
unfinished multipart upload of the object's key, so they survive a restart of
the process that wrote them.

Error messages name the key and the S3 error code, never the endpoint, the
bucket or a credential.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import io
import ipaddress
import logging
import os
import re
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, TypeVar

from videojobs.storage.blobstore import (
    BlobInfo,
    BlobNotFound,
    BlobStoreError,
    BlobWriteAborted,
    HashingCounter,
)
from videojobs.storage.keys import InvalidStorageKey, StorageKey

log = logging.getLogger(__name__)

T = TypeVar("T")

MIB = 1024 * 1024
GIB = 1024 * MIB
# Parts of streamed uploads. 8 MiB up to part 1000 (8 GiB), then 16 MiB up to
# part 2000 and so on, so the 10,000-part limit allows objects of ~430 GiB.
PART_SIZE = 8 * MIB
PARTS_PER_SIZE_STEP = 1000
# S3's minimum for every part but the last.
MIN_PART_SIZE = 5 * MIB
MAX_PARTS = 10_000
# Parts uploaded concurrently by one writer while it keeps buffering.
UPLOADS_IN_FLIGHT = 4
# CopyObject handles sources up to 5 GiB; larger ones are copied in ranges.
MAX_SINGLE_COPY_BYTES = 5 * GIB
COPY_PART_SIZE = 512 * MIB
# Reads fetch at least this much per ranged GET, more while reading sequentially.
READ_AHEAD_BYTES = 4 * MIB
MAX_READ_AHEAD_BYTES = 16 * MIB
# Ranged GETs whose body broke off are tried this often in all.
BODY_READ_ATTEMPTS = 3
# DeleteObjects takes at most 1000 keys; ListObjectsV2 returns at most 1000.
DELETE_BATCH = 1000
LIST_PAGE_SIZE = 1000

# S3's limit on object keys, the store's prefix included.
MAX_OBJECT_KEY_BYTES = 1024

CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
MAX_ATTEMPTS = 5
# One S3 request, retries included; generous, it only catches a hung store.
OPERATION_TIMEOUT_SECONDS = 300.0
MAX_POOL_CONNECTIONS = 32

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# Codes that mean "try again later" rather than "this request is wrong".
_RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
    }
)
# What an S3 error code may look like when repeated in a message; anything
# else a (possibly hostile) server sends is reported as "Unknown".
_ERROR_CODE = re.compile(r"^[A-Za-z0-9.]{1,64}$")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class KeyTooLongForStore(InvalidStorageKey):
    """The key is valid, but with the store's prefix it exceeds S3's limit on
    object keys (1024 bytes)."""


class StorageUnavailable(BlobStoreError):
    """The object store could not be reached or asked us to slow down (after
    botocore's own retries). Retrying the operation later may succeed.

    `retryable` and `storage_unavailable` let layers that do not import this
    module recognise it (like `StorageFull.storage_full`)."""

    retryable = True
    storage_unavailable = True


class _BodyCutOff(StorageUnavailable):
    """A ranged GET answered, but its body broke off or came up short."""


def is_valid_bucket_name(name: str) -> bool:
    """Whether `name` follows S3's general-purpose bucket naming rules: 3-63
    characters of lowercase letters, digits, '.' and '-', starting and ending
    with a letter or digit, no '..', not an IPv4 address, none of the
    reserved prefixes and suffixes."""
    if not _BUCKET_NAME.match(name) or ".." in name:
        return False
    with contextlib.suppress(ValueError):
        ipaddress.IPv4Address(name)
        return False
    if name.startswith(("xn--", "sthree-", "amzn-s3-demo-")):
        return False
    return not name.endswith(("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"))


@dataclass(frozen=True, slots=True)
class S3Connection:
    """Where the store is and how to authenticate. Fields left None are
    resolved by botocore's own chain when the client is created (shared
    config files, instance metadata...; S3 itself needs no region)."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    region: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> S3Connection:
        """The connection named by the standard variables: AWS_ENDPOINT_URL,
        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and
        AWS_REGION (or AWS_DEFAULT_REGION). Unset or empty means None."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name) or None

        return cls(
            endpoint_url=get("AWS_ENDPOINT_URL"),
            access_key_id=get("AWS_ACCESS_KEY_ID"),
            secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
            session_token=get("AWS_SESSION_TOKEN"),
            region=get("AWS_REGION") or get("AWS_DEFAULT_REGION"),
        )


@dataclass(frozen=True, slots=True)
class _Part:
    number: int
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class _Upload:
    upload_id: str
    initiated: datetime | None


def _part_size(part_number: int) -> int:
    """The size of part `part_number` of a streamed upload (the last may be smaller)."""
    return PART_SIZE * (1 + (part_number - 1) // PARTS_PER_SIZE_STEP)


def _take(buffer: bytearray, size: int) -> bytes:
    """Removes and returns the first `size` bytes of `buffer` (one copy)."""
    with memoryview(buffer) as view:
        part = bytes(view[:size])
    del buffer[:size]
    return part


# -- errors ------------------------------------------------------------------------


def _error_code(exc: Exception) -> tuple[str, int | None]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code") or "")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if not _ERROR_CODE.match(code):
        code = str(status) if status else "Unknown"
    return code, status


def _storage_error_for(
    exc: BaseException, key: StorageKey | None, action: str
) -> BlobStoreError | None:
    """The BlobStoreError for an exception of botocore/aiohttp while `action`-ing
    `key`, or None for anything else (a bug, to be raised as it is). Messages
    carry the key and the S3 error code only."""
    from botocore import exceptions as boto  # imported late: no work at import time

    subject = "the store" if key is None else repr(key.value)
    if isinstance(exc, BlobStoreError):
        return exc
    if isinstance(exc, boto.ClientError):
        code, status = _error_code(exc)
        if code in _NOT_FOUND_CODES and key is not None:
            return BlobNotFound(key)
        if code == "NoSuchUpload":
            return BlobWriteAborted(
                f"cannot {action} {subject}: the write was abandoned in the store (S3 error {code})"
            )
        if code in _RETRYABLE_CODES or (status is not None and status >= 500):
            return StorageUnavailable(f"cannot {action} {subject}: S3 error {code}; retry later")
        return BlobStoreError(f"cannot {action} {subject}: S3 error {code}")
    if isinstance(exc, boto.NoCredentialsError | boto.PartialCredentialsError):
        return BlobStoreError(f"cannot {action} {subject}: no S3 credentials are configured")
    if isinstance(exc, boto.ParamValidationError):
        return BlobStoreError(f"cannot {action} {subject}: invalid S3 request")
    transient = (
        boto.ConnectionError,  # refused, DNS, connect timeout, proxy
        boto.HTTPClientError,  # reset, read timeout, body cut off
        boto.IncompleteReadError,
        OSError,
        TimeoutError,
    )
    if isinstance(exc, transient) or _is_aiohttp_error(exc):
        # botocore has already retried. The exception's own text names the
        # endpoint, so only its type is repeated.
        return StorageUnavailable(
            f"cannot {action} {subject}: the object store is unreachable "
            f"({type(exc).__name__}); retry later"
        )
    if isinstance(exc, boto.BotoCoreError):
        return BlobStoreError(f"cannot {action} {subject}: S3 client error ({type(exc).__name__})")
    return None


def _is_aiohttp_error(exc: BaseException) -> bool:
    import aiohttp

    return isinstance(exc, aiohttp.ClientError)


# -- the event loop thread -----------------------------------------------------------


@functools.cache
def _shared_data_loader() -> Any:
    """botocore's loader of service models, shared by every store of the
    process: the models are read-only files, and loading them anew costs a
    few hundred milliseconds per client. Built on first use."""
    from aiobotocore.session import get_session

    return get_session().get_component("data_loader")


class _Runtime:
    """The private event loop (in a daemon thread) and the aiobotocore client on it."""

    def __init__(self, connection: S3Connection, config: dict[str, Any], name: str) -> None:
        self.pid = os.getpid()
        self._connection = connection
        self._config = config
        self._client: Any = None
        self._client_lock: asyncio.Lock | None = None
        self._exit_stack: contextlib.AsyncExitStack | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    async def client(self) -> Any:
        """The client, created on first use (on the loop; the lock makes
        concurrent first uses share one)."""
        if self._client is not None:
            return self._client
        if self._client_lock is None:
            self._client_lock = asyncio.Lock()
        async with self._client_lock:
            if self._client is None:
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                connection = self._connection
                session = get_session()
                session.register_component("data_loader", _shared_data_loader())
                stack = contextlib.AsyncExitStack()
                self._client = await stack.enter_async_context(
                    session.create_client(
                        "s3",
                        region_name=connection.region,
                        endpoint_url=connection.endpoint_url,
                        aws_access_key_id=connection.access_key_id,
                        aws_secret_access_key=connection.secret_access_key,
                        aws_session_token=connection.session_token,
                        config=AioConfig(**self._config),
                    )
                )
                self._exit_stack = stack
        return self._client

    def submit(self, coroutine: Awaitable[T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]

    async def _close_client(self) -> None:
        try:
            if self._exit_stack is not None:
                await self._exit_stack.aclose()
        finally:
            self._client = None
            self._exit_stack = None
            # aiohttp resolves names in the loop's default executor: end its thread too.
            await self.loop.shutdown_default_executor()

    def close(self, timeout: float) -> None:
        """Closes the client, stops the loop and joins the thread. Does
        nothing in a forked child (the thread is not there)."""
        if os.getpid() != self.pid or self.loop.is_closed():
            return
        if self._thread.is_alive():
            future = self.submit(self._close_client())
            try:
                future.result(timeout)
            except Exception:  # noqa: BLE001 - closing is best effort
                log.warning("closing the S3 client failed", exc_info=True)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()


# -- the store ---------------------------------------------------------------------


class S3BlobStore:
    """A BlobStore over an S3 bucket, optionally below a prefix.

    Connection settings default to the standard AWS variables, read here, at
    construction (see `S3Connection.from_environment`); explicit arguments win.
    Explicit credentials are taken as a set: passing `access_key_id` means the
    session token comes from the arguments only.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str | None = None,
        *,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        region: str | None = None,
        environ: Mapping[str, str] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        max_attempts: int = MAX_ATTEMPTS,
        operation_timeout: float = OPERATION_TIMEOUT_SECONDS,
        max_pool_connections: int = MAX_POOL_CONNECTIONS,
    ) -> None:
        if not is_valid_bucket_name(bucket):
            raise ValueError("not a valid S3 bucket name")
        self._bucket = bucket
        # The prefix follows the key rules, so `<prefix>/<key>` is a key too.
        self._prefix = StorageKey(prefix.strip("/")).value if prefix and prefix.strip("/") else ""
        from_env = S3Connection.from_environment(environ)
        explicit_credentials = access_key_id is not None
        self._connection = S3Connection(
            endpoint_url=endpoint_url or from_env.endpoint_url,
            access_key_id=access_key_id if explicit_credentials else from_env.access_key_id,
            secret_access_key=secret_access_key
            if explicit_credentials
            else from_env.secret_access_key,
            session_token=session_token if explicit_credentials else from_env.session_token,
            region=region or from_env.region,
        )
        self._config: dict[str, Any] = {
            "retries": {"mode": "standard", "max_attempts": max_attempts},
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "max_pool_connections": max_pool_connections,
            # Checksums only where S3 requires them: S3-compatible stores do
            # not all understand the newer flexible checksums.
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            # A custom endpoint (MinIO, Ceph, moto...) is addressed by path.
            "s3": {"addressing_style": "path" if self._connection.endpoint_url else "auto"},
        }
        self._operation_timeout = operation_timeout
        self._runtime_lock = threading.Lock()
        self._runtime: _Runtime | None = None
        self._finalizer: weakref.finalize | None = None
        self._closed = False
        # Limits as attributes, so a test can reach the paths beyond them cheaply.
        self._max_single_copy_bytes = MAX_SINGLE_COPY_BYTES
        self._copy_part_size = COPY_PART_SIZE
        self._list_page_size = LIST_PAGE_SIZE
        self._delete_batch = DELETE_BATCH

    def describe(self) -> str:
        """Where the store lives, for the operator's start-up log only."""
        return f"S3 bucket {self._bucket}, prefix {self._prefix or '(none)'}"

    @property
    def bucket(self) -> str:
        """The bucket (for operators and tests; never put it in a message)."""
        return self._bucket

    def object_key(self, key: StorageKey) -> str:
        """The S3 object key of `key`: `<prefix>/<key>`, or the key itself.
        Raises KeyTooLongForStore when that exceeds S3's 1024 bytes."""
        object_key = f"{self._prefix}/{key.value}" if self._prefix else key.value
        if len(object_key.encode("utf-8")) > MAX_OBJECT_KEY_BYTES:
            raise KeyTooLongForStore(
                f"must be at most {self.max_key_bytes} bytes of UTF-8 in this store"
            )
        return object_key

    @property
    def max_key_bytes(self) -> int:
        """The longest key this store holds: S3's 1024 bytes less the prefix and its '/'."""
        return MAX_OBJECT_KEY_BYTES - (len(self._prefix.encode("utf-8")) + 1 if self._prefix else 0)

    def _key_from_object(self, object_key: str) -> StorageKey | None:
        if self._prefix:
            if not object_key.startswith(self._prefix + "/"):
                return None
            object_key = object_key[len(self._prefix) + 1 :]
        try:
            return StorageKey(object_key)
        except InvalidStorageKey:
            return None

    def _list_prefix(self, prefix: StorageKey | None) -> str:
        if prefix is not None:
            return self.object_key(prefix) + "/"
        return self._prefix + "/" if self._prefix else ""

    # -- running coroutines on the private loop --------------------------------------

    def _ensure_runtime(self) -> _Runtime:
        with self._runtime_lock:
            if self._closed:
                raise BlobStoreError("the S3 store is closed")
            runtime = self._runtime
            if runtime is None or runtime.pid != os.getpid():
                # First use, or first use in a forked child, which inherits
                # the parent's loop object but not its thread.
                runtime = _Runtime(self._connection, self._config, name="videojobs-s3")
                self._runtime = runtime
                if self._finalizer is not None:
                    self._finalizer.detach()
                self._finalizer = weakref.finalize(
                    self, runtime.close, min(self._operation_timeout, 10.0)
                )
            if threading.current_thread() is runtime.thread:
                raise RuntimeError("S3BlobStore called from its own event loop thread")
            return runtime

    def _submit(self, operation: Callable[[Any], Awaitable[T]]) -> concurrent.futures.Future[T]:
        runtime = self._ensure_runtime()

        async def with_client() -> T:
            return await operation(await runtime.client())

        return runtime.submit(with_client())

    def _wait(self, future: concurrent.futures.Future[T], key: StorageKey | None, action: str) -> T:
        try:
            return future.result(self._operation_timeout)
        except concurrent.futures.CancelledError:
            raise BlobStoreError(f"cannot {action}: the S3 store was closed") from None
        except Exception as exc:
            if not future.done():
                # Our own deadline passed: stop the request, report the store as slow.
                future.cancel()
                subject = "the store" if key is None else repr(key.value)
                raise StorageUnavailable(
                    f"cannot {action} {subject}: the object store did not answer within "
                    f"{self._operation_timeout:.0f} s; retry later"
                ) from None
            mapped = _storage_error_for(exc, key, action)
            if mapped is None:
                raise
            raise mapped from None
        except BaseException:
            future.cancel()  # KeyboardInterrupt and friends: do not leave it running
            raise

    def _run(
        self, operation: Callable[[Any], Awaitable[T]], key: StorageKey | None, action: str
    ) -> T:
        return self._wait(self._submit(operation), key, action)

    def close(self) -> None:
        """Closes the client and stops the loop thread. Further calls raise
        BlobStoreError. Safe to call more than once."""
        with self._runtime_lock:
            self._closed = True
            runtime, self._runtime = self._runtime, None
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if runtime is not None:
            runtime.close(min(self._operation_timeout, 10.0))

    def __enter__(self) -> S3BlobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- single requests --------------------------------------------------------------

    def _head(self, key: StorageKey) -> dict[str, Any]:
        return self._run(
            lambda c: c.head_object(Bucket=self._bucket, Key=self.object_key(key)), key, "read"
        )

    def _get_range(self, key: StorageKey, start: int, end: int, etag: str | None) -> bytes:
        """Bytes [start, end) of the object; `etag` pins the version read.

        botocore retries the request but not the reading of its body, so a
        body cut off mid-way is fetched again here, a few times."""

        async def get(client: Any) -> bytes:
            from botocore.exceptions import ClientError

            try:
                response = await client.get_object(
                    Bucket=self._bucket,
                    Key=self.object_key(key),
                    Range=f"bytes={start}-{end - 1}",
                    **({"IfMatch": etag} if etag else {}),
                )
            except ClientError as exc:
                if _error_code(exc)[0] == "PreconditionFailed":
                    raise BlobStoreError(
                        f"cannot read {key.value!r}: the object was replaced while being read"
                    ) from None
                raise
            try:
                async with response["Body"] as body:
                    data = await body.read()
            except Exception as exc:
                if isinstance(_storage_error_for(exc, key, "read"), StorageUnavailable):
                    raise _BodyCutOff(
                        f"cannot read {key.value!r}: the object store broke off "
                        f"({type(exc).__name__}); retry later"
                    ) from None
                raise
            if len(data) != end - start:
                raise _BodyCutOff(
                    f"cannot read {key.value!r}: the object store sent {len(data)} bytes "
                    f"instead of {end - start}; retry later"
                )
            return data

        for attempt in range(1, BODY_READ_ATTEMPTS + 1):
            try:
                return self._run(get, key, "read")
            except _BodyCutOff:
                if attempt == BODY_READ_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def _put(self, key: StorageKey, data: bytes) -> None:
        self._run(
            lambda c: c.put_object(Bucket=self._bucket, Key=self.object_key(key), Body=data),
            key,
            "store",
        )

    def _create_upload(self, key: StorageKey) -> str:
        response = self._run(
            lambda c: c.create_multipart_upload(Bucket=self._bucket, Key=self.object_key(key)),
            key,
            "write",
        )
        return response["UploadId"]

    def _abort_upload(self, key: StorageKey, upload_id: str) -> bool:
        """Aborts one multipart upload; False when it was already gone."""
        try:
            self._run(
                lambda c: c.abort_multipart_upload(
                    Bucket=self._bucket, Key=self.object_key(key), UploadId=upload_id
                ),
                key,
                "abort the write of",
            )
        except (BlobWriteAborted, BlobNotFound):
            return False
        return True

    def _complete_upload(self, key: StorageKey, upload_id: str, parts: list[_Part]) -> None:
        self._run(
            lambda c: c.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self.object_key(key),
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]
                },
            ),
            key,
            "store",
        )

    def _submit_part(
        self, key: StorageKey, upload_id: str, number: int, data: bytes
    ) -> concurrent.futures.Future[_Part]:
        async def upload(client: Any) -> _Part:
            response = await client.upload_part(
                Bucket=self._bucket,
                Key=self.object_key(key),
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
            )
            return _Part(number, len(data), response["ETag"])

        return self._submit(upload)

    def _unfinished_uploads(self, key: StorageKey) -> list[_Upload]:
        """Unfinished multipart uploads of exactly `key`'s object, oldest first."""
        object_key = self.object_key(key)
        uploads: list[_Upload] = []
        for raw in self._list_uploads(object_key, key):
            if raw["Key"] == object_key:
                uploads.append(_Upload(raw["UploadId"], raw.get("Initiated")))
        epoch = datetime.min.replace(tzinfo=UTC)
        uploads.sort(key=lambda upload: upload.initiated or epoch)
        return uploads

    def _list_uploads(self, s3_prefix: str, key: StorageKey | None) -> Iterator[dict[str, Any]]:
        markers: dict[str, str] = {}
        while True:

            async def page(client: Any, markers: dict[str, str] = markers) -> dict[str, Any]:
                return await client.list_multipart_uploads(
                    Bucket=self._bucket,
                    Prefix=s3_prefix,
                    MaxUploads=self._list_page_size,
                    **markers,
                )

            response = self._run(page, key, "list the writes of")
            yield from response.get("Uploads", [])
            if not response.get("IsTruncated"):
                return
            markers = {
                "KeyMarker": response.get("NextKeyMarker", ""),
                "UploadIdMarker": response.get("NextUploadIdMarker", ""),
            }

    def _list_parts(self, key: StorageKey, upload_id: str) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        marker = 0
        while True:

            async def page(client: Any, marker: int = marker) -> dict[str, Any]:
                return await client.list_parts(
                    Bucket=self._bucket,
                    Key=self.object_key(key),
                    UploadId=upload_id,
                    PartNumberMarker=marker,
                    MaxParts=self._list_page_size,
                )

            response = self._run(page, key, "resume the write of")
            parts.extend(response.get("Parts", []))
            if not response.get("IsTruncated"):
                return parts
            marker = int(response["NextPartNumberMarker"])

    def _committed_parts(self, key: StorageKey, upload_id: str) -> list[_Part]:
        """The parts a resumed write builds on: the run numbered 1, 2, 3...
        without a gap, each at least S3's minimum part size. Anything after a
        gap (a stream died with uploads in flight) or a short part is
        overwritten by the resumed stream or left out at completion."""
        kept: list[_Part] = []
        for raw in sorted(self._list_parts(key, upload_id), key=lambda p: p["PartNumber"]):
            if raw["PartNumber"] != len(kept) + 1 or raw["Size"] < MIN_PART_SIZE:
                break
            kept.append(_Part(raw["PartNumber"], raw["Size"], raw["ETag"]))
        return kept

    # -- the BlobStore interface --------------------------------------------------------

    def open_writer(self, key: StorageKey) -> _S3BlobWriter:
        """Starts an atomic write of the object under `key`: a multipart
        upload, begun when the first part is full; nothing is visible before
        `commit`."""
        self.object_key(key)  # a key too long for the prefix is refused here
        self._ensure_runtime()  # and so is a closed store, not at the first part
        return _S3BlobWriter(self, key)

    def open_read(self, key: StorageKey) -> BinaryIO:
        """Opens the object for seekable reading by ranged GETs. Raises BlobNotFound."""
        head = self._head(key)
        reader = _S3Reader(self, key, int(head["ContentLength"]), head.get("ETag"))
        return reader  # type: ignore[return-value]  # a RawIOBase with BinaryIO's methods

    def stat(self, key: StorageKey) -> BlobInfo:
        """Size and last modification of the object. Raises BlobNotFound."""
        head = self._head(key)
        return BlobInfo(
            key=key, size_bytes=int(head["ContentLength"]), modified_at=head.get("LastModified")
        )

    def exists(self, key: StorageKey) -> bool:
        """Whether an object is stored under `key`."""
        try:
            self._head(key)
        except BlobNotFound:
            return False
        return True

    def delete(self, key: StorageKey) -> None:
        """Deletes the object; a missing object is not an error."""
        self._run(
            lambda c: c.delete_object(Bucket=self._bucket, Key=self.object_key(key)),
            key,
            "delete",
        )

    def delete_prefix(self, prefix: StorageKey) -> int:
        """Deletes every object below `prefix` (in batches of 1000); returns how many."""
        keys = [info.key for info in self.list(prefix)]
        for start in range(0, len(keys), self._delete_batch):
            batch = keys[start : start + self._delete_batch]
            objects = [{"Key": self.object_key(key)} for key in batch]

            async def delete(client: Any, objects: list[dict[str, str]] = objects) -> Any:
                return await client.delete_objects(
                    Bucket=self._bucket, Delete={"Objects": objects, "Quiet": True}
                )

            response = self._run(delete, prefix, "delete below")
            errors = response.get("Errors") or []
            if errors:
                code = errors[0].get("Code", "")
                code = code if _ERROR_CODE.match(code) else "Unknown"
                raise BlobStoreError(
                    f"cannot delete below {prefix.value!r}: {len(errors)} object(s) "
                    f"were not deleted (S3 error {code})"
                )
        return len(keys)

    def list(self, prefix: StorageKey | None = None) -> Iterator[BlobInfo]:
        """Objects below `prefix` (all when None), in key order. Objects
        whose names are not valid keys are skipped."""
        s3_prefix = self._list_prefix(prefix)
        found: list[BlobInfo] = []
        token: dict[str, str] = {}
        while True:

            async def page(client: Any, token: dict[str, str] = token) -> dict[str, Any]:
                return await client.list_objects_v2(
                    Bucket=self._bucket, Prefix=s3_prefix, MaxKeys=self._list_page_size, **token
                )

            response = self._run(page, prefix, "list")
            for item in response.get("Contents", []):
                key = self._key_from_object(item["Key"])
                if key is not None:
                    found.append(
                        BlobInfo(
                            key=key,
                            size_bytes=int(item["Size"]),
                            modified_at=item.get("LastModified"),
                        )
                    )
            if not response.get("IsTruncated"):
                break
            token = {"ContinuationToken": response["NextContinuationToken"]}
        yield from sorted(found, key=lambda info: info.key.value)

    def rename(self, source: StorageKey, target: StorageKey) -> BlobInfo:
        """Copies `source` to `target` server-side (in ranges above 5 GiB),
        then deletes `source`. Raises BlobNotFound."""
        self.object_key(target)
        if source == target:
            return self.stat(source)  # a copy onto itself and a delete would lose it
        head = self._head(source)
        size, etag = int(head["ContentLength"]), head.get("ETag")
        copy_source = {"Bucket": self._bucket, "Key": self.object_key(source)}
        if size <= self._max_single_copy_bytes:
            extra = {"CopySourceIfMatch": etag} if etag else {}
            self._run(
                lambda c: c.copy_object(
                    Bucket=self._bucket,
                    Key=self.object_key(target),
                    CopySource=copy_source,
                    **extra,
                ),
                source,
                "move",
            )
        else:
            self._copy_in_ranges(source, target, size, etag, copy_source)
        self.delete(source)
        return self.stat(target)

    def _copy_in_ranges(
        self,
        source: StorageKey,
        target: StorageKey,
        size: int,
        etag: str | None,
        copy_source: dict[str, str],
    ) -> None:
        part_size = max(self._copy_part_size, -(-size // MAX_PARTS))
        upload_id = self._create_upload(target)
        uploads = _PartUploads(self, target, upload_id, [])
        try:
            extra = {"CopySourceIfMatch": etag} if etag else {}
            for start in range(0, size, part_size):
                end = min(start + part_size, size)
                number = uploads.next_number

                async def copy(
                    client: Any, number: int = number, start: int = start, end: int = end
                ) -> _Part:
                    response = await client.upload_part_copy(
                        Bucket=self._bucket,
                        Key=self.object_key(target),
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource=copy_source,
                        CopySourceRange=f"bytes={start}-{end - 1}",
                        **extra,
                    )
                    return _Part(number, end - start, response["CopyPartResult"]["ETag"])

                uploads.add(self._submit(copy), end - start, "move")
            uploads.complete()
        except BaseException:
            uploads.abort()
            raise

    def open_resumable(self, key: StorageKey) -> _S3ResumableWriter:
        """Resumes the newest unfinished multipart upload of `key`'s object
        (aborting older ones), or starts one. Its completed parts are the
        committed bytes.

        Two streams of one key at the same time would overwrite each other's
        parts: the caller serialises streams per key. An unfinished atomic
        write (`open_writer`) of the same key is an upload of the same object
        and would be resumed too: keys written resumably are not written with
        `open_writer` while a resumable write may be in progress.
        """
        uploads = self._unfinished_uploads(key)
        if uploads:
            newest = uploads[-1]
            for stale in uploads[:-1]:
                self._abort_upload(key, stale.upload_id)
            try:
                parts = self._committed_parts(key, newest.upload_id)
            except BlobWriteAborted:
                pass  # finished or swept between the two requests: start afresh
            else:
                return _S3ResumableWriter(self, key, newest.upload_id, parts)
        return _S3ResumableWriter(self, key, self._create_upload(key), [])

    def resumable_status(self, key: StorageKey) -> int | None:
        """Committed bytes of the newest unfinished multipart upload of `key`, or None."""
        uploads = self._unfinished_uploads(key)
        if not uploads:
            return None
        try:
            return sum(part.size for part in self._committed_parts(key, uploads[-1].upload_id))
        except BlobWriteAborted:
            return None  # aborted between the two requests

    def available_bytes(self) -> int | None:
        """None: an object store has no free-space limit we could report."""
        return None

    def sweep_partial_writes(self, older_than_seconds: float) -> int:
        """Aborts the unfinished multipart uploads under the store's prefix
        (atomic writes that died, resumable writes nobody resumed) whose last
        activity (initiation or newest part) is older than `older_than_seconds`;
        returns how many. Ages are by the store's clock."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        removed = 0
        for raw in list(self._list_uploads(self._list_prefix(None), None)):
            key = self._key_from_object(raw["Key"])
            initiated = raw.get("Initiated")
            if key is None or (initiated is not None and initiated >= cutoff):
                continue
            try:
                parts = self._list_parts(key, raw["UploadId"])
            except BlobWriteAborted:
                continue  # finished or aborted meanwhile
            if any(p.get("LastModified") and p["LastModified"] >= cutoff for p in parts):
                continue  # a stream is still adding parts
            if self._abort_upload(key, raw["UploadId"]):
                removed += 1
        return removed


# -- uploads -------------------------------------------------------------------------


class _PartUploads:
    """The parts of one multipart upload: those completed, in order, and up to
    UPLOADS_IN_FLIGHT more being uploaded while the writer keeps buffering.

    Parts are collected in the order they were started, so `parts` is always
    the run 1..n without a gap and `committed_size` is exactly its bytes.
    """

    def __init__(
        self, store: S3BlobStore, key: StorageKey, upload_id: str, parts: list[_Part]
    ) -> None:
        self._store = store
        self._key = key
        self.upload_id = upload_id
        self.parts = list(parts)
        self.committed_size = sum(part.size for part in parts)
        self.sent_size = self.committed_size
        self._in_flight: deque[tuple[concurrent.futures.Future[_Part], str]] = deque()

    @property
    def next_number(self) -> int:
        return len(self.parts) + len(self._in_flight) + 1

    def upload(self, data: bytes) -> None:
        """Starts uploading `data` as the next part."""
        number = self.next_number
        if number > MAX_PARTS:
            raise BlobStoreError(
                f"cannot write {self._key.value!r}: the object is larger than the store allows"
            )
        self.add(self._store._submit_part(self._key, self.upload_id, number, data), len(data))

    def add(
        self, future: concurrent.futures.Future[_Part], size: int, action: str = "write"
    ) -> None:
        """Tracks a started part upload; waits for the oldest when too many run."""
        self._in_flight.append((future, action))
        self.sent_size += size
        while self._in_flight and (
            self._in_flight[0][0].done() or len(self._in_flight) > UPLOADS_IN_FLIGHT
        ):
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        future, action = self._in_flight.popleft()
        try:
            part = self._store._wait(future, self._key, action)
        except BaseException:
            self._in_flight.appendleft((future, action))
            raise
        self.parts.append(part)
        self.committed_size += part.size

    def wait_all(self) -> None:
        """Waits until every started part is uploaded; raises the first failure
        (after letting the others settle)."""
        try:
            while self._in_flight:
                self._collect_oldest()
        except BaseException:
            self.settle()
            raise

    def settle(self) -> None:
        """Waits for the parts in flight without caring how they end."""
        while self._in_flight:
            future, _ = self._in_flight.popleft()
            with contextlib.suppress(Exception, concurrent.futures.CancelledError):
                future.result(self._store._operation_timeout)
        self.sent_size = self.committed_size

    def complete(self) -> None:
        """Waits for the parts in flight and completes the upload."""
        self.wait_all()
        self._store._complete_upload(self._key, self.upload_id, self.parts)

    def abort(self) -> None:
        """Aborts the upload once no part is in flight (a part landing after
        the abort would bring it back); failures are logged, the sweep gets it."""
        self.settle()
        try:
            self._store._abort_upload(self._key, self.upload_id)
        except BlobStoreError as exc:
            log.warning("could not abort an unfinished write: %s", exc)


class _S3BlobWriter:
    """An atomic write streamed into a multipart upload (or one PutObject for
    objects smaller than a part)."""

    def __init__(self, store: S3BlobStore, key: StorageKey) -> None:
        self.key = key
        self._store = store
        self._counter = HashingCounter()
        self._buffer = bytearray()
        self._uploads: _PartUploads | None = None
        self._done = False

    @property
    def size_bytes(self) -> int:
        """Bytes written so far."""
        return self._counter.size_bytes

    def _check_open(self) -> None:
        if self._done:
            raise BlobWriteAborted(f"write to {self.key.value!r} already finished")

    def write(self, data: bytes) -> None:
        """Appends bytes; uploads a part whenever one is full."""
        self._check_open()
        if not data:
            return
        self._counter.update(data)
        self._buffer += data
        try:
            while len(self._buffer) >= self._next_part_size():
                if self._uploads is None:
                    upload_id = self._store._create_upload(self.key)
                    self._uploads = _PartUploads(self._store, self.key, upload_id, [])
                self._uploads.upload(_take(self._buffer, self._next_part_size()))
        except BaseException:
            self.abort()
            raise

    def _next_part_size(self) -> int:
        return _part_size(1 if self._uploads is None else self._uploads.next_number)

    def sha256_hex(self) -> str:
        """Lowercase hex SHA-256 of everything written so far."""
        return self._counter.hexdigest()

    def commit(self) -> BlobInfo:
        """Uploads the rest and completes the upload: the object appears whole."""
        self._check_open()
        try:
            if self._uploads is None:
                self._store._put(self.key, bytes(self._buffer))
            else:
                if self._buffer:
                    self._uploads.upload(_take(self._buffer, len(self._buffer)))
                self._uploads.complete()
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._buffer = bytearray()
        return BlobInfo(key=self.key, size_bytes=self.size_bytes, sha256=self.sha256_hex())

    def abort(self) -> None:
        """Throws the written bytes away and aborts the multipart upload."""
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        if self._uploads is not None:
            self._uploads.abort()

    def __enter__(self) -> _S3BlobWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()


class _S3ResumableWriter:
    """One stream of a resumable write into the key's multipart upload.

    Bytes are committed in whole parts only: a part goes up whenever 8 MiB are
    buffered, and `checkpoint` sends what is buffered once it reaches S3's
    5 MiB minimum. So `committed_size` may lag what was written by up to one
    part; `close` drops that tail and the next stream resends it.
    """

    def __init__(
        self, store: S3BlobStore, key: StorageKey, upload_id: str, parts: list[_Part]
    ) -> None:
        self.key = key
        self._store = store
        self._uploads = _PartUploads(store, key, upload_id, parts)
        self.committed_size = self._uploads.committed_size
        self._buffer = bytearray()
        self._done = False

    @property
    def size_bytes(self) -> int:
        """Committed bytes plus those this stream sent or buffered."""
        return self._uploads.sent_size + len(self._buffer)

    def _check_open(self) -> None:
        if self._done:
            raise BlobWriteAborted(f"write to {self.key.value!r} already finished")

    def write(self, data: bytes) -> None:
        """Appends bytes; uploads a part whenever one is full."""
        self._check_open()
        self._buffer += data
        try:
            while len(self._buffer) >= _part_size(self._uploads.next_number):
                self._uploads.upload(_take(self._buffer, _part_size(self._uploads.next_number)))
        except BaseException:
            self.close()
            raise
        self.committed_size = self._uploads.committed_size

    def checkpoint(self) -> int:
        """Sends the buffered bytes if they make a valid part (5 MiB or more)
        and waits for the parts in flight; returns `committed_size`."""
        if not self._done:
            try:
                if len(self._buffer) >= MIN_PART_SIZE:
                    self._uploads.upload(_take(self._buffer, len(self._buffer)))
                self._uploads.wait_all()
            except BaseException:
                self.close()
                raise
            self.committed_size = self._uploads.committed_size
        return self.committed_size

    def finish(self) -> BlobInfo:
        """Uploads the tail as the last part and completes the upload (an
        empty object, which S3 cannot complete from no parts, is put instead)."""
        self._check_open()
        size = self.size_bytes
        try:
            if self._buffer:
                self._uploads.upload(_take(self._buffer, len(self._buffer)))
            self._uploads.wait_all()
            if self._uploads.parts:
                self._uploads.complete()
            else:
                self._store._abort_upload(self.key, self._uploads.upload_id)
                self._store._put(self.key, b"")
        except BaseException:
            self.close()
            raise
        self._done = True
        self.committed_size = size
        return BlobInfo(key=self.key, size_bytes=size)

    def close(self) -> int:
        """Ends this stream: the parts in flight finish, the unsent tail is
        dropped; returns `committed_size`."""
        if not self._done:
            self._done = True
            self._buffer = bytearray()
            with contextlib.suppress(BlobStoreError):
                self._uploads.wait_all()
            self.committed_size = self._uploads.committed_size
        return self.committed_size

    def abort(self) -> None:
        """Drops the whole write: aborts the multipart upload."""
        self._done = True
        self._buffer = bytearray()
        self._uploads.abort()


# -- reads ---------------------------------------------------------------------------


class _S3Reader(io.RawIOBase):
    """A seekable, read-only file over one object, by ranged GETs.

    Each GET fetches at least the read-ahead (4 MiB, growing to 16 MiB while
    reads are sequential), so small reads and seeks near each other (PyAV
    reading an MP4 index at the end) cost few requests. `read(n)` returns n
    bytes unless the object ends first. Every GET is pinned to the version
    opened (If-Match on the ETag): a replaced object fails the read instead
    of mixing two versions.
    """

    def __init__(self, store: S3BlobStore, key: StorageKey, size: int, etag: str | None) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._size = size
        self._etag = etag
        self._position = 0
        self._buffer = b""
        self._buffer_start = 0
        self._read_ahead = READ_AHEAD_BYTES

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _check_not_closed(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def tell(self) -> int:
        self._check_not_closed()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_not_closed()
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence!r})")
        if position < 0:
            raise ValueError("negative seek position")
        self._position = position
        return position

    def readinto(self, target: Any) -> int:
        """Fills `target` from the current position; fewer bytes only at the end."""
        self._check_not_closed()
        with memoryview(target) as view, view.cast("B") as out:
            filled = 0
            while filled < len(out) and self._position < self._size:
                filled += self._copy_from_buffer(out[filled:])
                wanted = min(len(out) - filled, self._size - self._position)
                if wanted == 0:
                    break
                if wanted >= self._read_ahead:
                    # A large read goes straight into the caller's buffer.
                    data = self._fetch(self._position, self._position + wanted)
                    out[filled : filled + wanted] = data
                    filled += wanted
                    self._position += wanted
                else:
                    self._fill_buffer()
            return filled

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes (all the rest for -1 or None)."""
        self._check_not_closed()
        remaining = max(0, self._size - self._position)
        wanted = remaining if size is None or size < 0 else min(size, remaining)
        if wanted == 0:
            return b""
        buffered_end = self._buffer_start + len(self._buffer)
        if self._buffer_start <= self._position and self._position + wanted <= buffered_end:
            offset = self._position - self._buffer_start
            self._position += wanted
            return self._buffer[offset : offset + wanted]
        if wanted >= self._read_ahead and not self._buffered_at_position():
            data = self._fetch(self._position, self._position + wanted)
            self._position += wanted
            return data
        out = bytearray(wanted)
        count = self.readinto(out)
        del out[count:]
        return bytes(out)

    def readall(self) -> bytes:
        return self.read(-1)

    def _buffered_at_position(self) -> bool:
        return self._buffer_start <= self._position < self._buffer_start + len(self._buffer)

    def _copy_from_buffer(self, out: memoryview) -> int:
        if not self._buffered_at_position():
            return 0
        offset = self._position - self._buffer_start
        count = min(len(out), len(self._buffer) - offset)
        out[:count] = self._buffer[offset : offset + count]
        self._position += count
        return count

    def _fill_buffer(self) -> None:
        sequential = self._buffer and self._position == self._buffer_start + len(self._buffer)
        self._read_ahead = (
            min(self._read_ahead * 2, MAX_READ_AHEAD_BYTES) if sequential else READ_AHEAD_BYTES
        )
        end = min(self._position + self._read_ahead, self._size)
        self._buffer = self._fetch(self._position, end)
        self._buffer_start = self._position

    def _fetch(self, start: int, end: int) -> bytes:
        return self._store._get_range(self._key, start, end, self._etag)

    def close(self) -> None:
        self._buffer = b""
        super().close()
