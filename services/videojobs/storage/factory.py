"""Builds the BlobStore named by a storage URL from configuration."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from videojobs.storage.blobstore import BlobStore
from videojobs.storage.keys import InvalidStorageKey, StorageKey
from videojobs.storage.local import LocalBlobStore


class UnsupportedStorageUrl(ValueError):
    """The storage URL names a backend this build does not have, or is malformed."""


def open_blob_store(url: str) -> BlobStore:
    """Opens the store for `url`:

    - `file:///abs/dir`, or a plain directory path: a local directory. Relative
      paths are made absolute against the current directory, once, here;
      nothing downstream ever sees the path again.
    - `s3://bucket` or `s3://bucket/prefix`: an S3-compatible object store. The
      endpoint, credentials and region come from the standard AWS variables
      (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
      AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION), read now; nothing
      is contacted before the store's first use.
    """
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        directory = unquote(parsed.path) if parsed.scheme == "file" else url
        if not directory:
            raise UnsupportedStorageUrl("storage URL names no directory")
        return LocalBlobStore(Path(directory))
    if parsed.scheme == "s3":
        return _open_s3(url)
    raise UnsupportedStorageUrl(
        f"unsupported storage URL scheme {parsed.scheme[:20]!r}: use a local directory "
        "(file:///path or a plain path) or an S3 bucket (s3://bucket/prefix)"
    )


def _open_s3(url: str) -> BlobStore:
    # Imported here: the S3 backend is only loaded by those who use it.
    from videojobs.storage.s3 import S3BlobStore, is_valid_bucket_name

    parsed = urlparse(url)
    # Credentials, endpoints and options belong in the AWS variables; a URL
    # carrying them would end up in logs. (Never echo the URL: it may hold a secret.)
    if "@" in parsed.netloc or ":" in parsed.netloc:
        raise UnsupportedStorageUrl(
            "an s3:// storage URL names a bucket only: put credentials and the endpoint "
            "in the AWS_* variables"
        )
    if parsed.query or parsed.fragment or parsed.params:
        raise UnsupportedStorageUrl("an s3:// storage URL takes no query, parameters or fragment")
    bucket = parsed.netloc
    if not bucket:
        raise UnsupportedStorageUrl("storage URL names no S3 bucket (s3://bucket/prefix)")
    if not is_valid_bucket_name(bucket):
        raise UnsupportedStorageUrl(
            "storage URL names an invalid S3 bucket: 3-63 characters of lowercase letters, "
            "digits, '.' and '-', starting and ending with a letter or digit"
        )
    prefix = unquote(parsed.path).strip("/")
    if prefix:
        try:
            StorageKey(prefix)
        except InvalidStorageKey as exc:
            raise UnsupportedStorageUrl(
                f"the prefix of the s3:// storage URL is not a valid key: {exc.reason}"
            ) from None
    return S3BlobStore(bucket, prefix or None)
