"""Score drops: fire on a real fall in a segment, not on noise, and only once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from services.alerting.drops import check, judge
from services.alerting.rules import DropRule
from services.scorer.consumer import BatchHandler
from shared.kafka import Decoded
from tests.builders import response_event

RULE = DropRule(metric="nps", window="7d", by="channel", drop_points=10, min_n=30)


class TestJudge:
    def test_a_fall_within_the_margin_of_error_is_noise(self) -> None:
        # 40 answers each side: a 15-point fall is well inside the margin at this n.
        assert judge(RULE, (40, 14, 10), (40, 17, 7)) is None

    def test_a_large_fall_fires_and_says_why(self) -> None:
        why = judge(RULE, (200, 40, 100), (200, 120, 20))
        assert why is not None
        assert "fell 80.0 points" in why

    def test_below_a_floor_and_too_few_answers(self) -> None:
        floor = DropRule(below=0, min_n=30)
        assert judge(floor, (100, 10, 60), None) is not None
        assert judge(floor, (20, 0, 20), None) is None


class TestCheck:
    async def test_opens_one_alert_for_the_segment_that_fell(self, database_url: str) -> None:
        engine = create_async_engine(database_url)
        try:
            now = datetime.now(UTC)
            before, after = now - timedelta(days=10), now - timedelta(days=2)
            events = (
                [response_event(score=10, channel="sms", occurred_at=before) for _ in range(60)]
                + [response_event(score=2, channel="sms", occurred_at=after) for _ in range(60)]
                + [
                    response_event(score=9, channel="web", occurred_at=t)
                    for t in (before, after)
                    for _ in range(60)
                ]
            )
            await BatchHandler(engine)([Decoded(None, e) for e in events])
            assert await check(engine, [RULE]) == 1
            assert await check(engine, [RULE]) == 0, "the open alert is the one alert"
            async with engine.connect() as conn:
                (rule, channel, comment) = (
                    await conn.execute(sa.text("SELECT rule, channel, comment FROM alerts"))
                ).one()
            assert (rule, channel) == ("score_drop", "sms")
            assert "fell 200.0 points" in comment
        finally:
            await engine.dispose()
