"""Watching the SQL a test's in-process job-service runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import event
from sqlalchemy.engine import Engine


@contextlib.contextmanager
def statements_containing(text: str) -> Iterator[list[str]]:
    """Collects, on every engine of this process, the SQL statements that
    contain `text`, while the block runs."""
    statements: list[str] = []

    def before(connection, cursor, statement, parameters, context, executemany) -> None:
        if text in statement:
            statements.append(statement)

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(Engine, "before_cursor_execute", before)
