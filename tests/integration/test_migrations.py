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
