"""The notifier port: delivers notices (`notices.py`) after a commit.

`Database.transaction()` hands a unit of work's notices to the notifier twice:
`before_commit` inside the transaction (the PostgreSQL adapter queues a
`NOTIFY` there, which PostgreSQL delivers to the other replicas only if and
when the transaction commits) and `after_commit` (delivered to this process's
subscribers at once). Two adapters:

- `InProcessNotifier`: one replica (SQLite, or tests): after_commit only;
- `PostgresNotifier` (`store/pg_notifier.py`): `LISTEN/NOTIFY` over asyncpg,
  for several replicas on one PostgreSQL database.

Subscribers are plain callbacks run on the event loop; they must not block.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from videojobs.jobservice.notices import Notice, Resync

log = logging.getLogger(__name__)

Subscriber = Callable[[Notice], None]


class Notifier:
    """Delivers notices to this process's subscribers (the in-process adapter).

    Subclasses that reach other replicas override `before_commit`, `start`
    and `close`."""

    def __init__(self) -> None:
        # Names this replica in what it sends, so it can ignore its own echo.
        self.origin = uuid.uuid4().hex
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        """Calls `subscriber(notice)` for every notice, local or remote."""
        self._subscribers.append(subscriber)

    async def start(self) -> None:
        """Starts listening to other replicas (nothing to do in process)."""

    async def close(self) -> None:
        """Stops listening."""

    async def before_commit(self, connection: Any, notices: Sequence[Notice]) -> None:
        """Called inside the committing transaction (`connection` is its
        AsyncSession): queue what other replicas must hear."""

    def after_commit(self, notices: Sequence[Notice]) -> None:
        """Called after the transaction committed: tell this process."""
        self.deliver(notices)

    def deliver(self, notices: Sequence[Notice]) -> None:
        """Runs every subscriber on every notice; one failing subscriber does
        not keep the notice from the others."""
        for notice in notices:
            for subscriber in self._subscribers:
                try:
                    subscriber(notice)
                except Exception:  # noqa: BLE001 - a subscriber bug must not fail a commit
                    log.exception("a notice subscriber failed on %r", notice)

    def resync(self) -> None:
        """Notices may have been missed: subscribers re-read everything."""
        self.deliver([Resync()])


class InProcessNotifier(Notifier):
    """One replica: notices reach only this process (SQLite's only mode)."""


def default_notifier(database_url: str) -> Notifier:
    """PostgreSQL: LISTEN/NOTIFY between replicas; anything else: in process."""
    from sqlalchemy.engine import make_url

    if make_url(database_url).get_backend_name() == "postgresql":
        from videojobs.jobservice.store.pg_notifier import PostgresNotifier

        return PostgresNotifier(database_url)
    return InProcessNotifier()
