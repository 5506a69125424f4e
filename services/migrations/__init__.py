"""Alembic migrations of cxloop's one database, applied by ``cxloop migrate``."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    """Return an Alembic config for ``url`` without an alembic.ini on disk."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not an ini option, so a '%' in a password needs no escaping.
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``. Blocking: call it from a thread in async code."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Revert migrations down to ``revision``. Blocking."""
    command.downgrade(alembic_config(url), revision)
