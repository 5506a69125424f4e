"""Snapshots of ``GET /v1/value`` over the rolling windows, kept in the process.

Per-customer figures over a range (distinct customers, revenue per customer and its
spread, repurchase) do not add up across days, so no rollup answers them quickly. The
rolling windows without filters or ``group_by`` are what dashboards and the gauges ask for
again and again: the scorer computes them in the background every
``CXLOOP_SCORER_VALUE_REFRESH_SECONDS``, all at one instant, and answers them from memory
(``as_of`` is that instant, ``snapshot: true``). The first request for a window before its
first snapshot computes it live and keeps it. Each scorer process keeps its own: two
instances may answer from snapshots a refresh interval apart. A refresh computes the 365d
window first: it is the CLV year of every window ending at that instant, so the others
reuse its totals instead of reading the year again.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Final

from sqlalchemy.ext.asyncio import AsyncEngine

from services.scorer import service
from services.scorer.schemas import ValueOut, ValueWindow
from shared.events import utcnow
from shared.kafka import sleep_unless_stopped

log = logging.getLogger(__name__)

WINDOWS: Final = (ValueWindow.MONTH, ValueWindow.QUARTER, ValueWindow.YEAR)
"""The windows kept: a month and a quarter for the dashboards, a year for the gauges."""


class ValueSnapshots:
    """The latest snapshot of each of ``WINDOWS``, computed with ``min_n``."""

    def __init__(self, min_n: int) -> None:
        self.min_n = min_n
        self._values: dict[ValueWindow, ValueOut] = {}
        self._locks = {window: asyncio.Lock() for window in WINDOWS}

    @staticmethod
    def covers(window: str) -> bool:
        """Whether the rolling ``window`` is kept here."""
        return window in WINDOWS

    async def value(self, engine: AsyncEngine, window: ValueWindow) -> ValueOut:
        """The snapshot of ``window``; before the first, computed now and kept."""
        found = self._values.get(window)
        if found is None:
            async with self._locks[window]:
                found = self._values.get(window)
                if found is None:
                    found, _ = await self._compute(engine, window, utcnow())
        return found

    async def refresh(self, engine: AsyncEngine, now: datetime | None = None) -> None:
        """Compute every window again, all as of ``now`` (default: the current time)."""
        now = now or utcnow()
        year = None
        for window in sorted(WINDOWS, key=lambda w: w != ValueWindow.YEAR):
            async with self._locks[window]:
                _, year = await self._compute(engine, window, now, year)

    async def _compute(
        self,
        engine: AsyncEngine,
        window: ValueWindow,
        now: datetime,
        year: service.YearTotals | None = None,
    ) -> tuple[ValueOut, service.YearTotals]:
        span = service.resolve_range(window, None, None, now)
        found, year = await service.value_and_year(
            engine, span, {}, self.min_n, as_of=now, snapshot=True, year=year
        )
        self._values[window] = found
        return found, year


async def keep_fresh(
    engine: AsyncEngine, snapshots: ValueSnapshots, stop: asyncio.Event, every: float
) -> None:
    """Refresh ``snapshots`` every ``every`` seconds until ``stop`` is set; a failed refresh
    keeps the last snapshots (their ``as_of`` says how old they are)."""
    while not stop.is_set():
        try:
            await snapshots.refresh(engine)
        except Exception:
            log.exception("value snapshot refresh failed")
        await sleep_unless_stopped(stop, every)
