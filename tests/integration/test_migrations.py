"""Migrations apply, revert, keep the data a database already holds, and an outdated schema
stops a service with the fix named."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from services.migrations import MIGRATIONS_DIR, downgrade, upgrade
from services.scorer.app import create_app as create_scorer
from shared import scoring
from shared.db import assert_schema_current
from shared.errors import SchemaOutdatedError
from shared.settings import AuthSettings, DatabaseSettings, KafkaSettings, ScorerSettings
from tests.helpers import serving


class TestMigrations:
    async def test_upgrade_downgrade_upgrade(self, empty_database_url: str) -> None:
        await asyncio.to_thread(upgrade, empty_database_url)
        await asyncio.to_thread(downgrade, empty_database_url, "base")
        await asyncio.to_thread(upgrade, empty_database_url)
        engine = create_async_engine(empty_database_url)
        try:
            await assert_schema_current(engine, MIGRATIONS_DIR)
        finally:
            await engine.dispose()

    async def test_outdated_schema_is_refused(self, empty_database_url: str) -> None:
        engine = create_async_engine(empty_database_url)
        try:
            with pytest.raises(SchemaOutdatedError, match="run `cxloop migrate`"):
                await assert_schema_current(engine, MIGRATIONS_DIR)
        finally:
            await engine.dispose()

    @pytest.mark.parametrize("service", ["scorer", "alerting"])
    async def test_service_exits_naming_the_command(
        self, service: str, empty_database_url: str
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
        env |= {"CXLOOP_DATABASE_URL": empty_database_url, "CXLOOP_API_KEY": "k" * 20}
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli", service],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2
        assert "run `cxloop migrate`" in result.stderr
        assert "Traceback" not in result.stderr

    async def test_cxloop_migrate_brings_it_to_head(self, empty_database_url: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
        env["CXLOOP_DATABASE_URL"] = empty_database_url
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.cli", "migrate"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        engine = create_async_engine(empty_database_url)
        try:
            await assert_schema_current(engine, MIGRATIONS_DIR)
        finally:
            await engine.dispose()


def _answers(now: datetime) -> list[dict[str, Any]]:
    """NPS answers an 0008 database already held: over 90 days, on whole and edge days."""
    rng = random.Random(9)
    hours_ago = [1, 5, 23, 30, 24 * 89 + 20, 24 * 95]  # today, yesterday, the window's edge, out
    hours_ago += [rng.randint(26, 24 * 88) for _ in range(60)]
    answers = []
    for i, ago in enumerate(hours_ago):
        at = now - timedelta(hours=ago, minutes=rng.randint(0, 59))
        answers.append(
            {
                "event_id": uuid.uuid4(),
                "metric": "nps",
                "scale": 10,
                "score": rng.randint(0, 10),
                "survey_type": "transactional",
                "channel": rng.choice(["web", "sms"]),
                "touchpoint": "checkout",
                "customer_id": f"c{i % 7}",
                "source": "api",
                "occurred_at": at,
                "received_at": at,
            }
        )
    return answers


def _hourly(answers: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[int]]:
    """The score_buckets rows of ``answers``: key → n, sum, promoters, passives, detractors."""
    buckets: dict[tuple[Any, ...], list[int]] = {}
    for a in answers:
        hour = a["occurred_at"].replace(minute=0, second=0, microsecond=0)
        key = (hour, a["metric"], a["scale"], a["channel"], a["survey_type"], a["touchpoint"])
        row = buckets.setdefault(key, [0, 0, 0, 0, 0])
        score = a["score"]
        row[0] += 1
        row[1] += score
        row[2 if score >= 9 else 3 if score >= 7 else 4] += 1
    return buckets


class TestMigratingADatabaseWithData:
    async def test_0009_rolls_existing_hours_into_days_that_90_day_scores_read(
        self,
        empty_database_url: str,
        kafka_settings: KafkaSettings,
        auth: AuthSettings,
        api_key: str,
        scorer_settings: ScorerSettings,
    ) -> None:
        now = datetime.now(UTC)
        answers = _answers(now)
        hourly = _hourly(answers)
        await asyncio.to_thread(upgrade, empty_database_url, "0008")
        engine = create_async_engine(empty_database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        "INSERT INTO responses (event_id, metric, scale, score, survey_type, "
                        "channel, touchpoint, customer_id, source, occurred_at, received_at) "
                        "VALUES (:event_id, :metric, :scale, :score, :survey_type, :channel, "
                        ":touchpoint, :customer_id, :source, :occurred_at, :received_at)"
                    ),
                    answers,
                )
                await conn.execute(
                    sa.text(
                        "INSERT INTO score_buckets (bucket_start, metric, scale, channel, "
                        "survey_type, touchpoint, location, product, business_unit, n, "
                        "score_sum, promoters, passives, detractors, satisfied, easy) "
                        "VALUES (:h, :m, :s, :c, :st, :t, '', '', '', :n, :sum, :pro, :pas, "
                        ":det, 0, 0)"
                    ),
                    [
                        dict(zip(("h", "m", "s", "c", "st", "t"), key, strict=True))
                        | dict(zip(("n", "sum", "pro", "pas", "det"), row, strict=True))
                        for key, row in hourly.items()
                    ],
                )

            await asyncio.to_thread(upgrade, empty_database_url, "0009")
            daily: Counter[tuple[Any, ...]] = Counter()
            for (hour, *rest), row in hourly.items():
                day = hour.replace(hour=0)
                for name, value in zip(("n", "sum", "pro", "pas", "det"), row, strict=True):
                    daily[(day, *rest, name)] += value
            async with engine.connect() as conn:
                rolled: Counter[tuple[Any, ...]] = Counter()
                for day in await conn.execute(
                    sa.text(
                        "SELECT bucket_start, metric, scale, channel, survey_type, touchpoint, "
                        "n, score_sum, promoters, passives, detractors FROM score_days"
                    )
                ):
                    key = tuple(day)[:6]
                    counts = tuple(day)[6:]
                    for name, value in zip(("n", "sum", "pro", "pas", "det"), counts, strict=True):
                        rolled[(*key, name)] += value
            assert rolled == daily

            await asyncio.to_thread(upgrade, empty_database_url, "head")
        finally:
            await engine.dispose()

        app = create_scorer(
            kafka_settings, DatabaseSettings(url=empty_database_url), auth, scorer_settings
        )
        async with serving(app, api_key, "scorer") as scorer:
            r = await scorer.get("/v1/scores", params={"metric": "nps", "window": "90d"})
            assert r.status_code == 200, r.text
            body = r.json()
        inside = [a for a in answers if a["occurred_at"] > now - timedelta(days=90)]
        promoters = sum(a["score"] >= 9 for a in inside)
        detractors = sum(a["score"] <= 6 for a in inside)
        assert body["n"] == len(inside) == len(answers) - 1
        assert (body["promoters"], body["detractors"]) == (promoters, detractors)


def _answers_of_every_metric(now: datetime) -> list[dict[str, Any]]:
    """Answers a 0016 database already held, with segments both given and absent."""
    rng = random.Random(17)
    answers = []
    for i in range(150):
        metric = rng.choice(["nps", "csat", "ces"])
        scale = {"nps": 10, "csat": 5}.get(metric) or rng.choice([5, 7])
        at = now - timedelta(hours=rng.randint(6, 24 * 20), minutes=rng.randint(0, 59))
        answers.append(
            _answer(
                metric=metric,
                scale=scale,
                score=rng.randint(0 if metric == "nps" else 1, scale),
                channel=rng.choice(["web", "sms"]),
                location=rng.choice([None, "tokyo"]),
                customer_id=f"c{i % 9}",
                occurred_at=at,
            )
        )
    return answers


def _answer(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4(),
        "survey_type": "transactional",
        "touchpoint": "checkout",
        "source": "api",
        "received_at": fields["occurred_at"],
        **fields,
    }


_INSERT_COUNTS = """
INSERT INTO {table} (bucket_start, metric, scale, channel, location, n, score_sum, survey_type,
    touchpoint, product, business_unit, promoters, passives, detractors, satisfied, easy)
VALUES (:k0, :k1, :k2, :k3, :k4, :n, :s, 'transactional', 'checkout', '', '', 0, 0, 0, 0, 0)
"""


def _key(a: dict[str, Any]) -> tuple[Any, ...]:
    hour = a["occurred_at"].astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return (hour, a["metric"], a["scale"], a["channel"], a["location"] or "")


class TestScoreSquares:
    async def test_0017_fills_squares_from_the_raw_rows(
        self,
        empty_database_url: str,
        kafka_settings: KafkaSettings,
        auth: AuthSettings,
        api_key: str,
        scorer_settings: ScorerSettings,
    ) -> None:
        now = datetime.now(UTC)
        answers = _answers_of_every_metric(now)
        # Erased before the migration: their raw rows are gone, their counts are not.
        three, four = now - timedelta(hours=3), now - timedelta(hours=4)
        erased = [
            *(_answer(metric="ces", scale=5, score=s, channel="email", location=None,
                      customer_id="erased", occurred_at=three) for s in (4, 5)),
            *(_answer(metric="ces", scale=5, score=s, channel="email", location=None,
                      customer_id="erased", occurred_at=four) for s in (1, 5, 3)),
        ]  # fmt: skip
        kept = _answer(
            metric="ces", scale=5, score=2, channel="email", location=None,
            customer_id="kept", occurred_at=three,
        )  # fmt: skip
        answers.append(kept)

        hourly: dict[tuple[Any, ...], list[int]] = {}
        for a in [*answers, *erased]:
            row = hourly.setdefault(_key(a), [0, 0])
            row[0] += 1
            row[1] += a["score"]
        daily: dict[tuple[Any, ...], list[int]] = {}
        for (hour, *rest), (n, total) in hourly.items():
            row = daily.setdefault((hour.replace(hour=0), *rest), [0, 0])
            row[0] += n
            row[1] += total

        await asyncio.to_thread(upgrade, empty_database_url, "0016")
        engine = create_async_engine(empty_database_url)
        columns = "bucket_start, metric, scale, channel, location, n, score_sum"
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        "INSERT INTO responses (event_id, metric, scale, score, survey_type, "
                        "channel, touchpoint, location, customer_id, source, occurred_at, "
                        "received_at) VALUES (:event_id, :metric, :scale, :score, :survey_type, "
                        ":channel, :touchpoint, :location, :customer_id, :source, :occurred_at, "
                        ":received_at)"
                    ),
                    [*answers, *erased],
                )
                for table, rows in (("score_buckets", hourly), ("score_days", daily)):
                    await conn.execute(
                        sa.text(_INSERT_COUNTS.format(table=table)),
                        [
                            {f"k{i}": k for i, k in enumerate(key)} | {"n": n, "s": total}
                            for key, (n, total) in rows.items()
                        ],
                    )
                await conn.execute(sa.text("DELETE FROM responses WHERE customer_id = 'erased'"))

            await asyncio.to_thread(upgrade, empty_database_url, "0017")

            squares: Counter[tuple[Any, ...]] = Counter()
            for a in answers:
                squares[_key(a)] += a["score"] ** 2
            # 4 and 5 erased beside a kept 2: 2² + the least squares of two integer scores
            # summing to 9, 4² + 5² = 41: exact. 1, 5 and 3 all erased: three scores summing to
            # 9 are at least 3 × 3² = 27 (not the 35 they were: the spread is understated).
            squares[_key(kept)] += 41
            squares[_key(erased[-1])] = 27
            by_day: Counter[tuple[Any, ...]] = Counter()
            for (hour, *rest), sq in squares.items():
                by_day[(hour.replace(hour=0), *rest)] += sq
            async with engine.connect() as conn:
                got = {
                    table: {
                        tuple(row)[:5]: row.score_sq_sum
                        for row in await conn.execute(
                            sa.text(f"SELECT {columns}, score_sq_sum FROM {table}")  # noqa: S608
                        )
                    }
                    for table in ("score_buckets", "score_days")
                }
            assert got["score_buckets"] == dict(squares)
            assert got["score_days"] == dict(by_day)

            await asyncio.to_thread(upgrade, empty_database_url, "head")
        finally:
            await engine.dispose()

        ces7 = [a["score"] for a in answers if (a["metric"], a["scale"]) == ("ces", 7)]
        app = create_scorer(
            kafka_settings, DatabaseSettings(url=empty_database_url), auth, scorer_settings
        )
        async with serving(app, api_key, "scorer") as scorer:
            r = await scorer.get(
                "/v1/scores", params={"metric": "ces", "scale": 7, "window": "90d"}
            )
            assert r.status_code == 200, r.text
            body = r.json()
        assert body["n"] == len(ces7) > 1
        assert body["margin"] == pytest.approx(
            scoring.mean_margin_of_error(len(ces7), sum(ces7), sum(s * s for s in ces7))
        )


class TestOutboxIndexes:
    async def test_a_run_that_failed_mid_build_is_rerun_into_valid_indexes(
        self, empty_database_url: str
    ) -> None:
        """0022 builds its indexes concurrently (no write to notifications waits for it); a
        concurrent build that fails leaves an INVALID index, which the next run replaces."""
        await asyncio.to_thread(upgrade, empty_database_url, "0021")
        engine = create_async_engine(empty_database_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                alert_id = await conn.scalar(
                    sa.text(
                        "INSERT INTO alerts (id, dedupe_key, rule, severity, status, customer_id,"
                        " channel, reasons, event_id, occurrences, opened_at, last_seen_at)"
                        " VALUES (gen_random_uuid(), 'k', 'detractor', 'critical', 'open', 'c1',"
                        " 'web', ARRAY['score 1'], gen_random_uuid(), 1, now(), now())"
                        " RETURNING id"
                    )
                )
                await conn.execute(
                    sa.text(
                        "INSERT INTO notifications (id, alert_id, receiver, action, due_since)"
                        " SELECT gen_random_uuid(), :a, 'r', 'trigger', '2026-01-01'"
                        " FROM generate_series(1, 2)"
                    ),
                    {"a": alert_id},
                )
                # A build interrupted half way: the index exists, marked invalid.
                with pytest.raises(sa.exc.IntegrityError):
                    await conn.execute(
                        sa.text(
                            "CREATE UNIQUE INDEX CONCURRENTLY notifications_budget"
                            " ON notifications (due_since)"
                        )
                    )
            await asyncio.to_thread(upgrade, empty_database_url, "head")
            async with engine.connect() as conn:
                indexes = (
                    await conn.execute(
                        sa.text(
                            "SELECT c.relname, i.indisvalid, i.indisunique FROM pg_index AS i"
                            " JOIN pg_class AS c ON c.oid = i.indexrelid"
                            " WHERE c.relname IN"
                            " ('notifications_budget', 'notifications_receiver_due')"
                            " ORDER BY c.relname"
                        )
                    )
                ).all()
            assert [tuple(row) for row in indexes] == [
                ("notifications_budget", True, False),
                ("notifications_receiver_due", True, False),
            ]
            await asyncio.to_thread(downgrade, empty_database_url, "0021")
            async with engine.connect() as conn:
                left = await conn.scalar(
                    sa.text(
                        "SELECT count(*) FROM pg_class WHERE"
                        " relname IN ('notifications_budget', 'notifications_receiver_due')"
                    )
                )
            assert left == 0
        finally:
            await engine.dispose()
