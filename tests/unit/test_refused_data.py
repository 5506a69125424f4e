"""Which handler failures blame the data (bisect and dead-letter) and which do not (retry).

Raw asyncpg errors, as the scorer's COPY raises them. How SQLAlchemy wraps them is checked
with statements that really fail, in tests/integration/test_refused_data.py.
"""

from __future__ import annotations

import asyncpg.exceptions as pg
import pytest
from sqlalchemy.exc import OperationalError

from shared.db import refused_data
from shared.errors import PermanentError


class TestTheDataIsToBlame:
    @pytest.mark.parametrize(
        "error",
        [
            pg.CheckViolationError("new row violates check constraint"),
            pg.UniqueViolationError("duplicate key value"),
            pg.NumericValueOutOfRangeError("integer out of range"),
            pg.StringDataRightTruncationError("value too long"),
            pg.ProgramLimitExceededError("index row size exceeds maximum"),
            pg.CardinalityViolationError("cannot affect row a second time"),
        ],
        ids=lambda e: type(e).__name__,
    )
    def test_a_data_class_sqlstate(self, error: Exception) -> None:
        reason = refused_data(error)
        assert reason is not None
        assert f"{type(error).__name__} (SQLSTATE {error.sqlstate})" in reason  # type: ignore[attr-defined]

    def test_the_reason_names_the_constraint_never_the_message(self) -> None:
        error = pg.CheckViolationError("Failing row contains (secret@example.com)")
        error.table_name, error.constraint_name = "alerts", "alerts_score_valid"
        reason = refused_data(error)
        assert reason is not None
        assert "table alerts, constraint alerts_score_valid" in reason
        assert "secret" not in reason

    def test_a_permanent_error_and_its_field(self) -> None:
        assert refused_data(PermanentError("is not a time", field="occurred_at")) == (
            "occurred_at: is not a time"
        )

    def test_a_value_asyncpg_cannot_encode(self) -> None:
        error = pg.DataError("invalid input for query argument $1")
        error.__cause__ = OverflowError("date value out of range")
        assert refused_data(error) == "the database refused it: DataError (SQLSTATE 22000)"


class TestTheDataIsNotToBlame:
    @pytest.mark.parametrize(
        "error",
        [
            pg.SerializationError("could not serialize access"),
            pg.DeadlockDetectedError("deadlock detected"),
            pg.AdminShutdownError("terminating connection"),
            pg.CannotConnectNowError("the database system is starting up"),
            pg.ConnectionDoesNotExistError("connection was closed"),
            pg.UndefinedTableError('relation "t" does not exist'),
            pg.DiskFullError("could not extend file"),
        ],
        ids=lambda e: type(e).__name__,
    )
    def test_transient_or_a_bug(self, error: Exception) -> None:
        assert refused_data(error) is None

    def test_a_lost_connection_or_any_other_exception(self) -> None:
        assert refused_data(ConnectionRefusedError()) is None
        assert refused_data(OperationalError("SELECT 1", None, Exception("gone"))) is None
        assert refused_data(TimeoutError()) is None
        assert refused_data(KeyError("bug")) is None

    @pytest.mark.parametrize(
        "error",
        [
            ValueError("zip() argument 2 is shorter than argument 1"),
            OverflowError("date value out of range"),
            ZeroDivisionError(),
        ],
        ids=lambda e: type(e).__name__,
    )
    def test_a_value_or_arithmetic_error_of_the_code_is_a_bug(self, error: Exception) -> None:
        # A record's own bad value is raised as a PermanentError naming its field.
        assert refused_data(error) is None

    def test_a_parameter_of_the_wrong_type_is_a_bug(self) -> None:
        error = pg.DataError("invalid input for query argument $1")
        error.__cause__ = TypeError("'str' object cannot be interpreted as an integer")
        assert refused_data(error) is None
