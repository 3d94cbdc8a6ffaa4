"""A throwaway PostgreSQL database per test, when a server is reachable.

The server is named by VIDEOJOBS_TEST_POSTGRES_URL (default: the local
`postgres` superuser on 127.0.0.1:5432, database `test`). When it cannot be
reached the test is skipped with the reason, unless VIDEOJOBS_REQUIRE_SERVICES=1
(as in CI), which makes a missing server a failure.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def admin_url() -> str:
    """The URL of the server's maintenance database."""
    return os.environ.get("VIDEOJOBS_TEST_POSTGRES_URL", DEFAULT_URL)


def _unavailable(reason: str) -> None:
    message = f"PostgreSQL not reachable at {make_url(admin_url()).render_as_string()}: {reason}"
    if os.environ.get("VIDEOJOBS_REQUIRE_SERVICES") == "1":
        pytest.fail(message + " (VIDEOJOBS_REQUIRE_SERVICES=1)")
    pytest.skip(message)


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """Creates an empty database, yields its SQLAlchemy URL, drops it afterwards."""
    import asyncpg

    url = make_url(admin_url())
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        _unavailable(repr(exc))
    name = f"videojobs_test_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
