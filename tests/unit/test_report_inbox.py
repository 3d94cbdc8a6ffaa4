"""ReportInbox: a worker's messages read ahead of the ones being applied,
bounded in count and bytes, taken in runs, in order, with how the stream ended."""

from __future__ import annotations

import asyncio

import pytest

from videojobs.jobservice.api.dispatch_servicer import ReportInbox
from videojobs.v1 import dispatch_service_pb2 as pb


def _message(job_id: str) -> pb.ConnectRequest:
    return pb.ConnectRequest(stopped=pb.JobStoppedReport(job_id=job_id, lease_token="t"))


def _ids(messages) -> list[str]:
    return [m.stopped.job_id for m in messages]


async def _settle() -> None:
    """Lets every ready task run until none is ready (bounded)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_takes_everything_waiting_in_order_then_how_the_stream_ended():
    inbox = ReportInbox(max_messages=10, max_bytes=1 << 20)
    for name in "abc":
        await inbox.put(_message(name), 10)
    messages, end = await inbox.take()
    assert _ids(messages) == ["a", "b", "c"]
    assert end is None
    await inbox.put(_message("d"), 10)
    inbox.close("ended")
    messages, end = await inbox.take()
    assert (_ids(messages), end) == (["d"], "ended")
    assert await inbox.take() == ([], "ended")


async def test_take_waits_for_a_message():
    inbox = ReportInbox(max_messages=10, max_bytes=1 << 20)
    taking = asyncio.create_task(inbox.take())
    await _settle()
    assert not taking.done()
    await inbox.put(_message("a"), 10)
    messages, end = await asyncio.wait_for(taking, 5)
    assert (_ids(messages), end) == (["a"], None)


async def test_put_waits_while_the_count_is_reached_and_a_run_is_capped():
    inbox = ReportInbox(max_messages=2, max_bytes=1 << 20)
    await inbox.put(_message("a"), 1)
    await inbox.put(_message("b"), 1)
    third = asyncio.create_task(inbox.put(_message("c"), 1))
    await _settle()
    assert not third.done()
    messages, _ = await inbox.take()
    assert _ids(messages) == ["a", "b"]
    await asyncio.wait_for(third, 5)
    messages, _ = await inbox.take()
    assert _ids(messages) == ["c"]


async def test_put_waits_while_the_bytes_are_reached_but_one_large_message_always_fits():
    inbox = ReportInbox(max_messages=10, max_bytes=100)
    await inbox.put(_message("a"), 60)
    second = asyncio.create_task(inbox.put(_message("b"), 60))
    await _settle()
    assert not second.done()
    assert _ids((await inbox.take())[0]) == ["a"]
    await asyncio.wait_for(second, 5)
    assert _ids((await inbox.take())[0]) == ["b"]
    # Larger than the whole budget: fits once nothing else waits.
    await asyncio.wait_for(inbox.put(_message("huge"), 500), 5)
    assert _ids((await inbox.take())[0]) == ["huge"]


async def test_a_broken_stream_is_reported_after_the_messages_before_it():
    inbox = ReportInbox(max_messages=10, max_bytes=1 << 20)
    await inbox.put(_message("a"), 10)
    broken = ConnectionError("stream broke")
    inbox.close(broken)
    messages, end = await inbox.take()
    assert _ids(messages) == ["a"]
    assert end is broken


@pytest.mark.parametrize("waiting", [0, 3])
async def test_a_closed_inbox_wakes_a_waiting_take(waiting):
    inbox = ReportInbox(max_messages=10, max_bytes=1 << 20)
    for index in range(waiting):
        await inbox.put(_message(str(index)), 10)
    if waiting:
        await inbox.take()
    taking = asyncio.create_task(inbox.take())
    await _settle()
    assert not taking.done()
    inbox.close("ended")
    assert await asyncio.wait_for(taking, 5) == ([], "ended")


async def test_take_waiting_never_waits_and_takes_at_most_what_it_is_asked():
    inbox = ReportInbox(max_messages=10, max_bytes=1 << 20)
    assert inbox.take_waiting(5) == ([], None)
    for name in "abc":
        await inbox.put(_message(name), 10)
    messages, end = inbox.take_waiting(2)
    assert (_ids(messages), end) == (["a", "b"], None)
    inbox.close("ended")
    messages, end = inbox.take_waiting(5)
    assert (_ids(messages), end) == (["c"], "ended")


async def test_waiting_for_more_ends_with_a_message_the_end_or_the_time():
    inbox = ReportInbox(max_messages=10, max_bytes=1 << 20)
    assert not await inbox.wait(0.01)  # nothing came in time
    waiter = asyncio.create_task(inbox.wait(30))
    await _settle()
    assert not waiter.done()
    await inbox.put(_message("a"), 10)
    assert await asyncio.wait_for(waiter, 5)
    assert await inbox.wait(30)  # already there: no wait
    assert _ids((await inbox.take())[0]) == ["a"]
    waiter = asyncio.create_task(inbox.wait(30))
    await _settle()
    inbox.close("ended")
    assert await asyncio.wait_for(waiter, 5)
