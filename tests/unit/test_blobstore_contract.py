"""The BlobStore contract: one suite every backend must pass.

Backends are entries of `BACKENDS` (a name and a factory); the `backend` fixture
is parametrised over them and `store` is its store, so a new backend is one more
entry. A factory yields a `Backend`: the store plus what the suite needs to look
behind its back (traces of unfinished writes) and what the backend may
legitimately differ in (commit granularity of resumable writes, free space,
longest key). Behaviour only one backend has stays in that backend's own tests
(`test_local_blobstore.py`); the S3 backend's own tests are at the end of this
file, because they need the same S3 server.

The S3 backends run against a real S3-protocol server (moto_server in a
subprocess, see `support/s3.py`), one fresh bucket per test.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import os
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import av
import pytest
from unit.test_storage_keys import HOSTILE_KEYS, VALID_KEYS

from videojobs.storage.blobstore import (
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    BlobWriteAborted,
    put_bytes,
)
from videojobs.storage.factory import UnsupportedStorageUrl, open_blob_store
from videojobs.storage.keys import MAX_KEY_BYTES, InvalidStorageKey, StorageKey
from videojobs.storage.local import PARTIAL_DIR, LocalBlobStore
from videojobs.storage.s3 import (
    MIN_PART_SIZE,
    PART_SIZE,
    READ_AHEAD_BYTES,
    KeyTooLongForStore,
    S3BlobStore,
    StorageUnavailable,
)

from support import s3 as s3_support
from support.remote_store import ThreadedJobService, admin_view, remote_store
from support.s3 import S3Server
from support.waiting import eventually_sync

MIB = 1024 * 1024

# The S3 server fixtures (session-wide server, fresh bucket per test).
s3_server = s3_support.s3_server
s3_bucket = s3_support.s3_bucket


@dataclass
class Backend:
    """A store under test and how to look behind its back."""

    name: str
    store: BlobStore
    # Traces of unfinished writes the backend keeps (temporary files,
    # unfinished multipart uploads): some name of each -> the bytes it holds.
    leftovers: Callable[[], dict[str, int]]
    # A resumable write commits in steps of at most this many bytes (0: every
    # byte it receives is committed when the stream ends).
    resumable_step: int
    # Whether available_bytes() reports a number (object stores report None).
    reports_free_space: bool
    # The longest key the store holds (a prefix takes room in S3's 1024 bytes).
    max_key_bytes: int = MAX_KEY_BYTES
    # The longest segment it holds (a file name has at most NAME_MAX bytes).
    max_segment_bytes: int = MAX_KEY_BYTES
    # Contract points the backend is known to miss (name -> reason); the test
    # is then expected to fail, and reports when it starts passing.
    known_gaps: dict[str, str] = field(default_factory=dict)
    # Whether the store itself lists, deletes, renames and sweeps. A worker's
    # store through BlobService does not (job-service keeps that to itself):
    # it must refuse, and the suite looks at job-service's storage instead.
    offers_admin: bool = True
    # Where the suite lists and deletes to check on the store (the store itself
    # unless it offers no such thing).
    admin: BlobStore | None = None

    @property
    def view(self) -> BlobStore:
        """The store to list and delete through."""
        return self.admin if self.admin is not None else self.store


def _refuses_admin(backend: Backend) -> bool:
    """For a backend that offers no listing, deleting, renaming or sweeping:
    checks that it refuses each (BlobStoreError), and says the test is done."""
    if backend.offers_admin:
        return False
    key = StorageKey("admin/probe")
    for operation in (
        lambda: list(backend.store.list()),
        lambda: backend.store.delete(key),
        lambda: backend.store.delete_prefix(key),
        lambda: backend.store.rename(key, StorageKey("admin/other")),
    ):
        with pytest.raises(BlobStoreError):
            operation()
    assert backend.store.sweep_partial_writes(0) == 0
    return True


def _expect_known_gap(backend: Backend, request: pytest.FixtureRequest, gap: str) -> None:
    if gap in backend.known_gaps:
        request.applymarker(pytest.mark.xfail(strict=True, reason=backend.known_gaps[gap]))


BackendFactory = Callable[[pytest.FixtureRequest], AbstractContextManager[Backend]]


@contextlib.contextmanager
def local_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    root = request.getfixturevalue("tmp_path") / "store"
    store = LocalBlobStore(root)

    def leftovers() -> dict[str, int]:
        partial = root / PARTIAL_DIR
        files = [p for p in partial.rglob("*") if p.is_file()]
        return {str(p.relative_to(partial)): p.stat().st_size for p in files}

    yield Backend(
        "local",
        store,
        leftovers,
        resumable_step=0,
        reports_free_space=True,
        max_segment_bytes=os.pathconf(root, "PC_NAME_MAX"),
    )


def _s3_backend(prefix: str | None) -> BackendFactory:
    @contextlib.contextmanager
    def factory(request: pytest.FixtureRequest) -> Iterator[Backend]:
        server: S3Server = request.getfixturevalue("s3_server")
        bucket = server.create_bucket()
        store = S3BlobStore(bucket, prefix, **server.store_arguments())
        client = server.client()

        def leftovers() -> dict[str, int]:
            uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            return {
                f"{upload['Key']} {upload['UploadId']}": sum(
                    part["Size"]
                    for part in client.list_parts(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    ).get("Parts", [])
                )
                for upload in uploads
            }

        try:
            yield Backend(
                "s3" if prefix is None else "s3-prefix",
                store,
                leftovers,
                resumable_step=PART_SIZE,
                reports_free_space=False,
                max_key_bytes=store.max_key_bytes,
            )
        finally:
            store.close()

    return factory


@pytest.fixture(scope="module")
def remote_server(tmp_path_factory, sample_mp4: bytes) -> Iterator[ThreadedJobService]:
    """One job-service for the remote backend's tests, and a lease on one job."""
    server = ThreadedJobService(
        tmp_path_factory.mktemp("remote"), lease_duration=3600.0, heartbeat_interval=60.0
    ).start(sample_mp4)
    yield server
    server.stop()


@contextlib.contextmanager
def remote_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The store a worker uses with only job-service's address: every call goes
    through BlobService, holding a lease; each test writes below its own
    part of the attempt's prefix."""
    server: ThreadedJobService = request.getfixturevalue("remote_server")
    sub_prefix = f"t{uuid.uuid4().hex[:8]}"
    store = remote_store(server, sub_prefix)
    server_root = server.storage_root

    def partial_files() -> dict[str, int]:
        partial = server_root / PARTIAL_DIR
        files = [p for p in partial.rglob("*") if p.is_file()]
        return {str(p.relative_to(partial)): p.stat().st_size for p in files}

    # The server is shared by the module's tests: what earlier ones left is not ours.
    earlier = set(partial_files())

    def leftovers() -> dict[str, int]:
        return {name: size for name, size in partial_files().items() if name not in earlier}

    prefix_bytes = len(server.output_prefix) + len(sub_prefix) + 2
    try:
        yield Backend(
            "remote",
            store,
            leftovers,
            resumable_step=0,
            reports_free_space=False,
            max_key_bytes=MAX_KEY_BYTES - prefix_bytes,
            max_segment_bytes=os.pathconf(server_root, "PC_NAME_MAX"),
            offers_admin=False,
            admin=admin_view(server, sub_prefix),
            known_gaps={
                "status-of-an-empty-resumable-write": "QueryWriteStatus (ByteStream) says 0 "
                "bytes for a write that has not started and for one that committed none",
            },
        )
    finally:
        store.close()


# The registry: one entry per backend.
BACKENDS: dict[str, BackendFactory] = {
    "local": local_backend,
    "s3": _s3_backend(None),
    "s3-prefix": _s3_backend("videojobs/data"),
    "remote": remote_backend,
}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each backend in turn."""
    with BACKENDS[request.param](request) as harness:
        yield harness


@pytest.fixture
def store(backend: Backend) -> BlobStore:
    """The store of the backend under test."""
    return backend.store


def _read_all(store: BlobStore, key: StorageKey) -> bytes:
    with store.open_read(key) as reader:
        return reader.read()


def _uneven_chunks(data: bytes, seed: int = 7) -> Iterator[bytes]:
    """`data` in chunks of 0 to ~3 MiB, none a multiple of anything in particular."""
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        size = rng.choice([0, 1, 17, 65_537, 1_000_003, 3 * MIB + 11])
        yield data[position : position + size]
        position += size


def _random_bytes(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


# -- atomic writes -------------------------------------------------------------------


def test_write_commit_read_round_trip(store: BlobStore, backend: Backend) -> None:
    """Bytes written in chunks and committed read back identically; the returned
    info has the total size and the SHA-256 of exactly those bytes."""
    chunks = [b"\x00\x01binary", os.urandom(70_000), b"", b"tail"]
    data = b"".join(chunks)
    key = StorageKey("jobs/abc/input/source.mp4")
    with store.open_writer(key) as writer:
        for chunk in chunks:
            writer.write(chunk)
        assert writer.size_bytes == len(data)
        assert writer.sha256_hex() == hashlib.sha256(data).hexdigest()
        info = writer.commit()
    assert info.key == key
    assert info.size_bytes == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.exists(key)
    assert store.stat(key).size_bytes == len(data)
    assert _read_all(store, key) == data
    assert backend.leftovers() == {}


def test_multipart_object_round_trip(store: BlobStore, backend: Backend) -> None:
    """A 20 MiB object written in uneven chunks (several S3 parts, the last one
    short) reads back byte for byte; nothing of the write is left behind."""
    data = _random_bytes(20 * MIB + 12_345)
    key = StorageKey("jobs/big/input/source.bin")
    with store.open_writer(key) as writer:
        for chunk in _uneven_chunks(data):
            writer.write(chunk)
        info = writer.commit()
    assert info.size_bytes == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert store.stat(key).size_bytes == len(data)
    assert _read_all(store, key) == data
    assert backend.leftovers() == {}


def test_empty_object_round_trip(store: BlobStore) -> None:
    """A write of nothing commits an empty object."""
    key = StorageKey("empty")
    info = put_bytes(store, key, b"")
    assert info.size_bytes == 0
    assert info.sha256 == hashlib.sha256(b"").hexdigest()
    assert store.stat(key).size_bytes == 0
    assert _read_all(store, key) == b""


def test_nothing_is_visible_before_commit(store: BlobStore, backend: Backend) -> None:
    """Until commit, the key has no object (also once parts went up), and an
    older object under it stays as it was."""
    key, older = StorageKey("jobs/x/out.bin"), StorageKey("jobs/x/older.bin")
    put_bytes(store, older, b"old version")
    for size in (10, PART_SIZE + 1):
        with store.open_writer(key) as writer:
            writer.write(_random_bytes(size))
            assert not store.exists(key)
            with pytest.raises(BlobNotFound):
                store.stat(key)
            with pytest.raises(BlobNotFound):
                store.open_read(key)
            assert [i.key.value for i in backend.view.list()] == [older.value]
            writer.commit()
        assert store.stat(key).size_bytes == size
        backend.view.delete(key)
    with store.open_writer(older) as writer:
        writer.write(_random_bytes(PART_SIZE + 1))
        assert _read_all(store, older) == b"old version"
        writer.commit()
    assert store.stat(older).size_bytes == PART_SIZE + 1


def test_commit_replaces_an_existing_object(store: BlobStore) -> None:
    """A second committed write under the same key replaces the first."""
    key = StorageKey("a/b")
    put_bytes(store, key, b"first version, longer")
    info = put_bytes(store, key, b"second")
    assert info.size_bytes == len(b"second")
    assert _read_all(store, key) == b"second"


@pytest.mark.parametrize("size", [10, PART_SIZE + 5], ids=["small", "multipart"])
def test_leaving_a_writer_without_commit_leaves_nothing(
    store: BlobStore, backend: Backend, size: int
) -> None:
    """Leaving the writer block without commit (normally or by an exception)
    leaves no object under the key and no unfinished write behind."""
    key = StorageKey("jobs/x/input/source.mp4")
    data = _random_bytes(size)
    with store.open_writer(key) as writer:
        writer.write(data)
    assert not store.exists(key)
    assert backend.leftovers() == {}

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.open_writer(key) as writer:
        writer.write(data)
        raise Boom
    assert not store.exists(key)
    assert list(backend.view.list()) == []
    assert backend.leftovers() == {}
    with pytest.raises(BlobNotFound):
        store.stat(key)


def test_writer_refuses_use_after_abort_or_commit(store: BlobStore, backend: Backend) -> None:
    """After abort or commit, write and commit raise BlobWriteAborted; abort is
    safe to repeat and does not undo a commit."""
    key = StorageKey("k")
    writer = store.open_writer(key)
    writer.write(_random_bytes(PART_SIZE + 1))
    writer.abort()
    writer.abort()
    for action in (lambda: writer.write(b"y"), writer.commit):
        with pytest.raises(BlobWriteAborted):
            action()
    assert not store.exists(key)
    assert backend.leftovers() == {}

    with store.open_writer(key) as writer:
        writer.write(b"z")
        writer.commit()
        with pytest.raises(BlobWriteAborted):
            writer.write(b"more")
        with pytest.raises(BlobWriteAborted):
            writer.commit()
    assert _read_all(store, key) == b"z"


# -- reads ---------------------------------------------------------------------------


def test_seeking_reads_at_arbitrary_offsets(store: BlobStore) -> None:
    """Reads after seeks (from the start, the current position and the end)
    return exactly the stored bytes, across read-ahead boundaries, up to and
    past the end."""
    size = 2 * READ_AHEAD_BYTES + 4321
    data = _random_bytes(size, seed=3)
    key = StorageKey("media/clip.mp4")
    put_bytes(store, key, data)
    with store.open_read(key) as reader:
        assert reader.seekable() and reader.readable()
        assert reader.tell() == 0
        assert reader.read(10) == data[:10]
        assert reader.tell() == 10
        probes = [
            (0, 1),
            (1, 100),
            (READ_AHEAD_BYTES - 3, 7),  # straddles a read-ahead boundary
            (READ_AHEAD_BYTES, 5),
            (size // 2, READ_AHEAD_BYTES + 99),  # larger than the read-ahead
            (size - 1, 1),
            (size - 1, 10),  # runs into the end: short
            (123_457, 65_536),
            (0, size),
        ]
        for offset, count in probes:
            assert reader.seek(offset) == offset
            assert reader.read(count) == data[offset : offset + count], (offset, count)
            assert reader.tell() == min(offset + count, size)
        assert reader.seek(size) == size
        assert reader.read(10) == b""
        assert reader.seek(size + 100) == size + 100
        assert reader.read(1) == b""
        assert reader.seek(-1000, io.SEEK_END) == size - 1000
        assert reader.read() == data[-1000:]
        reader.seek(50)
        assert reader.seek(25, io.SEEK_CUR) == 75
        assert reader.read(25) == data[75:100]
        buffer = bytearray(70_000)
        reader.seek(READ_AHEAD_BYTES - 35_000)
        assert reader.readinto(buffer) == len(buffer)
        assert bytes(buffer) == data[READ_AHEAD_BYTES - 35_000 : READ_AHEAD_BYTES + 35_000]
        reader.seek(0)
        assert reader.read() == data
        with pytest.raises((ValueError, OSError)):
            reader.seek(-1)


def test_random_reads_match_the_bytes(store: BlobStore) -> None:
    """Reads at random offsets and of random lengths match the bytes."""
    data = _random_bytes(READ_AHEAD_BYTES + 70_001, seed=5)
    key = StorageKey("media/random.bin")
    put_bytes(store, key, data)
    rng = random.Random(11)
    with store.open_read(key) as reader:
        for _ in range(60):
            offset = rng.randrange(0, len(data) + 10)
            count = rng.choice([1, 4096, 32_768, rng.randrange(1, 2 * MIB)])
            reader.seek(offset)
            assert reader.read(count) == data[offset : offset + count], (offset, count)


def test_pyav_decodes_an_mp4_through_open_read(store: BlobStore, sample_mp4: bytes) -> None:
    """PyAV opens and decodes an MP4 from the file object open_read returns
    (it seeks to the index and back)."""
    key = StorageKey("jobs/v/input/source.mp4")
    put_bytes(store, key, sample_mp4)
    with store.open_read(key) as reader, av.open(reader, mode="r", format="mp4") as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 50


def test_closed_reader_refuses_reads(store: BlobStore) -> None:
    """After close, reading raises ValueError (like any closed file)."""
    key = StorageKey("c")
    put_bytes(store, key, b"abc")
    reader = store.open_read(key)
    reader.close()
    assert reader.closed
    with pytest.raises(ValueError):
        reader.read(1)


# -- stat, exists, delete, list --------------------------------------------------------


def test_stat_reports_size_and_modification_time(store: BlobStore) -> None:
    """stat gives the size and when the object was written (near now)."""
    key = StorageKey("s/t.bin")
    put_bytes(store, key, b"12345")
    info = store.stat(key)
    assert info.key == key
    assert info.size_bytes == 5
    assert info.modified_at is not None
    assert abs(info.modified_at - datetime.now(UTC)) < timedelta(minutes=5)


def test_missing_key_raises_blob_not_found(store: BlobStore, backend: Backend) -> None:
    """stat/open_read of a missing key raise BlobNotFound naming the key; exists
    is False; deleting it is fine."""
    put_bytes(store, StorageKey("dir/file"), b"x")
    for text in ("missing.bin", "dir/missing", "dir", "dir/file/below"):
        key = StorageKey(text)
        for operation in (store.stat, store.open_read):
            with pytest.raises(BlobNotFound) as caught:
                operation(key)
            assert caught.value.key == key
            assert text in str(caught.value)
        assert not store.exists(key)
        if text != "dir":
            backend.view.delete(key)
    assert store.exists(StorageKey("dir/file"))


def test_deleting_a_key_with_objects_below_it_is_fine(
    store: BlobStore, backend: Backend, request: pytest.FixtureRequest
) -> None:
    """A key that names no object but has objects below it (`dir` of
    `dir/file`) is a missing object: delete does nothing and raises nothing."""
    _expect_known_gap(backend, request, "delete-of-a-directory-key")
    if _refuses_admin(backend):
        return
    put_bytes(store, StorageKey("dir/file"), b"x")
    store.delete(StorageKey("dir"))
    assert store.exists(StorageKey("dir/file"))


def test_delete_removes_only_that_object(store: BlobStore, backend: Backend) -> None:
    """delete removes the object and nothing next to or below its name."""
    if _refuses_admin(backend):
        return
    for text in ("a/b", "a/bc", "a/b.txt", "a/c"):
        put_bytes(store, StorageKey(text), text.encode())
    store.delete(StorageKey("a/b"))
    assert not store.exists(StorageKey("a/b"))
    assert [i.key.value for i in store.list()] == ["a/b.txt", "a/bc", "a/c"]


def test_list_is_sorted_and_segment_wise(store: BlobStore, backend: Backend) -> None:
    """list(prefix) gives the objects below the prefix only (`jobs/a` does not
    list `jobs/ab` or `jobs/a.bin`), sorted by key, with their sizes; list()
    gives all objects."""
    if _refuses_admin(backend):
        return
    contents = {
        "jobs/a/z.bin": b"1",
        "jobs/a/b/c.bin": b"22",
        "jobs/a/a.bin": b"333",
        "jobs/ab/x.bin": b"4444",
        "jobs/a.bin": b"55555",
        "jobs/a-b/y": b"7",
        "other/y": b"666666",
    }
    for text, data in contents.items():
        put_bytes(store, StorageKey(text), data)
    prefix = StorageKey("jobs/a")
    listed = list(store.list(prefix))
    expected = sorted(k for k in contents if StorageKey(k).is_within(prefix))
    assert [info.key.value for info in listed] == expected
    assert [info.size_bytes for info in listed] == [len(contents[k]) for k in expected]
    assert all(info.modified_at is not None for info in listed)
    assert [info.key.value for info in store.list()] == sorted(contents)
    assert [i.key.value for i in store.list(StorageKey("jobs"))] == sorted(
        k for k in contents if k.startswith("jobs/")
    )


def test_list_of_missing_or_object_prefix_is_empty(store: BlobStore, backend: Backend) -> None:
    """A prefix with nothing below it lists nothing, also when the prefix is an object."""
    if _refuses_admin(backend):
        return
    put_bytes(store, StorageKey("a/b"), b"x")
    assert list(store.list(StorageKey("nothing/here"))) == []
    assert list(store.list(StorageKey("a/b"))) == []
    assert [i.key.value for i in store.list(StorageKey("a"))] == ["a/b"]


def test_delete_prefix_counts_and_is_segment_wise(store: BlobStore, backend: Backend) -> None:
    """delete_prefix removes every object below the prefix and returns how many;
    a sibling sharing a string prefix survives."""
    if _refuses_admin(backend):
        return
    below = ["jobs/a/1", "jobs/a/2", "jobs/a/x/3", "jobs/a/x/y/4"]
    survivors = ["jobs/ab/1", "jobs/a.txt", "jobs/a-b", "other/a/1"]
    for text in below + survivors:
        put_bytes(store, StorageKey(text), text.encode())
    assert store.delete_prefix(StorageKey("jobs/a")) == len(below)
    assert [i.key.value for i in store.list()] == sorted(survivors)
    assert store.delete_prefix(StorageKey("jobs/a")) == 0


# -- rename ----------------------------------------------------------------------------


def test_rename_moves_the_object(store: BlobStore, backend: Backend) -> None:
    """rename moves the bytes to the target (replacing what was there); the
    source is gone; a missing source raises BlobNotFound; renaming onto itself
    keeps the object."""
    if _refuses_admin(backend):
        return
    data = _random_bytes(MIB + 7)
    source, target = StorageKey("staging/upload.bin"), StorageKey("jobs/j/input/source.bin")
    put_bytes(store, source, data)
    put_bytes(store, target, b"to be replaced")
    info = store.rename(source, target)
    assert info.key == target
    assert info.size_bytes == len(data)
    assert not store.exists(source)
    assert _read_all(store, target) == data
    assert [i.key.value for i in store.list()] == [target.value]

    with pytest.raises(BlobNotFound) as caught:
        store.rename(source, StorageKey("elsewhere"))
    assert caught.value.key == source
    assert not store.exists(StorageKey("elsewhere"))

    assert store.rename(target, target).size_bytes == len(data)
    assert _read_all(store, target) == data
    assert backend.leftovers() == {}


# -- resumable writes -----------------------------------------------------------------


def test_resumable_write_survives_a_broken_stream(store: BlobStore, backend: Backend) -> None:
    """A stream that ends after some bytes keeps what it committed (never more
    than it sent, at most one commit step less); a new stream resumes from
    `committed_size`, and finishing gives exactly the bytes."""
    key = StorageKey("jobs/r/input/source.bin")
    data = _random_bytes(PART_SIZE + 3 * MIB + 77, seed=9)
    assert store.resumable_status(key) is None

    first = store.open_resumable(key)
    assert first.committed_size == 0
    sent = PART_SIZE + 2 * MIB + 5
    for chunk in _uneven_chunks(data[:sent]):
        first.write(chunk)
    assert first.size_bytes == sent
    committed = first.close()
    assert committed <= sent
    assert committed >= sent - backend.resumable_step
    assert store.resumable_status(key) == committed
    assert not store.exists(key)
    assert list(backend.view.list()) == []

    second = store.open_resumable(key)
    assert second.committed_size == committed
    assert second.size_bytes == committed
    for chunk in _uneven_chunks(data[committed:], seed=3):
        second.write(chunk)
    info = second.finish()
    assert info.key == key
    assert info.size_bytes == len(data)
    assert _read_all(store, key) == data
    assert store.resumable_status(key) is None
    assert backend.leftovers() == {}
    with pytest.raises(BlobWriteAborted):
        second.write(b"more")


def test_resumable_checkpoint_is_durable(store: BlobStore) -> None:
    """What checkpoint reports as committed is what the next stream finds,
    after one and after several checkpoints."""
    key = StorageKey("jobs/c/input/source.bin")
    data = _random_bytes(MIN_PART_SIZE + MIB + PART_SIZE + 2 * MIB, seed=4)
    writer = store.open_resumable(key)
    writer.write(data[:100])
    early = writer.checkpoint()
    assert 0 <= early <= 100
    writer.write(data[100 : MIN_PART_SIZE + MIB])
    committed = writer.checkpoint()
    assert early <= committed <= MIN_PART_SIZE + MIB
    assert writer.committed_size == committed
    assert writer.close() == committed
    assert store.resumable_status(key) == committed

    writer = store.open_resumable(key)
    assert writer.committed_size == committed
    writer.write(data[committed:])
    final = writer.checkpoint()
    assert committed <= final <= len(data)
    assert writer.close() == final
    writer = store.open_resumable(key)
    assert writer.committed_size == final
    writer.write(data[final:])
    writer.finish()
    assert _read_all(store, key) == data


def test_small_and_empty_resumable_writes(
    store: BlobStore, backend: Backend, request: pytest.FixtureRequest
) -> None:
    """A resumable write smaller than a part, and one of no bytes at all, finish
    into exactly those objects."""
    _expect_known_gap(backend, request, "status-of-an-empty-resumable-write")
    small, empty = StorageKey("r/small"), StorageKey("r/empty")
    writer = store.open_resumable(small)
    writer.write(b"hello ")
    writer.write(b"world")
    assert writer.finish().size_bytes == 11
    assert _read_all(store, small) == b"hello world"

    writer = store.open_resumable(empty)
    assert store.resumable_status(empty) == 0
    assert writer.finish().size_bytes == 0
    assert store.stat(empty).size_bytes == 0
    assert store.resumable_status(empty) is None
    assert backend.leftovers() == {}


def test_resumable_status_is_none_without_a_write_in_progress(store: BlobStore) -> None:
    """No write, or only a finished object under the key: None."""
    key = StorageKey("r/done")
    assert store.resumable_status(key) is None
    put_bytes(store, key, b"complete")
    assert store.resumable_status(key) is None


def test_resumable_abort_drops_everything(store: BlobStore, backend: Backend) -> None:
    """abort drops committed bytes too: no object, no status, nothing left;
    a new stream starts from zero."""
    if _refuses_admin(backend):
        return
    key = StorageKey("jobs/a/input/source.bin")
    writer = store.open_resumable(key)
    writer.write(_random_bytes(PART_SIZE + MIB))
    writer.close()
    writer = store.open_resumable(key)
    writer.abort()
    assert store.resumable_status(key) is None
    assert not store.exists(key)
    assert backend.leftovers() == {}
    writer = store.open_resumable(key)
    assert writer.committed_size == 0
    writer.abort()
    assert backend.leftovers() == {}


def test_resumable_writes_of_different_keys_are_separate(store: BlobStore) -> None:
    """Two keys, one a string prefix of the other, keep separate resumable writes."""
    short, longer = StorageKey("up/a"), StorageKey("up/ab")
    one = store.open_resumable(short)
    one.write(_random_bytes(PART_SIZE, seed=1))
    one.close()
    assert store.resumable_status(longer) is None
    two = store.open_resumable(longer)
    assert two.committed_size == 0
    two.write(b"other")
    two.finish()
    one = store.open_resumable(short)
    one.write(_random_bytes(PART_SIZE, seed=1)[one.committed_size :])
    one.finish()
    assert _read_all(store, longer) == b"other"
    assert _read_all(store, short) == _random_bytes(PART_SIZE, seed=1)


# -- sweeping -----------------------------------------------------------------------


def test_sweep_removes_only_stale_partial_writes(store: BlobStore, backend: Backend) -> None:
    """Unfinished atomic and resumable writes that are recent survive a sweep
    with a long threshold; with no threshold they go (once the clock has moved
    past them); committed objects never do."""
    if _refuses_admin(backend):
        return
    put_bytes(store, StorageKey("committed"), b"c")
    resumable_key = StorageKey("jobs/s/input/source.bin")
    resumable = store.open_resumable(resumable_key)
    resumable.write(_random_bytes(PART_SIZE + 1))
    resumable.close()
    writer = store.open_writer(StorageKey("jobs/s/out.bin"))
    writer.write(_random_bytes(PART_SIZE + 1))
    try:
        # Both hold their first part (S3 uploads parts in the background).
        eventually_sync(
            lambda: sum(backend.leftovers().values()) >= 2 * PART_SIZE,
            timeout=30,
            what="the bytes of both unfinished writes",
        )
        assert len(backend.leftovers()) == 2
        assert store.sweep_partial_writes(older_than_seconds=3600) == 0
        assert len(backend.leftovers()) == 2

        swept = [0]

        def everything_swept() -> bool:
            swept[0] += store.sweep_partial_writes(older_than_seconds=0)
            return swept[0] == 2

        eventually_sync(everything_swept, timeout=10, what="the sweep of both writes")
        assert backend.leftovers() == {}
        assert store.resumable_status(resumable_key) is None
        assert store.exists(StorageKey("committed"))
        assert store.sweep_partial_writes(older_than_seconds=0) == 0
    finally:
        writer.abort()


# -- keys ------------------------------------------------------------------------------


def test_every_valid_key_round_trips(store: BlobStore, backend: Backend) -> None:
    """Each of the project's valid-key examples stores, lists, reads and deletes
    under exactly that key. A key beyond a backend's limits (S3's 1024 bytes
    less a prefix, a filesystem's longest file name) is refused with a
    BlobStoreError or InvalidStorageKey, storing nothing. One key at a time: a
    filesystem cannot hold `a` and `a/b` at once."""
    for text in VALID_KEYS:
        key = StorageKey(text)
        longest_segment = max(len(segment.encode("utf-8")) for segment in key.segments)
        if (
            len(text.encode("utf-8")) > backend.max_key_bytes
            or longest_segment > backend.max_segment_bytes
        ):
            with pytest.raises((InvalidStorageKey, BlobStoreError)):
                put_bytes(store, key, b"x")
            assert list(backend.view.list()) == []
            assert backend.leftovers() == {}
            continue
        put_bytes(store, key, text.encode("utf-8"))
        assert store.exists(key), text
        assert store.stat(key).size_bytes == len(text.encode("utf-8"))
        assert _read_all(store, key) == text.encode("utf-8")
        assert [i.key.value for i in backend.view.list()] == [text]
        backend.view.delete(key)
        assert list(backend.view.list()) == []
    assert backend.leftovers() == {}


def test_invalid_keys_never_reach_the_store(store: BlobStore, backend: Backend) -> None:
    """Every hostile key of the key rules is refused by StorageKey, which every
    store method takes, so none reaches the backend; the store holds nothing."""
    for name, text in HOSTILE_KEYS:
        with pytest.raises(InvalidStorageKey):
            StorageKey(text)
        assert not isinstance(text, StorageKey), name
    assert list(backend.view.list()) == []
    assert backend.leftovers() == {}


# -- capacity and concurrency -----------------------------------------------------------


def test_available_bytes(store: BlobStore, backend: Backend) -> None:
    """A filesystem reports its free bytes; an object store reports None."""
    free = store.available_bytes()
    if backend.reports_free_space:
        assert isinstance(free, int) and free > 0
    else:
        assert free is None


def test_concurrent_use_from_many_threads(store: BlobStore, backend: Backend) -> None:
    """Many threads writing, reading, listing and deleting at once each see
    their own objects intact."""
    view = backend.view

    def work(n: int) -> None:
        key = StorageKey(f"threads/{n}/blob.bin")
        data = _random_bytes(50_000 + n, seed=n)
        put_bytes(store, key, data)
        assert _read_all(store, key) == data
        assert key in {i.key for i in view.list(StorageKey("threads"))}
        assert store.stat(key).size_bytes == len(data)
        view.delete(key)
        assert not store.exists(key)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(work, n) for n in range(24)]:
            future.result()
    assert list(view.list()) == []


# -- S3 only -------------------------------------------------------------------------------
# Behaviour of the S3 backend itself, against the same moto_server.


def _s3_store(server: S3Server, bucket: str, prefix: str | None = None, **options: Any):
    return S3BlobStore(bucket, prefix, **server.store_arguments(), **options)


def test_s3_keys_map_below_the_prefix(s3_server: S3Server, s3_bucket: str) -> None:
    """Keys become `<prefix>/<key>`; objects outside the prefix, or named so no
    key can have their name, are not listed, deleted or swept."""
    client = s3_server.client()
    with _s3_store(s3_server, s3_bucket, "tenant/data") as store:
        put_bytes(store, StorageKey("jobs/a/x.bin"), b"mine")
        foreign = ["tenant/database/x", "other/y", "tenant/data", "tenant/data/bad/../k"]
        foreign += ["tenant/data/dir/", "tenant/data/trailing."]
        for name in foreign:
            client.put_object(Bucket=s3_bucket, Key=name, Body=b"foreign")
        foreign_upload = client.create_multipart_upload(Bucket=s3_bucket, Key="other/upload")
        names = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"])
        assert "tenant/data/jobs/a/x.bin" in names
        assert [i.key.value for i in store.list()] == ["jobs/a/x.bin"]
        assert store.delete_prefix(StorageKey("jobs")) == 1
        assert store.sweep_partial_writes(older_than_seconds=0) == 0
        left = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"])
        assert left == sorted(foreign)
        uploads = client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]
        assert [u["UploadId"] for u in uploads] == [foreign_upload["UploadId"]]
        assert store.describe() == "S3 bucket " + s3_bucket + ", prefix tenant/data"


def test_s3_listing_and_deleting_page_through_results(
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    """Listings longer than a page (1000 in S3, lowered here) are followed to
    the end, and delete_prefix deletes in batches, for objects, unfinished
    uploads and parts alike."""
    with _s3_store(s3_server, s3_bucket, "p") as store:
        store._list_page_size = 7
        store._delete_batch = 4
        keys = [f"many/{n:03d}" for n in range(30)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda text: put_bytes(store, StorageKey(text), b"x"), keys))
        assert [i.key.value for i in store.list(StorageKey("many"))] == keys
        assert store.delete_prefix(StorageKey("many")) == len(keys)
        assert list(store.list()) == []

        client = s3_server.client()
        for n in range(10):
            client.create_multipart_upload(Bucket=s3_bucket, Key=f"p/up/{n}")
        key = StorageKey("up/3")
        writer = store.open_resumable(key)
        for _ in range(9):
            writer.write(_random_bytes(MIN_PART_SIZE, seed=2))
            writer.checkpoint()
        assert writer.close() == 9 * MIN_PART_SIZE
        assert store.resumable_status(key) == 9 * MIN_PART_SIZE
        assert store.sweep_partial_writes(older_than_seconds=-60) == 10
        assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") is None


def test_s3_key_too_long_for_the_prefix_is_refused(
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    """With a prefix, a key that is valid but would make the object key exceed
    S3's 1024 bytes is refused before any request, as an InvalidStorageKey."""
    with _s3_store(s3_server, s3_bucket, "p") as store:
        assert store.max_key_bytes == 1022
        fits = StorageKey("/".join(["a" * 255] * 4)[:1022])  # 1022 bytes, segments <= 255
        too_long = StorageKey(fits.value + "b")
        put_bytes(store, fits, b"ok")
        for operation in (store.open_writer, store.stat, store.open_resumable):
            with pytest.raises(KeyTooLongForStore):
                operation(too_long)
        with pytest.raises(InvalidStorageKey):
            store.rename(fits, too_long)
        assert [i.key for i in store.list()] == [fits]


def test_s3_rename_copies_large_objects_in_ranges(
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    """Above the single-copy limit (5 GiB in S3; lowered here) rename copies in
    ranges with UploadPartCopy; the bytes arrive intact, nothing is left over."""
    with _s3_store(s3_server, s3_bucket) as store:
        store._max_single_copy_bytes = 6 * MIB
        store._copy_part_size = 5 * MIB
        data = _random_bytes(13 * MIB + 3, seed=8)
        source, target = StorageKey("big/source"), StorageKey("big/target")
        put_bytes(store, source, data)
        assert store.rename(source, target).size_bytes == len(data)
        assert _read_all(store, target) == data
        assert not store.exists(source)
        assert s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads") is None


def test_s3_resume_keeps_the_newest_upload_only(
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    """Several unfinished uploads of one key (a race of two first streams):
    open_resumable continues one and aborts the others; uploads of other keys
    sharing the name as a prefix are left alone."""
    client = s3_server.client()
    for _ in range(3):
        client.create_multipart_upload(Bucket=s3_bucket, Key="up/key")
    client.create_multipart_upload(Bucket=s3_bucket, Key="up/key2")
    with _s3_store(s3_server, s3_bucket) as store:
        writer = store.open_resumable(StorageKey("up/key"))
        writer.close()
        keys = sorted(u["Key"] for u in client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"])
        assert keys == ["up/key", "up/key2"]


def test_s3_errors_name_the_key_but_not_the_store(
    s3_server: S3Server,
) -> None:
    """A missing bucket and an unreachable endpoint raise BlobStoreError (the
    latter the retryable StorageUnavailable) naming the key and the S3 error,
    never the bucket, endpoint or credentials."""
    missing_bucket = "no-such-bucket-" + os.urandom(4).hex()
    with _s3_store(s3_server, missing_bucket) as store:
        with pytest.raises(BlobStoreError) as caught:
            list(store.list())
        message = str(caught.value)
        assert "NoSuchBucket" in message
        with pytest.raises(BlobStoreError) as caught:
            put_bytes(store, StorageKey("jobs/k"), b"x")
        message += str(caught.value)
        assert "jobs/k" in str(caught.value)

    with socket_that_refuses() as port:
        endpoint = f"http://127.0.0.1:{port}"
        unreachable = S3BlobStore(
            "some-bucket",
            endpoint_url=endpoint,
            access_key_id="AKIDSECRETID",
            secret_access_key="VERYSECRETKEY",
            max_attempts=1,
            connect_timeout=2,
        )
        with unreachable, pytest.raises(StorageUnavailable) as caught:
            unreachable.stat(StorageKey("jobs/k"))
        assert caught.value.retryable
        message += str(caught.value)
        assert "jobs/k" in str(caught.value)
    for secret in (missing_bucket, "some-bucket", str(port), "127.0.0.1", "AKIDSECRETID"):
        assert secret not in message
    assert "VERYSECRETKEY" not in message


@contextlib.contextmanager
def socket_that_refuses() -> Iterator[int]:
    """A loopback port nobody listens on while the block runs (it was bound and
    closed; holding a bound, unlistened socket keeps others off it)."""
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


def test_s3_store_does_no_io_before_first_use_and_closes_cleanly(
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    """Constructing a store starts nothing (no thread, no client, even for an
    unreachable endpoint); the first call starts the loop thread; close stops
    it, and the store then refuses calls."""
    before = {t.ident for t in threading.enumerate()}
    S3BlobStore("some-bucket", endpoint_url="http://127.0.0.1:9", access_key_id="a")
    assert {t.ident for t in threading.enumerate()} == before

    store = _s3_store(s3_server, s3_bucket)
    put_bytes(store, StorageKey("x"), b"1")
    started = [t for t in threading.enumerate() if t.ident not in before]
    assert "videojobs-s3" in [t.name for t in started]
    store.close()
    store.close()
    assert [t.name for t in started if t.is_alive()] == []
    with pytest.raises(BlobStoreError):
        store.exists(StorageKey("x"))


def test_factory_opens_s3_urls(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> None:
    """`s3://bucket[/prefix]` opens an S3BlobStore configured from the AWS_*
    variables (read when the store is opened); bad bucket names, credentials or
    options in the URL and other schemes are refused without echoing the URL."""
    bucket = s3_server.create_bucket()
    for name, value in {
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": "videojobs-test",
        "AWS_SECRET_ACCESS_KEY": "videojobs-test-secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_REGION", raising=False)
    store = open_blob_store(f"s3://{bucket}/some/prefix/")
    assert isinstance(store, S3BlobStore)
    try:
        assert store.describe() == f"S3 bucket {bucket}, prefix some/prefix"
        put_bytes(store, StorageKey("k"), b"v")
        head = s3_server.client().head_object(Bucket=bucket, Key="some/prefix/k")
        assert head["ContentLength"] == 1
    finally:
        store.close()
    plain = open_blob_store(f"s3://{bucket}")
    assert isinstance(plain, S3BlobStore)
    assert plain.describe() == f"S3 bucket {bucket}, prefix (none)"

    for url in (
        "s3://",
        "s3://ab",
        "s3://Upper-Case",
        "s3://bad_underscore",
        "s3://192.168.1.1",
        "s3://a..b",
        "s3://key:SECRETVALUE@bucket/p",
        "s3://bucket:9000/p",
        "s3://bucket/p?region=x",
        "s3://bucket/../p",
        "gs://bucket",
        "http://host/dir",
    ):
        with pytest.raises(UnsupportedStorageUrl) as caught:
            open_blob_store(url)
        assert "SECRETVALUE" not in str(caught.value)


def test_s3_store_reads_region_and_credentials_from_given_environment() -> None:
    """Explicit arguments win over the variables; AWS_REGION wins over
    AWS_DEFAULT_REGION; explicit credentials are taken as a set."""
    environ = {
        "AWS_ENDPOINT_URL": "http://example.invalid:1",
        "AWS_ACCESS_KEY_ID": "env-id",
        "AWS_SECRET_ACCESS_KEY": "env-secret",
        "AWS_SESSION_TOKEN": "env-token",
        "AWS_REGION": "eu-central-1",
        "AWS_DEFAULT_REGION": "us-west-2",
    }
    from_env = S3BlobStore("bucket-one", environ=environ)._connection
    assert from_env.endpoint_url == "http://example.invalid:1"
    assert (from_env.access_key_id, from_env.session_token) == ("env-id", "env-token")
    assert from_env.region == "eu-central-1"
    del environ["AWS_REGION"]
    assert S3BlobStore("bucket-one", environ=environ)._connection.region == "us-west-2"
    explicit = S3BlobStore(
        "bucket-one",
        environ=environ,
        endpoint_url="http://127.0.0.1:2",
        access_key_id="id",
        secret_access_key="secret",
    )._connection
    assert explicit.endpoint_url == "http://127.0.0.1:2"
    assert (explicit.access_key_id, explicit.secret_access_key) == ("id", "secret")
    assert explicit.session_token is None
    with pytest.raises(ValueError):
        S3BlobStore("Not_A_Bucket", environ={})
    with pytest.raises(InvalidStorageKey):
        S3BlobStore("bucket-one", "a/../b", environ={})
