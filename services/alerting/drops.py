"""Score drops: a segment's rolling NPS or CSAT falls below a floor, or drops against the
previous window, by more than the margin of error says chance could.

It reads the scorer's hourly ``score_buckets`` (one database, one migration history) rather
than counting again. A pass runs under an advisory lock, so one instance does it at a time,
and an open drop alert for a segment stays the one alert until someone resolves it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.alerting import lifecycle, metrics, outbox
from services.alerting.config import AlertingConfig
from services.alerting.models import UNRESOLVED, alerts
from services.alerting.rules import DropRule
from shared import scoring
from shared.events import utcnow
from shared.kafka import sleep_unless_stopped
from shared.scoring import Counts

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("9d3e1c2a-7f4b-5e6d-8a9b-0c1d2e3f4a5b")
_LOCK = 0x63786C6F6F70  # one pass at a time across instances


def _estimate(metric: str, counts: tuple[int, int, int]) -> scoring.Estimate:
    """Return the score and margin of (n, promoters or satisfied, detractors)."""
    n, top, bottom = counts
    if metric == "nps":
        return scoring.estimate(metric, Counts(n=n, promoters=top, detractors=bottom))
    return scoring.estimate(metric, Counts(n=n, satisfied=top))


_COUNTS = """
SELECT {group} AS grp, sum(n) AS n,
       sum(CASE WHEN :metric = 'nps' THEN promoters ELSE satisfied END) AS top,
       sum(detractors) AS bottom
FROM score_buckets
WHERE metric = :metric AND bucket_start >= :since AND bucket_start < :until
GROUP BY 1
"""


async def _counts(
    conn: AsyncConnection, rule: DropRule, since: object, until: object
) -> dict[str, tuple[int, int, int]]:
    sql = _COUNTS.format(group=rule.by or "'all'")
    rows = await conn.execute(sa.text(sql), {"metric": rule.metric, "since": since, "until": until})
    return {r.grp: (int(r.n), int(r.top), int(r.bottom)) for r in rows}


def judge(
    rule: DropRule, now: tuple[int, int, int], before: tuple[int, int, int] | None
) -> str | None:
    """Return why the segment counts as dropped, or None. Pure, for testing."""
    n = now[0]
    if n < rule.min_n:
        return None
    current = _estimate(rule.metric, now)
    score, margin = current.value, current.margin
    if score is None or margin is None:  # never: n >= min_n >= 1, and NPS and CSAT have both
        return None
    if rule.below is not None and score < rule.below and rule.below - score > margin:
        return f"{rule.metric.upper()} is {score:.1f} (n={n}, ±{margin:.1f}), below {rule.below:g}"
    if rule.drop_points is not None and before is not None and before[0] >= rule.min_n:
        previous = _estimate(rule.metric, before)
        change = scoring.change(current, previous)
        fall = -change.delta if change.delta is not None else 0.0
        if change.significant and fall >= rule.drop_points:  # drop_points > 0: a fall
            return (
                f"{rule.metric.upper()} fell {fall:.1f} points, from {previous.value:.1f} "
                f"(n={before[0]}) to {score:.1f} (n={n}), beyond the margin of error"
            )
    return None


async def check(
    engine: AsyncEngine, rules: list[DropRule], config: AlertingConfig | None = None
) -> int:
    """Evaluate every drop rule once; return how many alerts were opened."""
    opened = 0
    async with engine.begin() as conn:
        if not await conn.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(_LOCK))):
            return 0
        now = utcnow()
        for rule in rules:
            span = scoring.WINDOWS[rule.window]
            current = await _counts(conn, rule, now - span, now)
            previous = await _counts(conn, rule, now - 2 * span, now - span)
            for group, counts in current.items():
                why = judge(rule, counts, previous.get(group))
                if why is not None:
                    opened += await _open(conn, rule, group, why, config)
    return opened


async def _open(
    conn: AsyncConnection, rule: DropRule, group: str, why: str, config: AlertingConfig | None
) -> int:
    segment = f"{rule.by}={group}" if rule.by else "all"
    key = f"score_drop:{rule.metric}:{rule.window}:{segment}"
    stmt = (
        insert(alerts)
        .values(
            id=uuid.uuid4(),
            dedupe_key=key,
            rule="score_drop",
            severity=rule.severity,
            status="open",
            customer_id="-",
            channel=group if rule.by == "channel" else "all",
            touchpoint=group if rule.by == "touchpoint" else None,
            metric=rule.metric,
            comment=why,
            reasons=[],
            event_id=uuid.uuid5(_NAMESPACE, key),
            occurrences=1,
            opened_at=sa.func.now(),
            last_seen_at=sa.func.now(),
        )
        .on_conflict_do_nothing(index_elements=[alerts.c.dedupe_key], index_where=UNRESOLVED)
    )
    alert_id = (await conn.execute(stmt.returning(alerts.c.id))).scalar()
    if alert_id is None:
        return 0
    await lifecycle.record(conn, alert_id, "cxloop", "opened", why)
    metrics.OPENED.labels(rule="score_drop", severity=rule.severity).inc()
    if config is not None:
        row = (await conn.execute(sa.select(alerts).where(alerts.c.id == alert_id))).one()
        await outbox.enqueue(conn, config, dict(row._mapping), "trigger")
    return 1


async def run(
    engine: AsyncEngine,
    rules: list[DropRule],
    config: AlertingConfig,
    stop: asyncio.Event,
    every: float,
) -> None:
    """Check the drop rules every ``every`` seconds until ``stop`` is set."""
    while not stop.is_set():
        try:
            await check(engine, rules, config)
        except Exception as exc:
            log.warning("score-drop pass failed (%s); retrying", type(exc).__name__)
        await sleep_unless_stopped(stop, every)
