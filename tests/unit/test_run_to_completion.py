"""run_to_completion: a cancelled caller waits for its unit of work to finish,
then hears the cancellation; the work itself is never cut in half."""

from __future__ import annotations

import asyncio

import pytest

from videojobs.common.aio import run_to_completion


async def test_the_work_finishes_when_the_caller_is_cancelled_midway():
    steps: list[str] = []
    halfway = asyncio.Event()
    resume = asyncio.Event()

    async def unit_of_work() -> str:
        steps.append("begin")
        halfway.set()
        await resume.wait()
        steps.append("commit")
        return "done"

    caller = asyncio.create_task(run_to_completion(unit_of_work()))
    await halfway.wait()
    caller.cancel()
    # The caller stays until the work ends: cancelled, but not yet returned.
    await asyncio.sleep(0)
    assert not caller.done()
    resume.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert steps == ["begin", "commit"]


async def test_repeated_cancellations_still_wait_for_the_work():
    resume = asyncio.Event()
    finished = asyncio.Event()

    async def unit_of_work() -> None:
        await resume.wait()
        finished.set()

    caller = asyncio.create_task(run_to_completion(unit_of_work()))
    await asyncio.sleep(0)
    for _ in range(3):
        caller.cancel()
        await asyncio.sleep(0)
        assert not caller.done()
    resume.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished.is_set()


async def test_result_and_errors_pass_through():
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def broken() -> None:
        await asyncio.sleep(0)
        raise ValueError("bad")

    assert await run_to_completion(answer()) == 42
    with pytest.raises(ValueError, match="bad"):
        await run_to_completion(broken())


async def test_work_that_cancels_itself_is_cancelled():
    async def gives_up() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await run_to_completion(gives_up())
