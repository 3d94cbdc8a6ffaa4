"""Storage: relative keys and the blob stores that map them to a place.

Only this package knows where bytes live. Everything else names objects by
`StorageKey` (a relative key) and never sees a host path.
"""

from videojobs.storage.blobstore import BlobInfo, BlobNotFound, BlobStore, BlobWriteAborted
from videojobs.storage.factory import open_blob_store
from videojobs.storage.keys import InvalidStorageKey, StorageKey

__all__ = [
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "BlobWriteAborted",
    "InvalidStorageKey",
    "StorageKey",
    "open_blob_store",
]
