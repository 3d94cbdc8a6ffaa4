"""Storage: relative keys and the blob stores that map them to a place.

Only this package knows where bytes live. Everything else names objects by
`StorageKey` (a relative key) and never sees a host path.
"""

from videojobs.storage.blobstore import (
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    BlobWriteAborted,
    ResumableWriter,
)
from videojobs.storage.factory import UnsupportedStorageUrl, open_blob_store
from videojobs.storage.keys import InvalidStorageKey, StorageKey
from videojobs.storage.s3 import S3BlobStore, StorageUnavailable

__all__ = [
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "BlobStoreError",
    "BlobWriteAborted",
    "InvalidStorageKey",
    "ResumableWriter",
    "S3BlobStore",
    "StorageKey",
    "StorageUnavailable",
    "UnsupportedStorageUrl",
    "open_blob_store",
]
