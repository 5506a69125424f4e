"""Which real database failures blame the data, raised as the services meet them.

Each error comes from a statement that really fails on the test Postgres, through the
engine every service uses (SQLAlchemy over asyncpg) or, for the scorer's COPY, through
asyncpg itself, so the wrapping is the one in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg.exceptions
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import create_engine, is_transient, postgres_error, refused_data
from shared.settings import DatabaseSettings

SECRET = "secret@example.com"

TABLE = """
CREATE TABLE answers (
    id int PRIMARY KEY,
    email text NOT NULL,
    code varchar(3),
    score int CONSTRAINT answers_score_valid CHECK (score BETWEEN 0 AND 10),
    at timestamptz
)
"""


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseSettings(url=database_url))
    async with engine.begin() as conn:
        await conn.execute(sa.text(TABLE))
        await conn.execute(sa.text("INSERT INTO answers (id, email) VALUES (1, :e)"), {"e": SECRET})
    yield engine
    await engine.dispose()


async def failure(engine: AsyncEngine, sql: str, *before: str, **params: Any) -> Exception:
    try:
        async with engine.begin() as conn:
            for statement in before:
                await conn.execute(sa.text(statement))
            await conn.execute(sa.text(sql), params)
    except Exception as exc:
        return exc
    raise AssertionError(f"{sql} did not fail")


class TestTheDataIsToBlame:
    @pytest.mark.parametrize(
        ("sql", "params", "expected"),
        [
            (
                "INSERT INTO answers (id, email, score) VALUES (2, :email, 11)",
                {"email": SECRET},
                "CheckViolationError (SQLSTATE 23514), table answers, "
                "constraint answers_score_valid",
            ),
            (
                "INSERT INTO answers (id, email) VALUES (1, :email)",
                {"email": SECRET},
                "UniqueViolationError (SQLSTATE 23505), table answers, constraint answers_pkey",
            ),
            (
                "INSERT INTO answers (id, email) VALUES (2, :email)",
                {"email": None},
                "NotNullViolationError (SQLSTATE 23502), table answers, column email",
            ),
            (
                "INSERT INTO answers (id, email, code) VALUES (2, 'e', :code)",
                {"code": SECRET},
                "StringDataRightTruncationError (SQLSTATE 22001)",
            ),
            (
                "INSERT INTO answers (id, email, score) VALUES (2, 'e', :score)",
                {"score": 2**40},
                "(SQLSTATE 22",
            ),
        ],
        ids=["check", "unique", "not-null", "too-long", "out-of-range"],
    )
    async def test_a_refused_row_names_where_never_the_value(
        self, engine: AsyncEngine, sql: str, params: dict[str, Any], expected: str
    ) -> None:
        error = await failure(engine, sql, **params)
        reason = refused_data(error)
        assert reason is not None, repr(error)
        assert expected in reason
        assert SECRET not in reason

    async def test_a_time_asyncpg_cannot_encode_blames_the_record(
        self, engine: AsyncEngine
    ) -> None:
        # Valid in its own zone, before year 1 in UTC: asyncpg's DataError (22000).
        early = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
        error = await failure(
            engine, "INSERT INTO answers (id, email, at) VALUES (2, 'e', :at)", at=early
        )
        reason = refused_data(error)
        assert reason is not None, repr(error)
        assert "DataError (SQLSTATE 22000)" in reason

    async def test_the_scorer_copy_raises_asyncpg_unwrapped(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            with pytest.raises(asyncpg.exceptions.CheckViolationError) as caught:
                await driver.copy_records_to_table("answers", records=[(3, SECRET, None, 99, None)])
        reason = refused_data(caught.value)
        assert reason is not None
        assert "constraint answers_score_valid" in reason
        assert SECRET not in reason


class TestTheDataIsNotToBlame:
    async def test_a_parameter_of_the_wrong_type_is_a_bug(self, engine: AsyncEngine) -> None:
        # asyncpg's DataError (22000) caused by a TypeError: the code and schema disagree.
        error = await failure(
            engine, "INSERT INTO answers (id, email, score) VALUES (2, 'e', :score)", score="7"
        )
        assert isinstance(postgres_error(error), asyncpg.exceptions.DataError)
        assert refused_data(error) is None

    async def test_a_missing_table_is_a_bug(self, engine: AsyncEngine) -> None:
        assert refused_data(await failure(engine, "INSERT INTO missing VALUES (1)")) is None

    async def test_a_cancelled_statement(self, engine: AsyncEngine) -> None:
        error = await failure(engine, "SELECT pg_sleep(1)", "SET LOCAL statement_timeout = 1")
        cancelled = postgres_error(error)
        assert cancelled is not None
        assert cancelled.sqlstate == "57014"
        assert refused_data(error) is None

    async def test_the_server_dropping_the_connection(self, engine: AsyncEngine) -> None:
        error = await failure(engine, "SELECT pg_terminate_backend(pg_backend_pid())")
        assert refused_data(error) is None
        # The pool notices and the next statement runs on a new connection.
        async with engine.connect() as conn:
            assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1

    async def test_a_connection_closed_under_a_statement(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            sleeping = asyncio.ensure_future(conn.execute(sa.text("SELECT pg_sleep(5)")))
            await asyncio.sleep(0.2)
            driver.terminate()
            with pytest.raises(sa.exc.DBAPIError) as caught:
                await sleeping
        assert refused_data(caught.value) is None
        assert is_transient(caught.value)
