"""Collector: idempotency keys scoped to the caller, with a body fingerprint.

``collector_idempotency.fingerprint`` holds a hash of the request content a key was first
used with, so that the same key with a different body is refused (409) rather than answered
`duplicate`. NULL means the key alone names its event: vendor message ids, and the rows
kept from before this revision.

Existing rows. Rows of a client's ``event_id`` (``<source>:event:<id>``) and of vendor ids
(``twilio:key:…``, ``zendesk:key:…``, …) keep their meaning and are kept: their keys and
event ids are derived as before. Rows of an API ``Idempotency-Key`` (``api:key:<key>``, and
``api:key:<key>:<i>`` for batch items) are deleted: keys are now stored with the caller's
API key id (``api:key:<caller>:<key>``, ``api:item:…``), so no request can reach them again,
and the window they served is 7 days. A request first sent with an ``Idempotency-Key``
before the upgrade and retried after it gets a caller-scoped event id, and counts again.

Downgrade deletes the caller-scoped rows (the old code derives other event ids from them)
and drops the column.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("collector_idempotency", sa.Column("fingerprint", sa.LargeBinary))
    op.execute("DELETE FROM collector_idempotency WHERE key LIKE 'api:key:%'")


def downgrade() -> None:
    op.execute(
        "DELETE FROM collector_idempotency WHERE key LIKE 'api:key:%' OR key LIKE 'api:item:%'"
    )
    op.drop_column("collector_idempotency", "fingerprint")
