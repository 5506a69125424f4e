"""Score gauges for Prometheus, refreshed in the background over a bounded label set.

Labels: metric (nps, csat, ces), scale, window (24h, 7d, 30d) and channel (every channel
and ``all``) — a few hundred series at most, never a customer or free text. Customer value:
currency (only those of ``CXLOOP_SCORER_VALUE_CURRENCIES``) and NPS category, read from the
365-day value snapshot (``services/scorer/snapshots.py``). Retention drift: period (week,
month).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Final

import sqlalchemy as sa
from prometheus_client import Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from services.scorer.aggregates import period_starts
from services.scorer.models import COUNTS
from services.scorer.schemas import ValueWindow
from services.scorer.snapshots import ValueSnapshots
from shared import scoring
from shared.db import autocommit_connection
from shared.events import utcnow
from shared.kafka import sleep_unless_stopped
from shared.metrics import name
from shared.scoring import Counts

log = logging.getLogger(__name__)

WINDOWS: Final = ("24h", "7d", "30d")

SCORE = Gauge(
    name("scorer", "score"),
    "NPS (−100…100), CSAT (% satisfied) or mean CES over a rolling window.",
    ["metric", "scale", "window", "channel"],
)
SAMPLE_SIZE = Gauge(
    name("scorer", "sample_size"),
    "Responses behind each score gauge.",
    ["metric", "scale", "window", "channel"],
)
SERVICE_TIME = Gauge(
    name("scorer", "service_time_seconds"),
    "First-response and resolution time quantiles of tickets created in the last 7 days.",
    ["kind", "quantile", "priority"],
)

REVENUE_AT_RISK = Gauge(
    name("scorer", "revenue_at_risk"),
    "Net revenue of the last 365 days from customers whose latest NPS answer is a "
    "detractor's, in the currency's major unit (as GET /v1/value).",
    ["currency"],
)
REFRESHED = Gauge(
    name("scorer", "gauges_refreshed_timestamp_seconds"),
    "When this instance last refreshed its score gauges (Unix time): with several scorers, "
    "read the score gauges of an instance that refreshed recently, since one that cannot "
    "reach the database keeps exporting its last values.",
)
CLV = Gauge(
    name("scorer", "clv"),
    "Customer lifetime value over the last 365 days, in the currency's major unit, by the "
    "customers' NPS category (all: every customer), as GET /v1/value.",
    ["currency", "nps_category"],
)

RETENTION_DRIFT = Gauge(
    name("scorer", "retention_drift"),
    "Customers active in this or the previous week or month (customer_activity) less those "
    "the retention counts (retention_counts) hold as active: 0 unless older scorers stored "
    "activity during a rollout across migration 0023 (`cxloop scorer retention` counts every "
    "period again). None while it cannot be read.",
    ["period"],
)

# One statement, so one snapshot: a batch commits its activity rows and their counts
# together, and a reader sees both or neither.
_RETENTION_DRIFT_SQL = """
SELECT p.period,
       (SELECT count(*) FROM customer_activity a
        WHERE a.period = p.period AND a.period_start >= p.since)
     - (SELECT coalesce(sum(r.active), 0) FROM retention_counts r
        WHERE r.period = p.period AND r.period_start >= p.since) AS drift
FROM (VALUES ('week', CAST(:week AS date)), ('month', CAST(:month AS date))) AS p(period, since)
"""

_COUNTS_SQL = f"""
SELECT metric, scale, channel, {", ".join(f"sum({c}) AS {c}" for c in COUNTS)}
FROM score_buckets WHERE bucket_start >= :since GROUP BY metric, scale, channel
"""  # noqa: S608 - constant column names only

_TIMES_SQL = """
WITH t AS (
    SELECT coalesce(priority, 'normal') AS priority,
           extract(epoch FROM first_response_at - created_at) AS fr,
           CASE WHEN reopened_at IS NULL OR resolved_at > reopened_at
                THEN extract(epoch FROM resolved_at - created_at) END AS res
    FROM tickets WHERE created_at >= :since
)
SELECT priority,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY fr) AS fr50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY fr) AS fr90,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY res) AS res50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY res) AS res90
FROM t GROUP BY priority
"""


async def refresh(engine: AsyncEngine) -> None:
    """Recompute every gauge from Postgres."""
    now = utcnow()
    scores: dict[tuple[str, str, str, str], tuple[float | None, int]] = {}
    async with engine.connect() as conn:
        for window in WINDOWS:
            since = scoring.window_start(window, now)
            totals: dict[tuple[str, int], Counts] = {}
            for row in await conn.execute(sa.text(_COUNTS_SQL), {"since": since}):
                c = Counts(**{f: int(getattr(row, f)) for f in COUNTS})
                scores[(row.metric, str(row.scale), window, row.channel)] = (
                    scoring.score(row.metric, c),
                    c.n,
                )
                totals.setdefault((row.metric, row.scale), Counts()).add(c)
            for (metric, scale), c in totals.items():
                scores[(metric, str(scale), window, "all")] = (scoring.score(metric, c), c.n)
        times = (await conn.execute(sa.text(_TIMES_SQL), {"since": now - timedelta(days=7)})).all()
    SCORE.clear()
    SAMPLE_SIZE.clear()
    for labels, (score, n) in scores.items():
        SAMPLE_SIZE.labels(*labels).set(n)
        if score is not None:
            SCORE.labels(*labels).set(score)
    SERVICE_TIME.clear()
    for row in times:
        for kind, q, value in (
            ("first_response", "0.5", row.fr50),
            ("first_response", "0.9", row.fr90),
            ("resolution", "0.5", row.res50),
            ("resolution", "0.9", row.res90),
        ):
            if value is not None:
                SERVICE_TIME.labels(kind, q, row.priority).set(value)


async def refresh_retention_drift(engine: AsyncEngine) -> None:
    """Set the retention drift of the current and previous week and month; on a failure
    export none rather than a stale figure."""
    week, month = period_starts(utcnow())
    previous = {
        "week": week - timedelta(days=7),
        "month": (month - timedelta(days=1)).replace(day=1),
    }
    try:
        async with autocommit_connection(engine) as conn:  # no lock held past it
            drift = (await conn.execute(sa.text(_RETENTION_DRIFT_SQL), previous)).all()
    except Exception:
        RETENTION_DRIFT.clear()
        raise
    for row in drift:
        RETENTION_DRIFT.labels(row.period).set(int(row.drift))


async def refresh_value(
    engine: AsyncEngine, currencies: Sequence[str], values: ValueSnapshots
) -> None:
    """Set revenue at risk and CLV by NPS category over the last 365 days, for
    ``currencies`` only (a bounded label set), from the 365-day value snapshot."""
    found = await values.value(engine, ValueWindow.YEAR)
    by_currency = {c.currency: c for c in found.currencies}
    REVENUE_AT_RISK.clear()
    CLV.clear()
    for currency in currencies:
        figures = by_currency.get(currency)
        if figures is None:
            REVENUE_AT_RISK.labels(currency).set(0)
            continue
        REVENUE_AT_RISK.labels(currency).set(float(Decimal(figures.revenue_at_risk.revenue)))
        if figures.clv is not None:
            CLV.labels(currency, "all").set(float(Decimal(figures.clv)))
        for category in figures.by_nps:
            if category.clv is not None:
                CLV.labels(currency, category.category).set(float(Decimal(category.clv)))


async def keep_fresh(
    engine: AsyncEngine,
    stop: asyncio.Event,
    every: float,
    currencies: Sequence[str],
    values: ValueSnapshots,
) -> None:
    """Refresh the gauges every ``every`` seconds until ``stop`` is set."""
    while not stop.is_set():
        try:
            await refresh(engine)
            REFRESHED.set_to_current_time()
        except Exception as exc:
            # The type only: a driver's message may quote a row.
            log.warning("refreshing the score gauges failed (%s)", type(exc).__name__)
        with contextlib.suppress(Exception):
            await refresh_value(engine, currencies, values)
        with contextlib.suppress(Exception):
            await refresh_retention_drift(engine)
        await sleep_unless_stopped(stop, every)
