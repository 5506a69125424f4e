"""The text of a database error, which reaches logs and dead-letter reasons, quotes no value."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from shared.db import create_engine
from shared.settings import DatabaseSettings

SECRET = "+819012345678 a comment about a late delivery"


async def test_a_failed_statement_does_not_quote_its_parameters(database_url: str) -> None:
    engine = create_engine(DatabaseSettings.model_validate({"url": database_url}))
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                await conn.execute(
                    sa.text("SELECT 1 / CAST(:zero AS int), CAST(:comment AS text)"),
                    {"zero": 0, "comment": SECRET},
                )
    finally:
        await engine.dispose()
    assert "division by zero" in str(caught.value)
    assert SECRET not in str(caught.value)
