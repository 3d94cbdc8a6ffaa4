"""LocalBlobStore's own behaviour: containment inside the root (symlinks, the
reserved temporary area), the files it keeps, pruning of directories, sweeping
by file age, and the factory for local storage URLs. What every BlobStore does
is in test_blobstore_contract.py."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from videojobs.storage.blobstore import BlobNotFound, BlobWriteAborted, put_bytes
from videojobs.storage.factory import UnsupportedStorageUrl, open_blob_store
from videojobs.storage.keys import InvalidStorageKey, StorageKey
from videojobs.storage.local import PARTIAL_DIR, KeyOutsideRoot, LocalBlobStore


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> LocalBlobStore:
    return LocalBlobStore(root)


def _partial_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / PARTIAL_DIR).rglob("*") if p.is_file())


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_key_maps_to_a_path_below_the_root(store: LocalBlobStore, root: Path) -> None:
    """A committed object is the file at `<root>/<key>`, and its temp file is gone
    (round trips in general: test_blobstore_contract.py)."""
    data = b"\x00\x01binary" + os.urandom(70_000)
    key = StorageKey("jobs/abc/input/source.mp4")
    info = put_bytes(store, key, data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert (root / "jobs" / "abc" / "input" / "source.mp4").read_bytes() == data
    assert _partial_files(root) == []


def test_a_write_in_progress_is_one_temp_file(store: LocalBlobStore, root: Path) -> None:
    """An open write is one temp file in .partial, gone when the write is left
    without commit."""
    with store.open_writer(StorageKey("jobs/x/input/source.mp4")) as writer:
        writer.write(b"half an upload")
        assert len(_partial_files(root)) == 1
    assert _all_files(root) == []


def test_read_back_is_refused_after_abort_or_commit(store: LocalBlobStore) -> None:
    """read_back, like write and commit, raises BlobWriteAborted once the write
    is over (the rest of that rule: test_blobstore_contract.py)."""
    writer = store.open_writer(StorageKey("k"))
    writer.write(b"x")
    writer.abort()
    with pytest.raises(BlobWriteAborted):
        writer.read_back()
    with store.open_writer(StorageKey("k")) as writer:
        writer.write(b"z")
        writer.commit()
        with pytest.raises(BlobWriteAborted):
            writer.read_back()


def test_read_back_sees_bytes_before_commit(store: LocalBlobStore) -> None:
    """read_back shows what was written so far while the key is not yet visible."""
    key = StorageKey("uploads/check.bin")
    first, second = b"header-bytes", b"-and-the-rest"
    with store.open_writer(key) as writer:
        writer.write(first)
        with writer.read_back() as reader:
            assert reader.read() == first
        writer.write(second)
        with writer.read_back() as reader:
            assert reader.read() == first + second
        assert not store.exists(key)
        assert list(store.list()) == []
        writer.commit()
    assert store.exists(key)


def test_symlink_to_outside_breaks_containment(
    store: LocalBlobStore, root: Path, tmp_path: Path
) -> None:
    """A key through a symlink that leaves the root is not contained; writing and
    reading through it raise KeyOutsideRoot (an InvalidStorageKey) and touch nothing."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not yours")
    (root / "jobs").mkdir()
    (root / "jobs" / "link").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "secret.txt")

    for text in ("jobs/link/secret.txt", "jobs/link/new.bin", "jobs/link", "filelink"):
        key = StorageKey(text)
        assert store.contains(key) is False, text
        with pytest.raises(KeyOutsideRoot):
            store.open_read(key)
        with pytest.raises(InvalidStorageKey):
            store.open_writer(key)
        with pytest.raises(InvalidStorageKey):
            store.delete(key)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"not yours"
    assert _partial_files(root) == []


def test_symlink_inside_root_is_contained(store: LocalBlobStore, root: Path) -> None:
    """A symlink that stays inside the root does not break containment."""
    put_bytes(store, StorageKey("real/a.bin"), b"abc")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    key = StorageKey("alias/a.bin")
    assert store.contains(key)
    with store.open_read(key) as reader:
        assert reader.read() == b"abc"


def test_ordinary_keys_are_contained(store: LocalBlobStore) -> None:
    """Keys with no symlink on the way are inside the root, existing or not."""
    for text in ("a", "jobs/x/y.mp4", "deep/" * 20 + "leaf"):
        assert store.contains(StorageKey(text))


def test_partial_dir_is_reserved(store: LocalBlobStore, root: Path) -> None:
    """Keys whose first segment is `.partial` are refused for every operation."""
    put_bytes(store, StorageKey("x"), b"1")
    with store.open_writer(StorageKey("y")) as writer:
        writer.write(b"pending")
        temp_name = _partial_files(root)[0].name
        for text in (PARTIAL_DIR, f"{PARTIAL_DIR}/{temp_name}", f"{PARTIAL_DIR}/new"):
            key = StorageKey(text)
            with pytest.raises(InvalidStorageKey):
                store.open_writer(key)
            with pytest.raises(InvalidStorageKey):
                store.open_read(key)
            with pytest.raises(InvalidStorageKey):
                store.exists(key)
            with pytest.raises(InvalidStorageKey):
                store.delete(key)
        assert [p.name for p in _partial_files(root)] == [temp_name]
    # `.partial` as a later segment is an ordinary name.
    put_bytes(store, StorageKey(f"a/{PARTIAL_DIR}"), b"ok")
    assert store.exists(StorageKey(f"a/{PARTIAL_DIR}"))


def test_list_never_shows_the_temporary_area(store: LocalBlobStore, root: Path) -> None:
    """Temp files of writes in progress and of resumable writes are never listed
    (listing in general: test_blobstore_contract.py)."""
    put_bytes(store, StorageKey("jobs/a/z.bin"), b"1")
    resumable = store.open_resumable(StorageKey("jobs/a/up.bin"))
    resumable.write(b"resumable")
    resumable.close()
    with store.open_writer(StorageKey("jobs/a/pending.bin")) as writer:
        writer.write(b"uncommitted")
        assert len(_partial_files(root)) >= 2
        assert [info.key.value for info in store.list()] == ["jobs/a/z.bin"]
        assert [info.key.value for info in store.list(StorageKey("jobs/a"))] == ["jobs/a/z.bin"]


def test_list_skips_files_whose_names_are_not_keys(store: LocalBlobStore, root: Path) -> None:
    """A file put there by hand under a name no key can have is not listed."""
    put_bytes(store, StorageKey("d/good"), b"1")
    (root / "d" / "bad name ").write_bytes(b"2")
    (root / "d" / "trailing.").write_bytes(b"3")
    assert [i.key.value for i in store.list()] == ["d/good"]


def test_delete_prunes_empty_directories_but_not_the_root(
    store: LocalBlobStore, root: Path
) -> None:
    """Deleting the last object of a directory removes the emptied directories up
    to (not including) the root; directories with other objects stay."""
    keep = StorageKey("jobs/a/keep.bin")
    gone = StorageKey("jobs/a/deep/er/gone.bin")
    put_bytes(store, keep, b"k")
    put_bytes(store, gone, b"g")
    store.delete(gone)
    assert not store.exists(gone)
    assert not (root / "jobs" / "a" / "deep").exists()
    assert (root / "jobs" / "a").is_dir()
    store.delete(keep)
    assert not (root / "jobs").exists()
    assert root.is_dir()
    assert (root / PARTIAL_DIR).is_dir()

    top = StorageKey("top-level.bin")
    put_bytes(store, top, b"t")
    store.delete(top)
    assert root.is_dir()
    assert sorted(p.name for p in root.iterdir()) == [PARTIAL_DIR]


def test_missing_key_raises_blob_not_found_without_host_path(
    store: LocalBlobStore, root: Path
) -> None:
    """stat/open_read of a missing key (or of a directory) raise BlobNotFound naming
    the key, never the root path."""
    put_bytes(store, StorageKey("dir/file"), b"x")
    for text in ("missing.bin", "dir/missing", "dir", "dir/file/below"):
        key = StorageKey(text)
        for operation in (store.stat, store.open_read):
            with pytest.raises(BlobNotFound) as caught:
                operation(key)
            message = str(caught.value)
            assert caught.value.key == key
            assert text in message
            assert str(root) not in message
            assert str(root.parent) not in message
        assert not store.exists(key)


def test_describe_is_for_operators_only(store: LocalBlobStore, root: Path) -> None:
    """describe() names the resolved root (for the start-up log)."""
    assert str(root.resolve()) in store.describe()


def test_sweep_removes_only_old_partial_files(store: LocalBlobStore, root: Path) -> None:
    """sweep_partial_writes removes temp files older than the threshold and keeps
    younger ones (ages set with os.utime)."""
    now = time.time()
    ages = {"old-1": 7200, "old-2": 3660, "young-1": 3540, "young-2": 10}
    for name, age in ages.items():
        path = root / PARTIAL_DIR / name
        path.write_bytes(b"x")
        os.utime(path, (now - age, now - age))
    put_bytes(store, StorageKey("committed"), b"c")
    os.utime(root / "committed", (now - 99_999, now - 99_999))

    removed = store.sweep_partial_writes(older_than_seconds=3600)

    expected_removed = {n for n, a in ages.items() if a > 3600}
    assert removed == len(expected_removed)
    assert {p.name for p in _partial_files(root)} == set(ages) - expected_removed
    assert store.exists(StorageKey("committed"))
    assert store.sweep_partial_writes(older_than_seconds=3600) == 0


def test_sweep_leaves_an_open_write_that_is_young(store: LocalBlobStore, root: Path) -> None:
    """A write in progress (fresh temp file) survives a sweep and still commits."""
    key = StorageKey("live")
    with store.open_writer(key) as writer:
        writer.write(b"in progress")
        assert store.sweep_partial_writes(older_than_seconds=3600) == 0
        writer.commit()
    with store.open_read(key) as reader:
        assert reader.read() == b"in progress"


def test_store_creates_its_root(tmp_path: Path) -> None:
    """A missing root directory (and its parents) is created with .partial inside."""
    root = tmp_path / "a" / "b" / "c"
    LocalBlobStore(root)
    assert (root / PARTIAL_DIR).is_dir()


def test_factory_resolves_relative_root_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative directory is made absolute against the current directory once:
    changing directory afterwards does not move the store."""
    monkeypatch.chdir(tmp_path)
    store = open_blob_store("relative/blobs")
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    put_bytes(store, StorageKey("k/v.bin"), b"data")
    assert (tmp_path / "relative" / "blobs" / "k" / "v.bin").read_bytes() == b"data"
    assert not (other / "relative").exists()


def test_factory_accepts_file_url(tmp_path: Path) -> None:
    """`file:///abs/dir` (percent-decoded) opens a store in that directory."""
    directory = tmp_path / "with space"
    store = open_blob_store("file://" + str(directory).replace(" ", "%20"))
    put_bytes(store, StorageKey("x"), b"1")
    assert (directory / "x").read_bytes() == b"1"


@pytest.mark.parametrize("url", ["gs://bucket", "http://host/dir", "ftp://host/x"])
def test_factory_refuses_other_schemes(url: str) -> None:
    """A URL naming a backend this build does not have raises UnsupportedStorageUrl."""
    with pytest.raises(UnsupportedStorageUrl):
        open_blob_store(url)


def test_factory_refuses_empty_url() -> None:
    """An empty URL names no directory."""
    with pytest.raises(UnsupportedStorageUrl):
        open_blob_store("")
