"""An alert's lifecycle: open → acknowledged → resolved, with who, when and a note.

Every transition is recorded in ``alert_history`` with its ``actor``: the name of the API
key that asked for it (``cxloop`` when the service acted by itself), never a name the
caller typed, and ``actor_id``: the key's id (``operator`` for the environment's keys,
none for the service), since two keys may share a name. The name a caller may give
(``by``) is kept beside it as ``display_name``; ``acknowledged_by`` and ``resolved_by``
show it, or the key's name when none was given, and the alert keeps the verified key
apart as ``acknowledged_actor``/``_id`` and ``resolved_actor``/``_id``.

Transitions are idempotent where a person would expect it (acknowledging an acknowledged
alert changes nothing) and refused where it would lose information (acknowledging a
resolved alert). :func:`acknowledge` and :func:`resolve` say whether they changed the alert
(:class:`Outcome`): two people acting at once both see the alert's state, and the one who
came second is told, their note kept by the caller (see ``service``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from services.alerting import metrics, outbox
from services.alerting.config import AlertingConfig
from services.alerting.models import alerts, history


class NotFound(Exception):
    """No alert has this id."""


class Conflict(Exception):
    """The transition does not apply to the alert's current state."""


@dataclass(frozen=True)
class Outcome:
    """The alert after a transition, and whether this call made the change (False: it was
    in that state already, acknowledged or resolved by someone else or earlier)."""

    alert: dict[str, Any]
    changed: bool


async def record(
    conn: AsyncConnection,
    alert_id: uuid.UUID,
    actor: str,
    action: str,
    note: str | None = None,
    *,
    display_name: str | None = None,
    actor_id: str | None = None,
) -> None:
    """Append one entry to the alert's history."""
    await conn.execute(
        history.insert().values(
            alert_id=alert_id,
            actor=actor,
            actor_id=actor_id,
            action=action,
            note=note,
            display_name=display_name,
        )
    )


async def _current(conn: AsyncConnection, alert_id: uuid.UUID, *, lock: bool) -> dict[str, Any]:
    """The alert as it is; ``lock`` holds its row until the transaction ends (to change it)."""
    query = sa.select(alerts).where(alerts.c.id == alert_id)
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise NotFound(str(alert_id))
    return dict(row._mapping)


async def acknowledge(
    conn: AsyncConnection,
    alert_id: uuid.UUID,
    actor: str,
    note: str | None,
    config: AlertingConfig | None = None,
    *,
    display_name: str | None = None,
    actor_id: str | None = None,
) -> Outcome:
    """Mark an open alert as being handled by ``actor`` (shown as ``display_name``)."""
    alert = await _current(conn, alert_id, lock=True)
    if alert["status"] == "acknowledged":
        return Outcome(alert, changed=False)
    if alert["status"] == "resolved":
        raise Conflict("the alert is already resolved")
    row = (
        await conn.execute(
            alerts.update()
            .where(alerts.c.id == alert_id)
            .values(
                status="acknowledged",
                acknowledged_at=sa.func.now(),
                acknowledged_by=display_name or actor,
                acknowledged_actor=actor,
                acknowledged_actor_id=actor_id,
            )
            .returning(alerts)
        )
    ).one()
    await record(
        conn, alert_id, actor, "acknowledged", note, display_name=display_name, actor_id=actor_id
    )
    if config is not None:
        await outbox.enqueue(conn, config, dict(row._mapping), "acknowledge")
    metrics.TIME_TO_ACK.labels(rule=alert["rule"]).observe(
        (row.acknowledged_at - row.opened_at).total_seconds()
    )
    return Outcome(dict(row._mapping), changed=True)


async def resolve(
    conn: AsyncConnection,
    alert_id: uuid.UUID,
    actor: str,
    note: str,
    *,
    action: str = "resolved",
    config: AlertingConfig | None = None,
    display_name: str | None = None,
    actor_id: str | None = None,
) -> Outcome:
    """Close an alert with the follow-up note; resolving twice changes nothing."""
    alert = await _current(conn, alert_id, lock=True)
    if alert["status"] == "resolved":
        return Outcome(alert, changed=False)
    row = (
        await conn.execute(
            alerts.update()
            .where(alerts.c.id == alert_id)
            .values(
                status="resolved",
                resolved_at=sa.func.now(),
                resolved_by=display_name or actor,
                resolved_actor=actor,
                resolved_actor_id=actor_id,
                note=note,
            )
            .returning(alerts)
        )
    ).one()
    await record(conn, alert_id, actor, action, note, display_name=display_name, actor_id=actor_id)
    if config is not None:
        await outbox.enqueue(conn, config, dict(row._mapping), "resolve")
    metrics.RESOLVED.labels(rule=alert["rule"]).inc()
    metrics.TIME_TO_RESOLVE.labels(rule=alert["rule"]).observe(
        (row.resolved_at - row.opened_at).total_seconds()
    )
    return Outcome(dict(row._mapping), changed=True)


async def assign(
    conn: AsyncConnection,
    alert_id: uuid.UUID,
    to: str,
    actor: str,
    *,
    display_name: str | None = None,
    actor_id: str | None = None,
) -> dict[str, Any]:
    """Give an unresolved alert to ``to``."""
    alert = await _current(conn, alert_id, lock=True)
    if alert["status"] == "resolved":
        raise Conflict("the alert is already resolved")
    row = (
        await conn.execute(
            alerts.update().where(alerts.c.id == alert_id).values(assignee=to).returning(alerts)
        )
    ).one()
    await record(
        conn, alert_id, actor, "assigned", f"to {to}", display_name=display_name, actor_id=actor_id
    )
    return dict(row._mapping)


async def comment(
    conn: AsyncConnection,
    alert_id: uuid.UUID,
    actor: str,
    text: str,
    *,
    display_name: str | None = None,
    actor_id: str | None = None,
) -> None:
    """Add a comment to an alert's history."""
    # Locked: an erasure updating the alert waits for the comment, then clears its note.
    await _current(conn, alert_id, lock=True)
    await record(
        conn, alert_id, actor, "commented", text, display_name=display_name, actor_id=actor_id
    )


async def entries(conn: AsyncConnection, alert_id: uuid.UUID) -> list[dict[str, Any]]:
    """Return an alert's history, oldest first (a plain read: it locks nothing)."""
    await _current(conn, alert_id, lock=False)
    return await history_of(conn, alert_id)


async def history_of(conn: AsyncConnection, alert_id: uuid.UUID) -> list[dict[str, Any]]:
    """Return the history entries of an alert known to exist, oldest first."""
    rows = await conn.execute(
        sa.select(
            history.c.at,
            history.c.actor,
            history.c.actor_id,
            history.c.display_name,
            history.c.action,
            history.c.note,
        )
        .where(history.c.alert_id == alert_id)
        .order_by(history.c.at, history.c.id)
    )
    return [dict(r._mapping) for r in rows]
