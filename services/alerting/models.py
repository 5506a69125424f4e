"""The alerting service's tables (created by the Alembic migrations)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()

applied_events = sa.Table(
    "alerting_applied_events",
    metadata,
    sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("dedupe_key", sa.Text, nullable=False),
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("touchpoint", sa.Text),
    sa.Column("ticket_id", sa.Text),
    sa.Column("metric", sa.Text),
    sa.Column("score", sa.SmallInteger),
    sa.Column("comment", sa.Text),
    sa.Column("reasons", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("occurrences", sa.Integer, nullable=False),
    sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("acknowledged_at", sa.DateTime(timezone=True)),
    sa.Column("acknowledged_by", sa.Text),
    sa.Column("acknowledged_actor", sa.Text),
    sa.Column("acknowledged_actor_id", sa.Text),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
    sa.Column("resolved_by", sa.Text),
    sa.Column("resolved_actor", sa.Text),
    sa.Column("resolved_actor_id", sa.Text),
    sa.Column("note", sa.Text),
    sa.Column("assignee", sa.Text),
    sa.Column("ticket_source", sa.Text),
    sa.Column("escalated_at", sa.DateTime(timezone=True)),
    sa.Column("location", sa.Text),
    sa.Column("product", sa.Text),
    sa.Column("business_unit", sa.Text),
    sa.Column("survey_type", sa.Text),
    # The queue's severity order (critical 0, warning 1, info 2, else 3), for its index.
    sa.Column(
        "severity_rank",
        sa.SmallInteger,
        sa.Computed(
            "CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 WHEN 'info' THEN 2 "
            "ELSE 3 END",
            persisted=True,
        ),
        nullable=False,
    ),
    # The customer's value over the 12 months up to the answer, when the alert opened (0021),
    # as stored by repository.open_or_fold: per currency, exponent, revenue_minor, orders,
    # threshold_minor. NULL: not computed (opened before 0021, or a score drop).
    sa.Column("value", pg.JSONB),
    sa.Column("high_value", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("value_reason", sa.Text),
)

# One number that grows at the commit of every transaction that changed alerts (0018).
alerts_version = sa.Table(
    "alerts_version",
    metadata,
    sa.Column("one", sa.Boolean, primary_key=True),
    sa.Column("version", sa.BigInteger, nullable=False),
)

silences = sa.Table(
    "silences",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("matchers", pg.JSONB, nullable=False),
    sa.Column("starts_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.Text, nullable=False),
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("actor_id", sa.Text),
    sa.Column("expired_at", sa.DateTime(timezone=True)),
    sa.Column("expired_by", sa.Text),
    sa.Column("expired_by_id", sa.Text),
)

history = sa.Table(
    "alert_history",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("alert_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("display_name", sa.Text),
    sa.Column("actor_id", sa.Text),
)

deadlines = sa.Table(
    "sla_deadlines",
    metadata,
    sa.Column("source", sa.Text, primary_key=True),
    sa.Column("ticket_id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("priority", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("deadline", sa.DateTime(timezone=True)),
    sa.Column("satisfied_at", sa.DateTime(timezone=True)),
    sa.Column("fired_at", sa.DateTime(timezone=True)),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("alert_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("receiver", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.Column("group_key", sa.Text),
    sa.Column("locked_until", sa.DateTime(timezone=True)),
    sa.Column("lease_id", pg.UUID(as_uuid=True)),
    # Since when it is due: queued, or released by the end of its silence. The retry
    # budget counts from here, not from created_at (a silence may hold it for days).
    sa.Column(
        "due_since", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
)

# The predicate of the partial unique index on dedupe_key, as SQL text: a bound parameter
# would stop Postgres matching ON CONFLICT to the index once a statement's plan is generic
# (asyncpg prepares statements; the sixth run on a connection failed before this).
UNRESOLVED = sa.text("status <> 'resolved'")

# A customer's last answers and ticket events (at most TOUCHES_KEPT each), for alert pages.
TOUCHES_KEPT = 20
touches = sa.Table(
    "customer_touches",
    metadata,
    sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("touchpoint", sa.Text),
    sa.Column("metric", sa.Text),
    sa.Column("score", sa.SmallInteger),
    sa.Column("comment", sa.Text),
    sa.Column("reasons", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("ticket_id", sa.Text),
    sa.Column("event_type", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("priority", sa.Text),
    sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

# Each completed order (its first completion) and each refund, from the touchpoints topic.
orders = sa.Table(
    "alerting_orders",
    metadata,
    sa.Column("order_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)
refunds = sa.Table(
    "alerting_refunds",
    metadata,
    sa.Column("order_id", sa.Text, primary_key=True),
    sa.Column("refund_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)
