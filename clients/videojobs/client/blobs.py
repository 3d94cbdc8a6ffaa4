"""Reading results and artifacts, shared by the sync and asyncio clients:
which job may be read, where each key goes on disk, the bookkeeping that
resumes a broken Read, and the temp-file-then-rename write of a download.

Nothing here talks to the network.
"""

from __future__ import annotations

import json
import os
import tempfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import grpc

from videojobs.client.errors import VideoJobsError
from videojobs.client.requests import job_state_name
from videojobs.v1 import blob_service_pb2, job_pb2

#: The ErrorInfo domain of errors the client makes up itself.
CLIENT_ERROR_DOMAIN = "videojobs.dev"

#: Called as `on_progress(bytes_done, bytes_total)` while downloading.
DownloadProgressCallback = Callable[[int, int], None]

# Characters no downloaded file name may hold: controls, format (bidi,
# zero-width), separators, surrogates, private use, unassigned.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def job_not_succeeded(job: job_pb2.Job) -> VideoJobsError:
    """The error for asking for the result of a job that has none (yet):
    FAILED_PRECONDITION, reason `JOB_NOT_SUCCEEDED`, with the job's state in
    the metadata (`QUEUED`, `RUNNING`, `FAILED`, `CANCELLED`); for a failed job
    the message says why it failed."""
    state = job_state_name(job.state)
    message = f"job {job.job_id} is {state}: only a SUCCEEDED job has a result"
    if job.HasField("error") and job.error.message:
        message += f" (it ended with: {job.error.message})"
    return VideoJobsError(
        grpc.StatusCode.FAILED_PRECONDITION,
        message,
        reason="JOB_NOT_SUCCEEDED",
        domain=CLIENT_ERROR_DOMAIN,
        metadata={"job_id": job.job_id, "state": state},
    )


def require_result(job: job_pb2.Job) -> str:
    """The job's result key; raises `job_not_succeeded` unless it SUCCEEDED."""
    if job.state != job_pb2.JOB_STATE_SUCCEEDED:
        raise job_not_succeeded(job)
    if not job.output_key:
        raise VideoJobsError(
            grpc.StatusCode.DATA_LOSS,
            f"job {job.job_id} SUCCEEDED but names no result document",
            reason="RESULT_MISSING",
            domain=CLIENT_ERROR_DOMAIN,
        )
    return job.output_key


def parse_result_document(data: bytes, key: str) -> dict[str, Any]:
    """The result document as a dict (keys in their stored order).

    Raises:
        VideoJobsError: DATA_LOSS, reason `RESULT_NOT_JSON`, when the bytes
            are not a JSON object.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError) as error:
        raise _not_json(key, f"not valid JSON ({error})") from error
    if not isinstance(document, dict):
        raise _not_json(key, f"a JSON {type(document).__name__}, not an object")
    return document


def _not_json(key: str, why: str) -> VideoJobsError:
    return VideoJobsError(
        grpc.StatusCode.DATA_LOSS,
        f"the result document {key} is {why}",
        reason="RESULT_NOT_JSON",
        domain=CLIENT_ERROR_DOMAIN,
    )


class UnsafeKeyError(VideoJobsError):
    """A key the server named does not map to a file inside the download
    directory (it is not below the job's attempt prefix, or a segment is
    empty, `.`, `..`, or holds a separator or an unsafe character). Job-service
    never sends such keys; the client checks anyway. INTERNAL, reason
    `UNSAFE_KEY`."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(
            grpc.StatusCode.INTERNAL,
            f"refusing to download {key!r}: {why}",
            reason="UNSAFE_KEY",
            domain=CLIENT_ERROR_DOMAIN,
        )


def attempt_prefix(output_key: str) -> str:
    """The winning attempt's prefix: the result key's folder
    (`jobs/{id}/attempts/{n}` for `jobs/{id}/attempts/{n}/results.json`)."""
    prefix, separator, _ = output_key.rpartition("/")
    if not separator or not prefix:
        raise UnsafeKeyError(output_key, "the result key has no folder")
    return prefix


def relative_download_path(key: str, prefix: str) -> PurePosixPath:
    """Where `key` goes below the download directory: its path below `prefix`
    (`thumbnails/0000.jpg` for `{prefix}/thumbnails/0000.jpg`).

    Raises:
        UnsafeKeyError: `key` is not below `prefix`, or a segment could leave
            the directory or is not a plain, printable file name.
    """
    if not key.startswith(prefix + "/"):
        raise UnsafeKeyError(key, f"not below the attempt prefix {prefix!r}")
    segments = key[len(prefix) + 1 :].split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise UnsafeKeyError(key, "an empty, '.' or '..' segment")
        if "\\" in segment or "\x00" in segment:
            raise UnsafeKeyError(key, "a backslash or NUL in a segment")
        if any(unicodedata.category(char) in _UNSAFE_CATEGORIES for char in segment):
            raise UnsafeKeyError(key, "a control or invisible character in a segment")
    return PurePosixPath(*segments)


def download_target(directory: Path, relative: PurePosixPath) -> Path:
    """The file `relative` names inside `directory`, its folders created.

    The folders are checked after they exist, following symlinks: a link
    already in the directory that points elsewhere makes this fail rather
    than write outside.

    Raises:
        UnsafeKeyError: the file would land outside `directory`.
        OSError: a folder cannot be created.
    """
    root = Path(os.path.realpath(directory))
    target = directory.joinpath(*relative.parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    parent = Path(os.path.realpath(target.parent))
    if parent != root and root not in parent.parents:
        raise UnsafeKeyError(str(relative), "its folder resolves outside the download directory")
    return target


@dataclass(frozen=True)
class DownloadItem:
    """One object of a download: its key, where it goes below the download
    directory, and the size the job states for it (None: not stated)."""

    key: str
    relative_path: PurePosixPath
    expected_size: int | None = None


def plan_download(job: job_pb2.Job) -> list[DownloadItem]:
    """What downloading a SUCCEEDED job writes: the result document, then
    every artifact in the job's order, each at its path below the winning
    attempt's prefix. A key named twice is fetched once.

    Raises:
        VideoJobsError: the job did not succeed (see `job_not_succeeded`).
        UnsafeKeyError: a key does not map inside the download directory.
    """
    output_key = require_result(job)
    prefix = attempt_prefix(output_key)
    items = [DownloadItem(output_key, relative_download_path(output_key, prefix))]
    seen = {output_key}
    for artifact in job.artifacts:
        if artifact.key in seen:
            continue
        seen.add(artifact.key)
        relative = relative_download_path(artifact.key, prefix)
        items.append(DownloadItem(artifact.key, relative, artifact.size_bytes))
    return items


def size_mismatch(key: str, expected: int, actual: int) -> VideoJobsError:
    """DATA_LOSS, reason `SIZE_MISMATCH`: an object did not hold the bytes it should."""
    return VideoJobsError(
        grpc.StatusCode.DATA_LOSS,
        f"{key} should hold {expected} bytes but {actual} arrived",
        reason="SIZE_MISMATCH",
        domain=CLIENT_ERROR_DOMAIN,
        metadata={"key": key, "expected_bytes": str(expected), "actual_bytes": str(actual)},
    )


class ReadCursor:
    """Where a read of one object stands, so a broken Read resumes from the
    byte it reached instead of starting over, and so a short or changed
    object is noticed.

    `offset` is the first byte wanted, `limit` the most bytes (0: to the end).
    """

    def __init__(self, key: str, *, offset: int = 0, limit: int = 0) -> None:
        if offset < 0 or limit < 0:
            raise ValueError("offset and limit must not be negative")
        self.key = key
        self.offset = offset
        self.limit = limit
        self.position = offset
        #: The whole object's size, once the server said it.
        self.size: int | None = None
        self._first_of_stream = True

    @property
    def end(self) -> int | None:
        """Where the read ends (exclusive), once the size is known."""
        if self.size is None:
            return None
        return self.size if self.limit == 0 else min(self.size, self.offset + self.limit)

    @property
    def finished(self) -> bool:
        """Whether every wanted byte has arrived."""
        end = self.end
        return end is not None and self.position >= end

    def request(self) -> blob_service_pb2.ReadRequest:
        """The Read request for the next (or first) stream: from the byte
        reached, for what is left of the limit."""
        self._first_of_stream = True
        remaining = 0
        if self.limit:
            remaining = self.offset + self.limit - self.position
        return blob_service_pb2.ReadRequest(
            key=self.key, read_offset=self.position, read_limit=remaining
        )

    def accept(self, response: blob_service_pb2.ReadResponse) -> bytes:
        """Records one response; returns its data.

        Raises:
            VideoJobsError: DATA_LOSS when the object's size changed between
                two streams of one read, or more bytes came than wanted.
        """
        if self._first_of_stream:
            self._first_of_stream = False
            if self.size is not None and response.size_bytes != self.size:
                raise VideoJobsError(
                    grpc.StatusCode.DATA_LOSS,
                    f"{self.key} changed while it was read "
                    f"({self.size} bytes, then {response.size_bytes})",
                    reason="OBJECT_CHANGED",
                    domain=CLIENT_ERROR_DOMAIN,
                )
            self.size = response.size_bytes
        data = response.data
        end = self.end
        if end is not None and self.position + len(data) > end:
            raise size_mismatch(
                self.key, end - self.offset, self.position + len(data) - self.offset
            )
        self.position += len(data)
        return data

    def check_complete(self) -> None:
        """Raises DATA_LOSS (`SIZE_MISMATCH`) if a stream ended before every
        wanted byte arrived."""
        end = self.end
        if end is None or self.position < end:
            expected = (end if end is not None else self.position) - self.offset
            raise size_mismatch(self.key, expected, self.position - self.offset)


class AtomicFile:
    """A file written under a temporary name next to its target and renamed
    into place by `commit`, so a reader never sees half a file and a failed
    download leaves the previous file (or none) where it was."""

    def __init__(self, target: Path) -> None:
        self.target = target
        descriptor, temp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
        self._temp_path = Path(temp_name)
        self._file = os.fdopen(descriptor, "wb")
        self.size = 0

    def write(self, data: bytes) -> None:
        """Appends bytes."""
        self._file.write(data)
        self.size += len(data)

    def commit(self) -> Path:
        """Flushes to disk and renames into place; returns the target."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._temp_path, self.target)
        return self.target

    def discard(self) -> None:
        """Drops the temporary file (after a failure)."""
        self._file.close()
        self._temp_path.unlink(missing_ok=True)


class DownloadTally:
    """Bytes downloaded out of the total, reported to an optional callback."""

    def __init__(self, total: int, on_progress: DownloadProgressCallback | None) -> None:
        self.total = total
        self.done = 0
        self._on_progress = on_progress

    def start(self) -> None:
        """Reports 0 of the total."""
        if self._on_progress is not None:
            self._on_progress(0, self.total)

    def add(self, count: int) -> None:
        """Counts `count` more bytes and reports."""
        self.done += count
        if self._on_progress is not None:
            self._on_progress(self.done, max(self.total, self.done))
