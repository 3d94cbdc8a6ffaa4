"""Defaults shared by the synchronous and asynchronous job clients."""

from __future__ import annotations

#: Where job-service listens unless told otherwise.
DEFAULT_ADDRESS = "127.0.0.1:50051"

#: Bytes per upload message (a SubmitVideo chunk or BlobService.Write data).
#: The server accepts up to 4 MiB; 256 KiB keeps the per-message overhead
#: small without large buffers. A file of at most one chunk goes in a single
#: SubmitVideo stream; a larger one through a resumable staged upload.
DEFAULT_CHUNK_SIZE = 256 * 1024

#: Largest chunk the server accepts (see `SubmitVideoRequest.chunk`).
MAX_CHUNK_SIZE = 4 * 1024 * 1024

#: First pause before reconnecting a broken StreamResults stream, in seconds.
RECONNECT_INITIAL_DELAY = 0.1

#: Longest pause between two reconnect attempts, in seconds.
RECONNECT_MAX_DELAY = 5.0

#: How long `follow` keeps trying to reconnect before giving up, in seconds.
RECONNECT_TIMEOUT = 60.0

#: First pause before retrying a broken transfer (upload or read), in seconds.
RETRY_INITIAL_DELAY = 0.25

#: Longest pause between two retries of a transfer, in seconds.
RETRY_MAX_DELAY = 10.0

#: Growth of the pause from one retry to the next.
RETRY_MULTIPLIER = 2.0

#: How long a transfer is retried without progress before it is given up, in
#: seconds: longer than job-service's upload idle timeout (30 s by default), so
#: a resumed write outlives a broken stream the server still holds.
RETRY_TIMEOUT = 120.0

#: Seconds a transfer's stream may go without moving a byte before it is taken
#: for dead; far above the time one chunk takes on a slow link.
RETRY_STALL_TIMEOUT = 60.0
