"""The security suite: each attack found against `make run` performed again on
real processes (videojobs-server, videojobs-worker), asserting the safe outcome."""

from __future__ import annotations

import pytest

from support.processes import Stack


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if "tests/security/" in str(item.fspath):
            item.add_marker(pytest.mark.security)


@pytest.fixture
def stack(tmp_path):
    """A fresh data directory and the processes a test starts on it."""
    started = Stack(tmp_path)
    yield started
    started.stop_all()
