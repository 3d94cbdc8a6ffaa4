"""Real processes: every test gets a Stack whose processes are all stopped at teardown."""

from __future__ import annotations

import pytest

from support.processes import Stack


@pytest.fixture
def stack(tmp_path):
    """A fresh data directory and the processes a test starts on it."""
    started = Stack(tmp_path)
    yield started
    started.stop_all()
