"""Defaults shared by the synchronous and asynchronous job clients."""

from __future__ import annotations

#: Where job-service listens unless told otherwise.
DEFAULT_ADDRESS = "127.0.0.1:50051"

#: Bytes per SubmitVideo chunk. The server accepts up to 4 MiB per chunk;
#: 256 KiB keeps the per-message overhead small without large buffers.
DEFAULT_CHUNK_SIZE = 256 * 1024

#: Largest chunk the server accepts (see `SubmitVideoRequest.chunk`).
MAX_CHUNK_SIZE = 4 * 1024 * 1024

#: First pause before reconnecting a broken StreamResults stream, in seconds.
RECONNECT_INITIAL_DELAY = 0.1

#: Longest pause between two reconnect attempts, in seconds.
RECONNECT_MAX_DELAY = 5.0

#: How long `follow` keeps trying to reconnect before giving up, in seconds.
RECONNECT_TIMEOUT = 60.0
