"""Survey invitations, survey fatigue and SMS opt-outs, in Postgres."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from services.collector.schemas import InvitationIn
from shared.events import resolve_scale, utcnow

metadata = sa.MetaData()
invitations = sa.Table(
    "invitations",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("phone", sa.Text),
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
    sa.Column("phone", sa.Text, primary_key=True),
    sa.Column("keyword", sa.Text, nullable=False),
    sa.Column("opted_out_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)


async def create(
    conn: AsyncConnection, payload: InvitationIn, *, fatigue: timedelta
) -> tuple[uuid.UUID, str, str | None, datetime]:
    """Record an invitation; return its id, status (open or suppressed), reason and expiry.

    An opted-out number is always suppressed; so is a customer invited within ``fatigue``.
    """
    # Serialise invitations per customer, so two at once cannot both escape the fatigue rule.
    await conn.execute(
        sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(payload.customer_id)))
    )
    reason = None
    if payload.phone is not None and await is_opted_out(conn, payload.phone):
        reason = "opted_out"
    elif fatigue > timedelta(0):
        recent = await conn.scalar(
            sa.select(sa.func.count()).where(
                invitations.c.customer_id == payload.customer_id,
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
            customer_id=payload.customer_id,
            phone=payload.phone,
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


async def open_for_phone(conn: AsyncConnection, phone: str) -> dict[str, Any] | None:
    """Lock and return the newest unexpired open invitation sent to ``phone``."""
    row = (
        await conn.execute(
            sa.select(invitations)
            .where(
                invitations.c.phone == phone,
                invitations.c.status == "open",
                invitations.c.expires_at > sa.func.now(),
            )
            .order_by(invitations.c.created_at.desc())
            .limit(1)
            .with_for_update()
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def locale_for_phone(conn: AsyncConnection, phone: str) -> str | None:
    """Return the locale of the newest invitation sent to ``phone``, answered or not."""
    return await conn.scalar(
        sa.select(invitations.c.locale)
        .where(invitations.c.phone == phone)
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


async def is_opted_out(conn: AsyncConnection, phone: str) -> bool:
    """Return whether ``phone`` has opted out of surveys."""
    return bool(await conn.scalar(sa.select(sa.literal(1)).where(opt_outs.c.phone == phone)))


async def opt_out(conn: AsyncConnection, phone: str, keyword: str) -> None:
    """Remember that ``phone`` must never be surveyed again, and close its open invitations."""
    stmt = pg.insert(opt_outs).values(phone=phone, keyword=keyword)
    await conn.execute(stmt.on_conflict_do_nothing())
    await conn.execute(
        invitations.update()
        .where(invitations.c.phone == phone, invitations.c.status == "open")
        .values(status="suppressed")
    )


async def opt_in(conn: AsyncConnection, phone: str) -> None:
    """Forget an opt-out (the customer replied START)."""
    await conn.execute(opt_outs.delete().where(opt_outs.c.phone == phone))
