"""Hostile inputs and the instruments to watch what they do.

Every payload here was used against `make run` and did damage before the
hostile-input work: playlists that read other jobs' videos or fetched URLs,
unbounded strings, floods. Tests build them with these helpers and watch
the outcome with a request-counting HTTP server and /proc readings.
"""

from __future__ import annotations

import http.server
import os
import socketserver
import threading
from pathlib import Path

from support.videos import write_sample_video


class CountingHttpServer:
    """An HTTP server on a free loopback port that counts every request it gets
    (and answers 404). Use as a context manager."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        counter = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                counter.append(self.path)
                self.send_response(404)
                self.end_headers()

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> CountingHttpServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()


def transport_stream(path: Path, frames: int = 25) -> bytes:
    """A real MPEG-TS video (160x120 H.264), written to `path`; returns its bytes."""
    write_sample_video(
        path, width=160, height=120, fps=25, frames=frames, container_format="mpegts"
    )
    return path.read_bytes()


def hls_playlist_with_ts_body(segments: list[str], ts_body: bytes) -> bytes:
    """An HLS playlist naming `segments` (paths or URLs), followed by a real
    MPEG-TS body so that naive container checks pass."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:2"]
    for segment in segments:
        lines += ["#EXTINF:1.0,", segment]
    lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode() + ts_body


def ffconcat_list(entries: list[str]) -> bytes:
    """An ffconcat list naming `entries`."""
    text = "ffconcat version 1.0\n" + "".join(f"file '{entry}'\n" for entry in entries)
    return text.encode()


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def files_under(root: Path) -> list[str]:
    """Every file below `root`, relative, including temporary ones."""
    if not root.exists():
        return []
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            found.append(str(Path(directory, name).relative_to(root)))
    return sorted(found)
