"""Every score equals a direct computation over the distinct events, whatever Kafka does.

Hypothesis draws a stream of responses and ticket events, duplicates and reorders them,
and produces them to a real topic. The scorer consumes them as in production: its own
consume loop (``run_batches`` with ``CXLOOP_SCORER_BATCHES_IN_FLIGHT`` batches in flight,
each in its own transaction) in batches of a drawn size. Then the group's offsets are
rewound, partition by partition, to drawn earlier points, which is what a crash between
the database commit and the offset commit leaves behind, and the scorer is started again
and reads those records a second time. The scorer's tables must then match what the
distinct events say, computed here directly and independently of the scorer's folding code.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from shared.events import ResponseSubmitted, TouchpointEvent
from shared.settings import AuthSettings, KafkaSettings
from tests.harness.backends import PostgresServer
from tests.integration.redelivery import deliver_twice, fresh_scorer

BASE = datetime(2026, 11, 20, tzinfo=UTC)
CHANNELS = ("web", "sms", "call_center")


@st.composite
def response(draw: st.DrawFn) -> ResponseSubmitted:
    metric = draw(st.sampled_from(["nps", "csat", "ces"]))
    scale = {"nps": 10, "csat": 5}.get(metric) or draw(st.sampled_from([5, 7]))
    low = 0 if metric == "nps" else 1
    at = BASE + timedelta(minutes=draw(st.integers(0, 60 * 72)))
    return ResponseSubmitted.model_validate(
        {
            "event_id": uuid.UUID(int=draw(st.integers(1, 2**64))),
            "occurred_at": at,
            "received_at": at,
            "source": "api",
            "channel": draw(st.sampled_from(CHANNELS)),
            "customer_id": f"c{draw(st.integers(0, 9))}",
            "metric": metric,
            "scale": scale,
            "score": draw(st.integers(low, scale)),
            "survey_type": "transactional",
            "touchpoint": "checkout",
            "reasons": draw(st.lists(st.sampled_from(["price", "wait_time", "app"]), max_size=2)),
        }
    )


@st.composite
def ticket_event(draw: st.DrawFn) -> TouchpointEvent:
    at = BASE + timedelta(minutes=draw(st.integers(0, 60 * 72)))
    return TouchpointEvent.model_validate(
        {
            "event_id": uuid.UUID(int=draw(st.integers(1, 2**64))),
            "occurred_at": at,
            "received_at": at,
            "source": "zendesk",
            "channel": "email",
            "customer_id": f"c{draw(st.integers(0, 9))}",
            "type": draw(
                st.sampled_from(
                    ["ticket.created", "ticket.agent_replied", "ticket.resolved", "ticket.reopened"]
                )
            ),
            "ticket_id": f"T{draw(st.integers(0, 4))}",
            "priority": draw(st.sampled_from(["low", "high", None])),
        }
    )


def expected_scores(events: list[Any]) -> dict[tuple[str, int, str], tuple[int, ...]]:
    """(metric, scale, channel) → (n, score sum, sum of squared scores, top count, bottom
    count), computed directly."""
    out: dict[tuple[str, int, str], list[int]] = {}
    for e in events:
        if not isinstance(e, ResponseSubmitted):
            continue
        row = out.setdefault((e.metric.value, e.scale, e.channel.value), [0, 0, 0, 0, 0])
        row[0] += 1
        row[1] += e.score
        row[2] += e.score * e.score
        if e.metric == "nps":
            row[3] += e.score >= 9
            row[4] += e.score <= 6
        elif e.metric == "csat":
            row[3] += e.score >= 4
        else:
            row[3] += e.score >= (4 if e.scale == 5 else 5)
    return {k: tuple(v) for k, v in out.items()}


_SCORES = """
SELECT metric, scale, channel, sum(n) n, sum(score_sum) s, sum(score_sq_sum) sq,
    sum(promoters + satisfied + easy) top, sum(detractors) bottom
FROM {table} GROUP BY 1, 2, 3
"""


async def scores_in(
    conn: AsyncConnection, table: str
) -> dict[tuple[str, int, str], tuple[int, ...]]:
    """What ``table`` holds, in the shape of :func:`expected_scores`."""
    return {
        (r.metric, r.scale, r.channel): (int(r.n), int(r.s), int(r.sq), int(r.top), int(r.bottom))
        for r in await conn.execute(sa.text(_SCORES.format(table=table)))
    }


def expected_tickets(events: list[Any]) -> dict[str, tuple[Any, ...]]:
    tickets: dict[str, dict[str, list[datetime]]] = {}
    for e in events:
        if isinstance(e, TouchpointEvent):
            tickets.setdefault(e.ticket_id or "", {}).setdefault(e.type, []).append(e.occurred_at)
    return {
        tid: (
            min(kinds.get("ticket.created", []), default=None),
            min(kinds.get("ticket.agent_replied", []), default=None),
            max(kinds.get("ticket.resolved", []), default=None),
            len(kinds.get("ticket.reopened", [])),
        )
        for tid, kinds in tickets.items()
    }


@pytest.mark.apache_kafka
class TestScorerIsExact:
    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        stream=st.lists(
            st.one_of(response(), ticket_event()),
            min_size=1,
            max_size=60,
            unique_by=lambda e: e.event_id,
        ),
        batch_size=st.integers(1, 12),
        seed=st.integers(0, 2**32),
    )
    async def test_redelivery_duplicates_and_reordering_change_nothing(
        self,
        kafka_settings: KafkaSettings,
        postgres: PostgresServer,
        migrated_template: str,
        stream: list[Any],
        batch_size: int,
        seed: int,
    ) -> None:
        rng = random.Random(seed)
        url = await postgres.create_database(
            f"p_{uuid.uuid4().hex[:12]}", template=migrated_template
        )
        scorer, start = await fresh_scorer(kafka_settings, batch_size)
        auth = AuthSettings(api_key="test-" + uuid.uuid4().hex)

        await deliver_twice(kafka_settings, url, scorer, auth, start, stream, rng)

        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                # The hours, and the same counts rolled up by day.
                got = await scores_in(conn, "score_buckets")
                got_days = await scores_in(conn, "score_days")
                tickets = {
                    r.ticket_id: (r.created_at, r.first_response_at, r.resolved_at, r.reopens)
                    for r in await conn.execute(
                        sa.text(
                            "SELECT ticket_id, created_at, first_response_at, resolved_at, reopens "
                            "FROM tickets"
                        )
                    )
                }
                raw = await conn.scalar(sa.text("SELECT count(*) FROM responses"))
                reasons = Counter(
                    {
                        r.reason: int(r.n)
                        for r in await conn.execute(
                            sa.text("SELECT reason, sum(n) n FROM reason_buckets GROUP BY 1")
                        )
                    }
                )
            assert got == got_days == expected_scores(stream)
            assert tickets == expected_tickets(stream)
            assert raw == sum(isinstance(e, ResponseSubmitted) for e in stream)
            assert reasons == Counter(
                r
                for e in stream
                if isinstance(e, ResponseSubmitted) and e.metric == "nps"
                for r in set(e.reasons)
            )
        finally:
            await engine.dispose()
