"""Coalesce concurrent calls into one: many requests in flight share one database round trip.

A collector answering 64 requests at once would otherwise hold 64 transactions, queue for
the connection pool, and pay the driver's per-statement cost 64 times. Here, callers that
arrive while a run is in flight wait for the next run, which serves all of them with one
statement over array parameters (as a Kafka producer's linger batches records).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Runs ``run`` over the items of every call waiting, one run at a time.

    ``run`` takes the items of several calls, in order, and returns one result per item;
    each caller gets back the results of its own items. A failure of ``run`` is raised to
    every caller of that run, and the next run starts afresh.
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R]]], max_items: int) -> None:
        self._run = run
        self._max_items = max_items
        self._waiting: list[tuple[Sequence[T], asyncio.Future[list[R]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, items: Sequence[T]) -> list[R]:
        """Return the results of ``items``, computed with whatever else is waiting."""
        if not items:
            return []
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        # Retrieved even when its caller was cancelled, so asyncio does not log it as lost.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting.append((items, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        # A caller that is cancelled (its client went away) must not cancel the shared run.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._waiting:
            batch = self._take()
            items = [item for call_items, _ in batch for item in call_items]
            try:
                results = list(await self._run(items))
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for call_items, future in batch:
                end = start + len(call_items)
                if not future.done():
                    future.set_result(results[start:end])
                start = end

    def _take(self) -> list[tuple[Sequence[T], asyncio.Future[list[R]]]]:
        taken, count = 0, 0
        for call_items, _ in self._waiting:
            if taken and count + len(call_items) > self._max_items:
                break
            taken += 1
            count += len(call_items)
        batch, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return batch
