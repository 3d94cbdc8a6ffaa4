"""Builds the BlobStore named by a storage URL from configuration."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from videojobs.storage.blobstore import BlobStore
from videojobs.storage.local import LocalBlobStore


class UnsupportedStorageUrl(ValueError):
    """The storage URL names a backend this build does not have."""


def open_blob_store(url: str) -> BlobStore:
    """Opens the store for `url`: `file:///abs/dir`, or a plain directory path.

    Relative directory paths are made absolute against the current directory,
    once, here; nothing downstream ever sees the path again.
    """
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        directory = unquote(parsed.path) if parsed.scheme == "file" else url
        if not directory:
            raise UnsupportedStorageUrl("storage URL names no directory")
        return LocalBlobStore(Path(directory))
    raise UnsupportedStorageUrl(
        f"unsupported storage URL scheme {parsed.scheme!r}: this build stores in a local "
        "directory (file:///path or a plain path)"
    )
