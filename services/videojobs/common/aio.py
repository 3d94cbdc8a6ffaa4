"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Waits until `event` is set or `seconds` pass (None: no limit);
    returns whether it was set.

    Not `asyncio.wait_for(event.wait(), timeout)`: on Python 3.11 that call
    swallows a cancellation that arrives while the event is being set (the
    caller's loop then waits on, and a shutdown that cancelled it hangs).
    `asyncio.timeout` passes the cancellation on.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def run_to_completion(work: Awaitable[T]) -> T:
    """Awaits `work` in a task of its own that a cancellation of the caller
    does not interrupt: the caller's cancellation is re-raised once `work`
    has finished.

    For units of work that must not stop halfway, above all database
    transactions: a task cancelled inside one (gRPC cancels a handler whose
    peer went away) can leave the SQLite write lock held by a connection
    nobody owns any more, stalling every writer for the busy timeout.
    """
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError as error:
            if task.done():
                raise
            cancelled = error
        else:
            break
    if cancelled is not None:
        raise cancelled
    return result
