"""What on-call does with alerts, between the routes (or the console's pages) and the SQL.

Every function takes plain arguments (the engine, ids, the :class:`Actor` who acts, the
request bodies) and returns the HTTP schemas, so the JSON API and the console's pages call
the same functions. A missing alert or silence raises :class:`NotFound`, a transition that
does not apply :class:`Conflict`, a bad cursor or filter ``PermanentError`` (422).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.alerting import lifecycle, repository
from services.alerting.config import AlertingConfig
from services.alerting.rules import Severity
from services.alerting.schemas import (
    AckIn,
    Alert,
    AlertErasure,
    AlertList,
    AssignIn,
    CommentIn,
    CustomerTouch,
    CustomerTouches,
    Facet,
    FacetValue,
    History,
    HistoryEntry,
    Link,
    NotificationOut,
    Notifications,
    QueueCounts,
    QueueFilters,
    QueueSort,
    ResolveIn,
    Silence,
    SilenceIn,
    SilenceList,
)
from shared import erasure
from shared.apikeys import Principal
from shared.errors import PermanentError
from shared.events import utcnow
from shared.privacy import Hasher

T = TypeVar("T")

NotFound = lifecycle.NotFound
Conflict = lifecycle.Conflict

QUEUE_LIMIT = 500  # the most alerts one page holds
FACET_VALUES = 50  # the most values one facet of queue_counts lists
CUSTOMER_ALERTS = 100  # the most alerts alerts_for_customer returns
SILENCE_LIMIT = 500  # the most silences one list holds


class SilenceNotFound(NotFound):
    """No silence has this id."""


@dataclass(frozen=True)
class Actor:
    """Who acts: the API key's name and id (``operator`` for the environment's keys)."""

    name: str
    id: str | None = None

    @classmethod
    def of(cls, principal: Principal) -> Actor:
        """The actor of a request made with ``principal``'s key."""
        return cls(principal.name, principal.caller)


async def _in_transaction(
    engine: AsyncEngine, step: Callable[[AsyncConnection], Awaitable[T]]
) -> T:
    async with engine.begin() as conn:
        return await step(conn)


# The on-call queue.


def encode_cursor(sort: QueueSort, values: Sequence[Any]) -> str:
    """The cursor that continues a page of ``sort`` after the alert with sort keys ``values``."""
    keys = [v.isoformat() if isinstance(v, datetime) else str(v) for v in values]
    text = json.dumps({"sort": sort.value, "after": keys}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# The times a cursor may name: every alert was opened by the database's now().
_CURSOR_TIMES = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC))


def decode_cursor(sort: QueueSort, cursor: str) -> list[Any]:
    """The sort keys a cursor of ``sort`` continues after; ``PermanentError`` (naming
    ``cursor``) if it is not one: every key must be the string :func:`encode_cursor`
    writes, and the time one the database can hold."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(data, dict) or data.get("sort") != sort.value:
            raise PermanentError("the cursor belongs to another sort order", field="cursor")
        after = data["after"]
        if not isinstance(after, list) or not all(isinstance(k, str) for k in after):
            raise ValueError("keys are strings")
        *rank, opened_at, alert_id = after
        values: list[Any] = [int(r) for r in rank]
        if len(values) != (1 if sort is QueueSort.SEVERITY else 0):
            raise ValueError("wrong number of keys")
        if any(not 0 <= v <= len(Severity) for v in values):
            raise ValueError("no such severity rank")
        opened = datetime.fromisoformat(opened_at)
        if opened.tzinfo is None:
            raise ValueError("naive time")
        opened = opened.astimezone(UTC)
        if not _CURSOR_TIMES[0] <= opened < _CURSOR_TIMES[1]:
            raise ValueError("no alert was opened then")
        return [*values, opened, uuid.UUID(alert_id)]
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError, OverflowError):
        raise PermanentError("not a cursor this API returned", field="cursor") from None


async def queue(
    engine: AsyncEngine,
    filters: QueueFilters | None = None,
    sort: QueueSort = QueueSort.SEVERITY,
    limit: int = 100,
    cursor: str | None = None,
) -> AlertList:
    """One page of alerts matching ``filters`` (open ones by default), most severe first and
    then oldest first by default; ``next_cursor`` continues it."""
    filters = filters or QueueFilters()
    if not 1 <= limit <= QUEUE_LIMIT:
        raise PermanentError(f"limit must be from 1 to {QUEUE_LIMIT}", field="limit")
    after = None if cursor is None else decode_cursor(sort, cursor)
    async with engine.connect() as conn:
        rows = await repository.queue(conn, filters, sort, limit + 1, after)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = (
        encode_cursor(sort, repository.sort_values(sort, page[-1])) if more and page else None
    )
    return AlertList(items=[Alert.model_validate(r) for r in page], next_cursor=next_cursor)


async def queue_counts(engine: AsyncEngine, filters: QueueFilters | None = None) -> QueueCounts:
    """Per facet (rule, channel, location, assignee, status), how many alerts each value has
    under the other filters given: what choosing that value would show. Each facet lists
    its ``FACET_VALUES`` most frequent values; ``more`` says whether others exist."""
    filters = filters or QueueFilters()
    facets: dict[str, Facet] = {}
    async with engine.connect() as conn:
        for name in repository.FACETS:
            counts = await repository.facet_counts(conn, filters, name, FACET_VALUES + 1)
            facets[name] = Facet(
                values=[FacetValue(value=v, count=n) for v, n in counts[:FACET_VALUES]],
                more=len(counts) > FACET_VALUES,
            )
    return QueueCounts(**facets)


async def alerts_version(engine: AsyncEngine) -> int:
    """A number that grows whenever a change to alerts commits (one row read)."""
    async with engine.connect() as conn:
        return await repository.version(conn)


# One alert.


async def get_alert(engine: AsyncEngine, alert_id: uuid.UUID) -> Alert:
    """One alert; ``NotFound`` if no alert has the id."""
    async with engine.connect() as conn:
        row = await repository.get_alert(conn, alert_id)
    if row is None:
        raise NotFound(str(alert_id))
    return Alert.model_validate(row)


def alert_links(config: AlertingConfig, alert: Alert) -> list[Link]:
    """The links an alert's page shows: its ticket (by the ticket source's link template)
    and its rule's runbook (else the config's)."""
    return [Link.model_validate(link) for link in config.links(alert.model_dump())]


@dataclass(frozen=True)
class Transition:
    """An alert after an acknowledge or resolve, and whether that call changed it.

    ``changed`` is False when the alert was in that state already (someone else got there
    first, or this is a retry); the caller's note was then added to the history as a comment
    rather than lost, unless it is the resolution note already there (a retry).
    """

    alert: Alert
    changed: bool


async def _keep_note(
    conn: AsyncConnection,
    outcome: lifecycle.Outcome,
    alert_id: uuid.UUID,
    actor: Actor,
    note: str | None,
    by: str | None,
) -> Transition:
    if not outcome.changed and note and note != outcome.alert.get("note"):
        await lifecycle.comment(
            conn, alert_id, actor.name, note, display_name=by, actor_id=actor.id
        )
    return Transition(Alert.model_validate(outcome.alert), outcome.changed)


async def acknowledge(
    engine: AsyncEngine, config: AlertingConfig, alert_id: uuid.UUID, actor: Actor, body: AckIn
) -> Transition:
    """Take the alert: it stops escalating; twice changes nothing (the second note, if any,
    is added as a comment). ``Conflict`` if resolved."""

    async def step(conn: AsyncConnection) -> Transition:
        outcome = await lifecycle.acknowledge(
            conn, alert_id, actor.name, body.note, config, display_name=body.by, actor_id=actor.id
        )
        return await _keep_note(conn, outcome, alert_id, actor, body.note, body.by)

    return await _in_transaction(engine, step)


async def resolve(
    engine: AsyncEngine,
    config: AlertingConfig,
    alert_id: uuid.UUID,
    actor: Actor,
    body: ResolveIn,
) -> Transition:
    """Close the loop with the required follow-up note. Resolving a resolved alert changes
    nothing, and its note is added as a comment (unless it is the resolution note)."""

    async def step(conn: AsyncConnection) -> Transition:
        outcome = await lifecycle.resolve(
            conn,
            alert_id,
            actor.name,
            body.note,
            config=config,
            display_name=body.by,
            actor_id=actor.id,
        )
        return await _keep_note(conn, outcome, alert_id, actor, body.note, body.by)

    return await _in_transaction(engine, step)


async def assign(engine: AsyncEngine, alert_id: uuid.UUID, actor: Actor, body: AssignIn) -> Alert:
    """Give an unresolved alert to ``body.to``; ``Conflict`` if resolved."""
    row = await _in_transaction(
        engine,
        lambda c: lifecycle.assign(
            c, alert_id, body.to, actor.name, display_name=body.by, actor_id=actor.id
        ),
    )
    return Alert.model_validate(row)


async def comment(
    engine: AsyncEngine, alert_id: uuid.UUID, actor: Actor, body: CommentIn
) -> History:
    """Add a comment to the alert's history; return the whole history."""

    async def step(conn: AsyncConnection) -> list[dict[str, Any]]:
        await lifecycle.comment(
            conn, alert_id, actor.name, body.text, display_name=body.by, actor_id=actor.id
        )
        return await lifecycle.entries(conn, alert_id)

    rows = await _in_transaction(engine, step)
    return History(items=[HistoryEntry.model_validate(e) for e in rows])


async def history(engine: AsyncEngine, alert_id: uuid.UUID) -> History:
    """Everything that happened to the alert, oldest first (a plain read)."""
    async with engine.connect() as conn:
        rows = await lifecycle.entries(conn, alert_id)
    return History(items=[HistoryEntry.model_validate(e) for e in rows])


async def notifications(engine: AsyncEngine, alert_id: uuid.UUID) -> Notifications:
    """Each notification of the alert, oldest first, with how its delivery went: status
    (pending, delivered or failed), attempts, the last error and when it was delivered."""
    async with engine.connect() as conn:
        rows = await repository.notifications_of(conn, alert_id)
    return Notifications(items=[NotificationOut.model_validate(r) for r in rows])


# Silences.


async def create_silence(engine: AsyncEngine, actor: Actor, body: SilenceIn) -> Silence:
    """Start a silence now, for ``body.duration_minutes`` or until ``body.ends_at``."""
    ends_at = body.ends_at or utcnow() + timedelta(minutes=body.duration_minutes or 0)
    async with engine.begin() as conn:
        row = await repository.create_silence(
            conn,
            body.matchers,
            ends_at,
            actor.name,
            body.created_by or actor.name,
            body.comment,
            actor_id=actor.id,
        )
    return Silence.model_validate(row)


async def list_silences(
    engine: AsyncEngine,
    *,
    active: bool = True,
    ended_since: datetime | None = None,
    limit: int = SILENCE_LIMIT,
) -> SilenceList:
    """Active silences (or, with ``active=False``, those and the ones that ended since
    ``ended_since``, or every one), newest first; at most ``limit``, ``more`` saying
    whether there were others."""
    async with engine.connect() as conn:
        rows = await repository.list_silences(
            conn, active_only=active, ended_since=ended_since, limit=limit + 1
        )
    return SilenceList(
        items=[Silence.model_validate(r) for r in rows[:limit]], more=len(rows) > limit
    )


@dataclass(frozen=True)
class Expiry:
    """A silence after expire_silence, and whether that call ended it (False: it had
    ended already, by its time or by someone)."""

    silence: Silence
    changed: bool


async def expire_silence(engine: AsyncEngine, silence_id: uuid.UUID, actor: Actor) -> Expiry:
    """End a silence now (an ended one stays as it was); ``SilenceNotFound`` if unknown."""
    async with engine.begin() as conn:
        row, changed = await repository.expire_silence(
            conn, silence_id, actor.name, actor_id=actor.id
        )
    if row is None:
        raise SilenceNotFound(str(silence_id))
    return Expiry(Silence.model_validate(row), changed)


# The customer behind an alert.


async def alerts_for_customer(
    engine: AsyncEngine, customer_id: str, *, limit: int = CUSTOMER_ALERTS
) -> AlertList:
    """The customer's alerts, newest first, every status (at most ``limit``)."""
    async with engine.connect() as conn:
        rows = await repository.alerts_of_customer(conn, customer_id, limit)
    return AlertList(items=[Alert.model_validate(r) for r in rows])


async def customer_touches(
    engine: AsyncEngine, customer_id: str, config: AlertingConfig | None = None
) -> CustomerTouches:
    """The customer's last answers and ticket events, newest first (the service keeps 20),
    each ticket with its page when ``config`` has a link template for its source."""
    async with engine.connect() as conn:
        return await _touches(conn, customer_id, config)


async def _touches(
    conn: AsyncConnection, customer_id: str, config: AlertingConfig | None
) -> CustomerTouches:
    rows = await repository.touches_of(conn, customer_id)
    items = []
    for row in rows:
        touch = CustomerTouch.model_validate(row)
        if config is not None:
            # A ticket event's source is its ticket system; an answer's is the survey's.
            source = touch.source if touch.kind == "ticket" else None
            touch.ticket_url = config.ticket_url(source, touch.ticket_id)
        items.append(touch)
    return CustomerTouches(customer_id=customer_id, items=items)


@dataclass(frozen=True)
class AlertView:
    """Everything an alert's page shows, read at one moment."""

    alert: Alert
    others: list[Alert]  # the customer's other alerts, newest first
    touches: CustomerTouches
    history: History
    notifications: Notifications


async def alert_view(
    engine: AsyncEngine, alert_id: uuid.UUID, config: AlertingConfig, *, others: int = 20
) -> AlertView:
    """An alert with its customer's other alerts and touches, its history and notifications:
    plain reads (no row locked) on one connection, in one snapshot. ``NotFound`` if none."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            row = await repository.get_alert(conn, alert_id)
            if row is None:
                raise NotFound(str(alert_id))
            alert = Alert.model_validate(row)
            theirs = await repository.alerts_of_customer(conn, alert.customer_id, others)
            touches = await _touches(conn, alert.customer_id, config)
            entries = await repository.history_of(conn, alert_id)
            sent = await repository.notifications_of(conn, alert_id)
    return AlertView(
        alert=alert,
        others=[a for a in (Alert.model_validate(r) for r in theirs) if a.id != alert.id],
        touches=touches,
        history=History(items=[HistoryEntry.model_validate(e) for e in entries]),
        notifications=Notifications(items=[NotificationOut.model_validate(n) for n in sent]),
    )


async def erase_customer(engine: AsyncEngine, hasher: Hasher, customer_id: str) -> AlertErasure:
    """Erase the customer from alerting alone, as a ``customer.erased`` event would."""
    async with engine.begin() as conn:
        await erasure.lock(conn, "alerting", exclusive=True)
        pseudonym = await erasure.pseudonym_for(conn, hasher, "alerting", customer_id)
        erased = await repository.erase_customer(conn, customer_id, pseudonym)
    return AlertErasure(alerts_pseudonymised=erased)
