"""A TCP proxy a test puts between a client and a server, to break the
connection at a byte count of its choosing.

It forwards bytes both ways on a free loopback port and counts them. A test
arms a cut (`cut_upstream_at`, `cut_downstream_at`): when the bytes forwarded
in that direction reach the count (over all connections since the proxy
started), exactly that many are delivered and then every open connection is
severed (both sockets reset) or stalled (kept open, nothing more forwarded,
as a dead network path looks). Connections opened after the cut are forwarded
normally, so a client that reconnects gets through.

The proxy runs its own event loop in a thread of its own, so it neither
competes with an in-process server for the test's loop (which would let
megabytes pile up in flight) nor needs the test to be async. Use it as a
context manager (`with` or `async with`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["upstream", "downstream"]
CutMode = Literal["sever", "stall"]

_READ_SIZE = 64 * 1024
_START_TIMEOUT = 10.0


@dataclass
class Cut:
    """An armed (then fired) cut: in which direction, at which byte count, how."""

    direction: Direction
    at_bytes: int
    mode: CutMode
    fired: threading.Event = field(default_factory=threading.Event)
    #: Bytes forwarded each way when it fired.
    upstream_at_fire: int = 0
    downstream_at_fire: int = 0


@dataclass
class _Connection:
    client_writer: asyncio.StreamWriter
    server_writer: asyncio.StreamWriter
    stalled: bool = False
    tasks: list[asyncio.Task] = field(default_factory=list)


class TcpProxy:
    """Forwards 127.0.0.1:<free port> to `target` (HOST:PORT), counting bytes.

    Attributes:
        address: where clients connect (`127.0.0.1:PORT`), once started.
        upstream_bytes: bytes forwarded client -> server, all connections.
        downstream_bytes: bytes forwarded server -> client, all connections.
        accepted: connections accepted so far.
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._closing: asyncio.Event | None = None
        self._connections: list[_Connection] = []
        self._cuts: list[Cut] = []
        self._lock = threading.Lock()
        self.upstream_bytes = 0
        self.downstream_bytes = 0
        self.accepted = 0
        self.address = ""

    # -- life cycle --------------------------------------------------------------

    def start(self) -> str:
        """Starts the proxy's thread and listener; returns its address."""
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="tcp-proxy", daemon=True
        )
        self._thread.start()
        if not ready.wait(_START_TIMEOUT) or not self.address:
            raise RuntimeError("the TCP proxy did not start")
        return self.address

    def close(self) -> None:
        """Resets every connection, stops listening and ends the thread."""
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(timeout=15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=15)

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> TcpProxy:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.close)

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._closing = asyncio.Event()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, "127.0.0.1", 0)
            )
            port = self._server.sockets[0].getsockname()[1]
            self.address = f"127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
        finally:
            ready.set()
            loop.close()

    async def _shutdown(self) -> None:
        assert self._closing is not None and self._server is not None
        self._closing.set()
        self._server.close()
        connections = list(self._connections)
        for connection in connections:
            self._reset(connection)
        # The pumps end by themselves once their sockets are gone; waiting for
        # them (rather than cancelling) keeps asyncio's stream callbacks quiet.
        tasks = [task for connection in connections for task in connection.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    # -- cuts ----------------------------------------------------------------------

    def cut_upstream_at(self, count: int, *, mode: CutMode = "sever") -> Cut:
        """Breaks every connection once `count` bytes went client -> server."""
        return self._arm("upstream", count, mode)

    def cut_downstream_at(self, count: int, *, mode: CutMode = "sever") -> Cut:
        """Breaks every connection once `count` bytes went server -> client."""
        return self._arm("downstream", count, mode)

    def _arm(self, direction: Direction, count: int, mode: CutMode) -> Cut:
        cut = Cut(direction, count, mode)
        with self._lock:
            self._cuts.append(cut)
        return cut

    def _pending_cut(self, direction: Direction) -> Cut | None:
        with self._lock:
            for cut in self._cuts:
                if cut.direction == direction and not cut.fired.is_set():
                    return cut
        return None

    # -- forwarding (on the proxy's loop) -------------------------------------------

    async def _accept(self, client_reader, client_writer) -> None:
        self.accepted += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        connection = _Connection(client_writer, server_writer)
        self._connections.append(connection)
        current = asyncio.current_task()
        assert current is not None
        connection.tasks = [
            current,
            asyncio.create_task(self._pump(connection, server_reader, client_writer, "downstream")),
        ]
        try:
            await self._pump(connection, client_reader, server_writer, "upstream")
        finally:
            with contextlib.suppress(ValueError):
                self._connections.remove(connection)

    async def _pump(
        self,
        connection: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
    ) -> None:
        assert self._closing is not None
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if connection.stalled:
                    await self._closing.wait()  # a dead path: hold the bytes until closed
                    return
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                cut = self._pending_cut(direction)
                if cut is not None:
                    allowed = cut.at_bytes - self._count(direction)
                    if len(data) >= allowed:
                        self._forward(writer, data[: max(allowed, 0)], direction)
                        with contextlib.suppress(OSError, ConnectionError):
                            await writer.drain()
                        self._fire(cut)
                        if cut.mode == "stall":
                            await self._closing.wait()
                        return
                self._forward(writer, data, direction)
                await writer.drain()
        except (OSError, ConnectionError):
            self._reset(connection)

    def _count(self, direction: Direction) -> int:
        return self.upstream_bytes if direction == "upstream" else self.downstream_bytes

    def _forward(self, writer: asyncio.StreamWriter, data: bytes, direction: Direction) -> None:
        if not data:
            return
        writer.write(data)
        if direction == "upstream":
            self.upstream_bytes += len(data)
        else:
            self.downstream_bytes += len(data)

    def _fire(self, cut: Cut) -> None:
        cut.upstream_at_fire = self.upstream_bytes
        cut.downstream_at_fire = self.downstream_bytes
        for connection in list(self._connections):
            if cut.mode == "sever":
                self._reset(connection)
            else:
                connection.stalled = True
        cut.fired.set()

    def _reset(self, connection: _Connection) -> None:
        # abort(): an RST, not an orderly close, as a broken network looks.
        for writer in (connection.client_writer, connection.server_writer):
            writer.transport.abort()
