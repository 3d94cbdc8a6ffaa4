"""The arithmetic behind retries and dispatch order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from videojobs.jobservice.domain import dispatch_rank, retry_delay_seconds


@pytest.mark.parametrize("failures", [1, 2, 3, 4, 8, 20])
def test_retry_delay_is_exponential_with_equal_jitter_and_capped(failures):
    base, cap = 1.0, 60.0
    exponential = min(cap, base * 2 ** (failures - 1))
    low = retry_delay_seconds(failures, base, cap, jitter=0.0)
    high = retry_delay_seconds(failures, base, cap, jitter=0.999999)
    assert low == pytest.approx(exponential / 2)
    assert high == pytest.approx(exponential, rel=1e-5)
    assert high <= cap


def test_retry_delays_grow_until_the_cap():
    delays = [retry_delay_seconds(n, 0.5, 10.0, jitter=0.5) for n in range(1, 10)]
    assert delays == sorted(delays)
    assert delays[-1] == delays[-2] == pytest.approx(7.5)  # capped at 10, 3/4 of it


def test_dispatch_rank_orders_priority_then_age_with_bounded_head_start():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    step = 300.0
    old_low = dispatch_rank(start, 0, step)
    new_high = dispatch_rank(start + timedelta(seconds=10), 1, step)
    much_newer_high = dispatch_rank(start + timedelta(seconds=301), 1, step)
    same_priority_newer = dispatch_rank(start + timedelta(seconds=1), 0, step)
    assert new_high < old_low  # higher priority first...
    assert old_low < much_newer_high  # ...but only within its head start
    assert old_low < same_priority_newer  # older first within a priority
