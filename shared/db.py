"""Postgres plumbing: the engine, transient- and data-error tests, the schema-at-head check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final
from uuid import UUID

import asyncpg
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Table, bindparam, event, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from shared.errors import PermanentError, SchemaOutdatedError
from shared.settings import DatabaseSettings

# A pooled connection idle longer than this is asked (one ping) before it is used again: a
# load balancer or NAT may have dropped it without either end knowing (AWS's NLB after
# 350 s idle, Azure's after 4 minutes). A busy service reuses its connections within
# milliseconds, so it pays no ping.
IDLE_PING_SECONDS: Final = 10.0
_IDLE_SINCE: Final = "cxloop_idle_since"


def session_settings(settings: DatabaseSettings) -> dict[str, str]:
    """The Postgres settings every session of ``settings``' engines runs with (those of
    create_engine, the services' and the CLI's, and the benchmarks' bare connections)."""
    return {
        # asyncpg prepares every statement; from its sixth run Postgres may switch to a generic
        # plan that ignores the values: measured 17 -> 37 ms for a 90-day score, whose best plan
        # depends on how many days and hours the range covers.
        "plan_cache_mode": "force_custom_plan",
        "parallel_setup_cost": str(settings.parallel_setup_cost),
    }


def create_engine(
    settings: DatabaseSettings,
    pool_timeout: float = 30.0,
    idle_ping_seconds: float = IDLE_PING_SECONDS,
) -> AsyncEngine:
    """Return an asyncpg engine that checks connections before use (Postgres may restart).

    The check (:func:`_checkout`) costs no round trip for a connection that was in use in
    the last ``idle_ping_seconds``: one the server closed (a restart,
    ``pg_terminate_backend``) was seen closing by the driver, and is reconnected. A
    connection idle for longer is also pinged, since a network drop closes nothing. What
    SQLAlchemy's ``pool_pre_ping`` does instead costs three round trips (BEGIN, an empty
    query, ROLLBACK) before every transaction and every read. A connection cut in the
    middle of its idle window fails its first statement with a transient error
    (:func:`is_transient`), and SQLAlchemy then replaces every connection pooled before it
    (:func:`driver_connection` replaces only that one).

    Its errors never quote the statement's parameters (comments, phone numbers, customer
    ids): an error's text reaches logs. What asyncpg itself raises may quote a parameter it
    could not encode (see :func:`driver_connection`). ``pool_timeout`` is the longest wait,
    in seconds, for a pooled connection before ``sqlalchemy.exc.TimeoutError`` (transient,
    see :func:`is_transient`).
    """
    engine = create_async_engine(
        settings.sqlalchemy_url(),
        hide_parameters=True,
        pool_size=settings.pool_size,
        pool_timeout=pool_timeout,
        connect_args={
            "timeout": settings.connect_timeout_seconds,
            "server_settings": session_settings(settings),
        },
    )

    def checkout(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        _checkout(dbapi_connection, record, idle_ping_seconds)

    event.listen(engine.sync_engine, "checkin", _checkin)
    event.listen(engine.sync_engine, "checkout", checkout)
    return engine


# What asyncpg raises itself, unwrapped, for what is sent through driver_connection.
_DRIVER_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError)

# What Postgres being unreachable, a pooled connection cut, or every pooled connection busy
# raise: through SQLAlchemy (wrapped in a DBAPIError), from the pool, from the socket, and
# from asyncpg itself for the statements sent through :func:`driver_connection`. Catch these,
# then ask :func:`is_transient` (retry, or carry on without) or :func:`database_unavailable`.
DATABASE_ERRORS: Final[tuple[type[Exception], ...]] = (
    DBAPIError,
    OSError,
    PoolTimeoutError,
    *_DRIVER_ERRORS,
)


@asynccontextmanager
async def autocommit_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection from ``engine``'s pool in autocommit, for reads: no BEGIN and ROLLBACK
    round trips, and no lock held past the statement that took it. One statement reads
    one snapshot all the same; two read two."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """Yield the asyncpg connection of a connection from ``engine``'s pool (checked as every
    checkout is), for a hot statement sent straight to the driver.

    Each statement commits on its own unless the caller opens ``driver.transaction()``.
    What SQLAlchemy adds around a statement (its transaction, execution context, result
    and the greenlet it runs in) cost the collector about a tenth of its CPU per single
    answer for its two idempotency statements (bench/notes.md, "Idempotency statements").
    asyncpg's errors come unwrapped: catch :data:`DATABASE_ERRORS`. Any error on a
    connection the server closed is raised as ``ConnectionDoesNotExistError`` (08003,
    transient) from it. A connection that saw any error is closed rather than pooled again;
    only that one: unlike SQLAlchemy's own disconnect handling, the rest of the pool is kept
    and each is checked at its checkout. SQLAlchemy's ``hide_parameters`` does not reach
    these statements: asyncpg's refusal to encode a parameter of the wrong type quotes its
    first characters, as SQLAlchemy's chained cause already did.
    """
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        try:
            yield driver
        except Exception as exc:
            lost = driver.is_closed()
            # None that saw an error goes back to the pool: one cut mid-statement may still
            # look open to asyncpg, its protocol stuck in the failed operation.
            await conn.invalidate()
            if lost and not is_transient(exc):
                # The server went away under the statement; what asyncpg raised is about its
                # own state: "connection is closed" from a transaction's exit (the cause is
                # then only in __context__), or, when the server's goodbye was read before
                # its end of stream, InternalClientError from a protocol still consuming it.
                raise asyncpg.ConnectionDoesNotExistError(
                    "the server closed the connection"
                ) from exc
            raise
        except BaseException:  # cancelled: asyncpg may be mid-operation
            await conn.invalidate()
            raise
        if driver.is_in_transaction():  # a caller's BEGIN without its COMMIT
            await conn.invalidate()


def _checkin(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _checkout(dbapi_connection: Any, record: ConnectionPoolEntry, idle_ping_seconds: float) -> None:
    """Refuse a pooled connection its server closed, or one idle past ``idle_ping_seconds``
    that does not answer a ping: SQLAlchemy then reconnects it (twice at most)."""
    driver = record.driver_connection
    if driver is None or driver.is_closed():
        raise DisconnectionError("the server closed this pooled connection")
    since = record.info.pop(_IDLE_SINCE, None)
    if since is not None and time.monotonic() - since > idle_ping_seconds:
        try:
            dbapi_connection.ping()
        except Exception as exc:
            raise DisconnectionError("an idle pooled connection did not answer") from exc


# SQLSTATEs of a server that cannot serve now but will: class 08 (connection exception),
# 53300 too many connections (pgbouncer's "no more connections allowed" too), 57P01 admin
# shutdown, 57P02 crash shutdown, 57P03 cannot connect now (starting up or shutting down).
_UNAVAILABLE_SQLSTATES = frozenset({"53300", "57P01", "57P02", "57P03"})


def is_transient(exc: BaseException) -> bool:
    """Return whether ``exc`` means the database is unreachable (or every pooled connection
    is busy) rather than the query wrong."""
    if isinstance(
        exc, OperationalError | InterfaceError | OSError | ConnectionError | PoolTimeoutError
    ):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # asyncpg's refusals while connecting (a restart's 57P03, 53300) reach SQLAlchemy's
    # pool as its emulated base Error, a plain DBAPIError that is not marked invalidated.
    postgres = postgres_error(exc)
    code = getattr(postgres, "sqlstate", None)
    return isinstance(code, str) and (code[:2] == "08" or code in _UNAVAILABLE_SQLSTATES)


# The modules whose own OSError (a refused or cut connection, a timeout) is the database's.
_DATABASE_MODULES = ("sqlalchemy.", "asyncpg.")


def raised_by_database(exc: BaseException) -> bool:
    """Return whether ``exc`` is the database's: a SQLAlchemy error, or an ``OSError`` raised
    while the driver or the pool was connecting or talking to Postgres (asyncpg lets a
    refused connection's ``OSError`` through unwrapped). An ``OSError`` of anything else in
    a request (a file, another socket) is not, though :func:`is_transient` would call it so.
    """
    if isinstance(exc, (DBAPIError, PoolTimeoutError, *_DRIVER_ERRORS)):
        return True
    if not isinstance(exc, OSError):
        return False
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if isinstance(module, str) and module.startswith(_DATABASE_MODULES):
            return True
        tb = tb.tb_next
    return False


def database_unavailable(exc: BaseException) -> bool:
    """Return whether ``exc`` is the database's own and means it is out of reach for now:
    what a request answers 503 for, with Retry-After, rather than 500."""
    return raised_by_database(exc) and is_transient(exc)


# SQLSTATE classes that blame the values of the rows: 21 cardinality violation, 22 data
# exception (a value out of range or refused by its type), 23 integrity constraint violation,
# 54 program limit exceeded (a value too big for an index row). Anything else (08 connection,
# 40 serialization failure or deadlock, 53 resources, 57 server shutting down, 42 a bug in
# the SQL) says nothing about the data.
_DATA_SQLSTATE_CLASSES = frozenset({"21", "22", "23", "54"})


def refused_data(exc: BaseException) -> str | None:
    """Return why ``exc`` blames the data being written, or None when it does not.

    The data is to blame for a ``PermanentError`` (a handler raises one, naming the field,
    for a value it cannot convert) and for a Postgres error of a data class (a constraint,
    a value out of range, a value too big for an index). A transient error, a programming
    error (a ``ValueError`` included) or any other failure returns None: the same data may
    succeed later. The reason names the condition, table, column and constraint, never a
    value. The caller still treats many records refused for one reason as systemic
    (``shared.kafka``): schema skew or a code bug may raise a data class for every record.
    """
    if isinstance(exc, PermanentError):
        return str(exc) if exc.field is None else f"{exc.field}: {exc}"
    postgres = postgres_error(exc)
    if postgres is not None:
        code: str = postgres.sqlstate
        if code[:2] not in _DATA_SQLSTATE_CLASSES:
            return None
        if isinstance(postgres.__cause__, TypeError):
            # asyncpg could not encode a parameter of the wrong Python type: the code and
            # the schema disagree, whatever the record holds.
            return None
        where = [
            f"{what} {name}"
            for what in ("table", "column", "constraint")
            if (name := getattr(postgres, f"{what}_name", None))
        ]
        reason = f"the database refused it: {type(postgres).__name__} (SQLSTATE {code})"
        return f"{reason}, {', '.join(where)}" if where else reason
    return None


def postgres_error(exc: BaseException) -> Any | None:
    """Return the innermost error carrying a SQLSTATE in ``exc``'s chain, if any.

    SQLAlchemy wraps asyncpg's error (``exc.orig``, whose cause is asyncpg's own); the
    scorer's COPY raises asyncpg's error unwrapped.
    """
    found: Any | None = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(getattr(current, "sqlstate", None), str):
            found = current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return found


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
    ledger rows commit together and a redelivered event is recognised. The ids travel as one
    array parameter, not a VALUES row each: a batch of any size stays within the 32,767 bind
    parameters a Postgres statement may carry.
    """
    event_ids = list(ids)
    if not event_ids:
        return set()
    new_ids = select(func.unnest(bindparam("event_ids", type_=ARRAY(ledger.c.event_id.type))))
    inserted = await conn.execute(
        insert(ledger)
        .from_select(["event_id"], new_ids)
        .on_conflict_do_nothing()
        .returning(ledger.c.event_id),
        {"event_ids": event_ids},
    )
    return {row.event_id for row in inserted}
