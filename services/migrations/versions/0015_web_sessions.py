"""Browser sessions for the dashboard (scorer) and the console (alerting).

* ``web_sessions``: one row per signed-in browser and service. Only a SHA-256 of the cookie's
  token is stored (a copy of the table signs nobody in), with the SHA-256 of the API key it
  was exchanged for (as ``api_keys.key_hash`` holds it), so revoking the key ends the
  session within the key cache's TTL; ``csrf_token`` is the synchroniser token of its forms.
* ``sign_in_links``: one-time links (``cxloop up`` prints one per page), stored as hashes;
  ``used_at`` makes each good for one sign-in.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.LargeBinary, primary_key=True),
        sa.Column("service", sa.Text, nullable=False),
        sa.Column("key_hash", sa.LargeBinary, nullable=False),
        sa.Column("csrf_token", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
    )
    op.create_index("web_sessions_expires_at", "web_sessions", ["expires_at"])
    op.create_table(
        "sign_in_links",
        sa.Column("token_hash", sa.LargeBinary, primary_key=True),
        sa.Column("service", sa.Text, nullable=False),
        sa.Column("key_hash", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("sign_in_links")
    op.drop_index("web_sessions_expires_at", table_name="web_sessions")
    op.drop_table("web_sessions")
