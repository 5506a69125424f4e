"""Survey invitations, survey fatigue and SMS opt-outs, in Postgres.

Phone numbers are never stored: both tables keep ``phone_hash``, the keyed hash of the
number (:meth:`shared.privacy.Hasher.phone`), which is all a reply needs to be matched.
Invitations are purged ``CXLOOP_COLLECTOR_INVITATION_RETENTION_DAYS`` after creation, and
an erased customer's at once; an opt-out outlives erasure (as a hash), so that a number
which said STOP is never surveyed again.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from services.collector.schemas import InvitationIn
from shared import erasure
from shared.errors import PermanentError
from shared.events import resolve_scale, utcnow
from shared.privacy import Hasher

metadata = sa.MetaData()
invitations = sa.Table(
    "invitations",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("phone_hash", sa.Text),
    sa.Column("metric", sa.Text, nullable=False),
    sa.Column("scale", sa.SmallInteger, nullable=False),
    sa.Column("survey_type", sa.Text, nullable=False),
    sa.Column("touchpoint", sa.Text, nullable=False),
    sa.Column("ticket_id", sa.Text),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("locale", sa.Text),
    sa.Column("segments", pg.JSONB, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("answered_at", sa.DateTime(timezone=True)),
    sa.Column("reasked", sa.Integer, nullable=False, server_default="0"),
)
opt_outs = sa.Table(
    "sms_opt_outs",
    metadata,
    sa.Column("phone_hash", sa.Text, primary_key=True),
    sa.Column("keyword", sa.Text, nullable=False),
    sa.Column("opted_out_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)


async def _lock_customer(conn: AsyncConnection, customer_id: str) -> None:
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(customer_id))))


async def create(
    conn: AsyncConnection, payload: InvitationIn, *, fatigue: timedelta, hasher: Hasher
) -> tuple[uuid.UUID, str, str | None, datetime]:
    """Record an invitation; return its id, status (open or suppressed), reason and expiry.

    An opted-out number is always suppressed; so is a customer invited within ``fatigue``.
    An erased customer is never invited again (:class:`PermanentError` naming
    ``customer_id``): a reply would carry their words back into every service.
    """
    # Serialise invitations per customer, so two at once cannot both escape the fatigue rule
    # (and none slips past an erasure running at the same time).
    await _lock_customer(conn, payload.customer_id)
    if await erasure.pseudonyms_of(conn, hasher, "collector", [payload.customer_id]):
        raise PermanentError(
            "the customer was erased; cxloop sends them no invitation", field="customer_id"
        )
    customer_id = payload.customer_id
    phone_hash = None if payload.phone is None else hasher.phone(payload.phone)
    reason = None
    if phone_hash is not None and await is_opted_out(conn, phone_hash):
        reason = "opted_out"
    elif fatigue > timedelta(0):
        recent = await conn.scalar(
            sa.select(sa.func.count()).where(
                invitations.c.customer_id == customer_id,
                invitations.c.status != "suppressed",
                invitations.c.created_at > sa.func.now() - sa.literal(fatigue, sa.Interval),
            )
        )
        if recent:
            reason = "surveyed_recently"
    invitation_id = uuid.uuid4()
    expires_at: datetime = payload.expires_at or (
        utcnow() + timedelta(hours=payload.expires_in_hours)
    )
    status = "suppressed" if reason else "open"
    await conn.execute(
        invitations.insert().values(
            id=invitation_id,
            customer_id=customer_id,
            phone_hash=phone_hash,
            metric=payload.metric.value,
            scale=resolve_scale(payload.metric, payload.scale),
            survey_type=payload.survey_type.value,
            touchpoint=payload.touchpoint,
            ticket_id=payload.ticket_id,
            channel=payload.channel.value,
            locale=payload.locale,
            segments=payload.segments.model_dump(exclude_none=True),
            status=status,
            expires_at=expires_at,
        )
    )
    return invitation_id, status, reason, expires_at


async def open_for_phone(conn: AsyncConnection, phone_hash: str) -> dict[str, Any] | None:
    """Lock and return the newest unexpired open invitation sent to the number."""
    row = (
        await conn.execute(
            sa.select(invitations)
            .where(
                invitations.c.phone_hash == phone_hash,
                invitations.c.status == "open",
                invitations.c.expires_at > sa.func.now(),
            )
            .order_by(invitations.c.created_at.desc())
            .limit(1)
            .with_for_update()
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def locale_for_phone(conn: AsyncConnection, phone_hash: str) -> str | None:
    """Return the locale of the newest invitation sent to the number, answered or not."""
    return await conn.scalar(
        sa.select(invitations.c.locale)
        .where(invitations.c.phone_hash == phone_hash)
        .order_by(invitations.c.created_at.desc())
        .limit(1)
    )


async def mark_answered(conn: AsyncConnection, invitation_id: uuid.UUID) -> None:
    """Close an invitation once its answer is in Kafka."""
    await conn.execute(
        invitations.update()
        .where(invitations.c.id == invitation_id)
        .values(status="answered", answered_at=sa.func.now())
    )


async def note_reask(conn: AsyncConnection, invitation_id: uuid.UUID) -> None:
    """Count a reply that carried no score."""
    await conn.execute(
        invitations.update()
        .where(invitations.c.id == invitation_id)
        .values(reasked=invitations.c.reasked + 1)
    )


async def is_opted_out(conn: AsyncConnection, phone_hash: str) -> bool:
    """Return whether the number has opted out of surveys."""
    return bool(
        await conn.scalar(sa.select(sa.literal(1)).where(opt_outs.c.phone_hash == phone_hash))
    )


async def opt_out(conn: AsyncConnection, phone_hash: str, keyword: str) -> None:
    """Remember that the number must never be surveyed again; close its open invitations."""
    stmt = pg.insert(opt_outs).values(phone_hash=phone_hash, keyword=keyword)
    await conn.execute(stmt.on_conflict_do_nothing())
    await conn.execute(
        invitations.update()
        .where(invitations.c.phone_hash == phone_hash, invitations.c.status == "open")
        .values(status="suppressed")
    )


async def opt_in(conn: AsyncConnection, phone_hash: str) -> None:
    """Forget an opt-out (the customer replied START)."""
    await conn.execute(opt_outs.delete().where(opt_outs.c.phone_hash == phone_hash))


async def erase_customer(conn: AsyncConnection, customer_id: str) -> int:
    """Delete every invitation of a customer; return how many there were."""
    await _lock_customer(conn, customer_id)
    result = await conn.execute(
        invitations.delete().where(invitations.c.customer_id == customer_id)
    )
    return int(result.rowcount)


async def purge_expired(conn: AsyncConnection, retention: timedelta) -> int:
    """Delete the invitations created more than ``retention`` ago; return how many."""
    result = await conn.execute(
        invitations.delete().where(
            invitations.c.created_at < sa.func.now() - sa.literal(retention, sa.Interval)
        )
    )
    return int(result.rowcount)
