"""Postgres plumbing: the async engine, transient-error detection and the schema-at-head check."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from uuid import UUID

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Table, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    create_async_engine,
)

from shared.errors import SchemaOutdatedError
from shared.settings import DatabaseSettings


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """Return an asyncpg engine that checks connections before use (Postgres may restart).

    Its errors never quote the statement's parameters (comments, phone numbers, customer
    ids): an error's text reaches logs.
    """
    return create_async_engine(
        settings.sqlalchemy_url(),
        hide_parameters=True,
        pool_size=settings.pool_size,
        pool_pre_ping=True,
        connect_args={
            "timeout": settings.connect_timeout_seconds,
            # asyncpg prepares every statement; from its sixth run Postgres may switch to a
            # generic plan that ignores the values: measured 17 -> 37 ms for a 90-day score,
            # whose best plan depends on how many days and hours the range covers.
            "server_settings": {"plan_cache_mode": "force_custom_plan"},
        },
    )


def is_transient(exc: BaseException) -> bool:
    """Return whether ``exc`` means the database is unreachable rather than the query wrong."""
    if isinstance(exc, OperationalError | InterfaceError | OSError | ConnectionError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


async def database_answers(engine: AsyncEngine, timeout: float = 3.0) -> bool:
    """Return whether Postgres answers ``SELECT 1`` within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except (TimeoutError, DBAPIError, OSError):
        return False


def _current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def assert_schema_current(engine: AsyncEngine, script_location: Path) -> None:
    """Raise ``SchemaOutdatedError`` unless the database is at the newest migration.

    The message names the command that fixes it, because an operator reads it in a log.
    """
    head = ScriptDirectory(str(script_location)).get_current_head()
    async with engine.connect() as conn:
        current = await conn.run_sync(_current_revision)
    if current != head:
        raise SchemaOutdatedError(
            f"database schema is at revision {current or 'none (empty database)'} but this "
            f"version of cxloop needs {head}: run `cxloop migrate` "
            "(it reads CXLOOP_DATABASE_URL), then start the service again"
        )


async def record_new_event_ids(
    conn: AsyncConnection, ledger: Table, ids: Iterable[UUID]
) -> set[UUID]:
    """Insert ``ids`` into a service's applied-events ledger; return those not seen before.

    Run it in the same transaction as the effects of the events, so that the effects and the
    ledger rows commit together and a redelivered event is recognised.
    """
    rows = [{"event_id": event_id} for event_id in ids]
    if not rows:
        return set()
    inserted = await conn.execute(
        insert(ledger).values(rows).on_conflict_do_nothing().returning(ledger.c.event_id)
    )
    return {row.event_id for row in inserted}
