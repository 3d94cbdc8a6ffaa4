"""Loaded into a job-service process by `bench_calls.py` (never by the service
itself): counts the SQL statements and transactions the process runs and
writes the counts, as JSON, to $BENCH_SQL_COUNTS on SIGUSR1.

Statements are counted by their first word (SELECT, INSERT, UPDATE, ...),
as SQLAlchemy hands them to the driver; BEGIN and COMMIT are not statements
here but transactions (on inline SQLite they go straight to the driver). On
SQLite, a transaction on the write engine (its pool holds one connection) is
a write, the others are reads; on PostgreSQL one engine serves both.
"""

from __future__ import annotations

import collections
import json
import os
import signal

from sqlalchemy import event
from sqlalchemy.engine import Engine

_counts: collections.Counter[str] = collections.Counter()


@event.listens_for(Engine, "before_cursor_execute")
def _statement(connection, cursor, statement, parameters, context, executemany) -> None:
    word = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
    if word not in ("BEGIN", "COMMIT"):
        _counts[f"statements {word}"] += 1


@event.listens_for(Engine, "begin")
def _begin(connection) -> None:
    _counts["transactions"] += 1
    if connection.engine.dialect.name == "sqlite":
        writer = connection.engine.pool.size() == 1
        _counts["write transactions" if writer else "read transactions"] += 1


def _dump(signum, frame) -> None:
    path = os.environ["BENCH_SQL_COUNTS"]
    with open(path + ".tmp", "w") as out:
        json.dump(dict(_counts), out)
    os.replace(path + ".tmp", path)


signal.signal(signal.SIGUSR1, _dump)
