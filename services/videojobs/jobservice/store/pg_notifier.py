"""PostgreSQL adapter of the notifier port: `LISTEN/NOTIFY` over asyncpg.

A committing transaction runs `pg_notify('videojobs_notices', message)`;
PostgreSQL delivers the message to every listening connection if and only if
the transaction commits, in commit order. Each replica keeps one dedicated
asyncpg connection listening on the channel, ignores its own messages (it
delivered those itself right after the commit) and hands the others to its
subscribers. When the listening connection breaks it reconnects with backoff
and then tells subscribers to re-read everything (`Resync`), because messages
sent meanwhile are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from videojobs.jobservice import notices as notice_codec
from videojobs.jobservice.notices import Notice
from videojobs.jobservice.notifier import Notifier

log = logging.getLogger(__name__)

CHANNEL = "videojobs_notices"
# How often an idle listening connection is checked, and how long a check may take.
KEEPALIVE_SECONDS = 5.0
KEEPALIVE_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 10.0
MAX_RECONNECT_DELAY_SECONDS = 5.0

_NOTIFY = text("SELECT pg_notify(:channel, :message)")


class PostgresNotifier(Notifier):
    """Notices between replicas through PostgreSQL LISTEN/NOTIFY."""

    def __init__(self, database_url: str) -> None:
        super().__init__()
        url = make_url(database_url)
        # asyncpg takes a plain postgresql:// address (no SQLAlchemy driver name).
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._task: asyncio.Task | None = None
        self._listening = asyncio.Event()
        #: Messages received from other replicas (for tests and metrics).
        self.received = 0

    async def start(self) -> None:
        """Starts the listening task and waits (briefly) until it listens, so
        notices committed after start are not missed."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="pg-notice-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), CONNECT_TIMEOUT_SECONDS)

    async def close(self) -> None:
        """Stops listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def listening(self) -> bool:
        """Whether the listening connection is up."""
        return self._listening.is_set()

    async def before_commit(self, connection: Any, notices: Sequence[Notice]) -> None:
        """Queues the notices in the committing transaction (delivered on commit)."""
        for message in notice_codec.encode(self.origin, notices):
            await connection.execute(_NOTIFY, {"channel": CHANNEL, "message": message})

    def _on_message(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            origin, received = notice_codec.decode(payload)
        except ValueError:
            log.warning("ignored a malformed notice on %s", CHANNEL)
            return
        if origin == self.origin:
            return
        self.received += 1
        self.deliver(received)

    async def _listen_forever(self) -> None:
        delay = 0.1
        first = True
        while True:
            connection = None
            try:
                connection = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_SECONDS)
                await connection.add_listener(CHANNEL, self._on_message)
                self._listening.set()
                if not first:
                    log.info("listening for notices again; re-reading everything")
                    self.resync()
                first, delay = False, 0.1
                while True:
                    await asyncio.sleep(KEEPALIVE_SECONDS)
                    await asyncio.wait_for(
                        connection.fetchval("SELECT 1"), KEEPALIVE_TIMEOUT_SECONDS
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect whatever broke
                self._listening.clear()
                log.warning("notice listener lost its connection (%s); reconnecting", exc)
                first = False
                await asyncio.sleep(delay)
                delay = min(MAX_RECONNECT_DELAY_SECONDS, delay * 2)
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), 2.0)
