"""Concurrent callers share one run, each gets its own results, and failures reach them all."""

from __future__ import annotations

import asyncio

import pytest

from shared.coalesce import Coalescer


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.runs: list[list[int]] = []
        self.fail = fail
        self.release = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int]:
        self.runs.append(items)
        await self.release.wait()
        if self.fail:
            raise ConnectionError("database went away")
        return [i * 10 for i in items]


async def test_callers_waiting_on_a_run_share_the_next_one_and_get_their_own_results() -> None:
    run = Recorder()
    coalesce = Coalescer(run, max_items=100)
    first = asyncio.create_task(coalesce([1]))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(coalesce([n, n + 1])) for n in (2, 4, 6)]
    await asyncio.sleep(0)
    run.release.set()
    assert await first == [10]
    assert [await t for t in rest] == [[20, 30], [40, 50], [60, 70]]
    assert run.runs == [[1], [2, 3, 4, 5, 6, 7]]


async def test_a_run_takes_no_more_than_max_items_unless_one_call_is_bigger() -> None:
    run = Recorder()
    run.release.set()
    coalesce = Coalescer(run, max_items=3)
    results = await asyncio.gather(coalesce([1, 2]), coalesce([3, 4]), coalesce([5, 6, 7, 8]))
    assert list(results) == [[10, 20], [30, 40], [50, 60, 70, 80]]
    assert run.runs == [[1, 2], [3, 4], [5, 6, 7, 8]]


async def test_a_failed_run_fails_every_caller_in_it_and_the_next_run_starts_afresh() -> None:
    run = Recorder(fail=True)
    run.release.set()
    coalesce = Coalescer(run, max_items=100)
    outcomes = await asyncio.gather(coalesce([1]), coalesce([2]), return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    run.fail = False
    assert await coalesce([3]) == [30]


async def test_a_cancelled_caller_does_not_cancel_the_run_others_wait_on() -> None:
    run = Recorder()
    coalesce = Coalescer(run, max_items=100)
    leaving = asyncio.create_task(coalesce([1]))
    await asyncio.sleep(0)
    staying = asyncio.create_task(coalesce([2]))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    run.release.set()
    assert await staying == [20]
