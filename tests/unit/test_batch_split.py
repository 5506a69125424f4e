"""How a batch refused for its data is split, and when a split blames no single record.

The handler here is a stand-in for a service's transaction: it raises the asyncpg errors a
real constraint raises (see tests/integration/test_refused_data.py for how SQLAlchemy
wraps them) and records what it applied, so the order and the once-only are visible.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import asyncpg.exceptions as pg
import pytest
from aiokafka import ConsumerRecord
from pydantic import BaseModel

from shared.errors import PermanentError
from shared.events import CUSTOMER_ERASED
from shared.kafka import (
    HEADER_TYPE,
    Decoded,
    SystemicRefusalError,
    _apply_with_retry,
    _Split,
    never_dead_lettered,
)


class Answer(BaseModel):
    n: int


def record(n: int, headers: Sequence[tuple[str, bytes]] = ()) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t",
        partition=0,
        offset=n,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=b"{}",
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=2,
        headers=list(headers),
    )


def batch(size: int) -> list[Decoded]:
    return [Decoded(record(n), Answer(n=n)) for n in range(size)]


def number(d: Decoded) -> int:
    assert isinstance(d.event, Answer)
    return d.event.n


def check_violation() -> Exception:
    error: Exception = pg.CheckViolationError("new row violates check constraint")
    error.table_name, error.constraint_name = "responses", "refused"  # type: ignore[attr-defined]
    return error


class Database:
    """Applies a batch all or nothing; ``refuse(n, alone)`` may raise for record ``n``,
    ``alone`` being how many times it has been applied alone, this time included."""

    def __init__(self, refuse: Callable[[int, int], Exception | None]) -> None:
        self.refuse = refuse
        self.applied: list[int] = []
        self.attempts: dict[int, int] = {}
        self.calls = 0

    async def __call__(self, decoded: Sequence[Decoded]) -> None:
        self.calls += 1
        numbers = [number(d) for d in decoded]
        for n in numbers:
            if len(numbers) == 1:
                self.attempts[n] = self.attempts.get(n, 0) + 1
            if (error := self.refuse(n, self.attempts.get(n, 0))) is not None:
                raise error
        self.applied += numbers


def split(
    db: Database,
    stop: asyncio.Event | None = None,
    never: Callable[[ConsumerRecord[bytes, bytes]], bool] = never_dead_lettered,
    limit: int = 3,
) -> _Split:
    return _Split(
        db,
        stop or asyncio.Event(),
        "g",
        never_dead_letter=never,
        limit=limit,
        retry_seconds=0,
    )


class TestOneBadRecord:
    async def test_it_alone_is_refused_and_the_others_apply_once_in_order(self) -> None:
        db = Database(lambda n, _: check_violation() if n == 13 else None)
        refused = await split(db).settle(batch(30))
        assert [(r.offset, kind) for r, _, kind in refused] == [(13, "refused_by_database")]
        assert "constraint refused" in refused[0][1]
        assert db.applied == [n for n in range(30) if n != 13]
        # Refused alone twice: once found, once after the short wait.
        assert db.attempts[13] == 2

    async def test_a_permanent_error_of_the_handler_is_refused_by_the_handler(self) -> None:
        bad = PermanentError("is outside the years 1 to 9999 in UTC", field="occurred_at")
        db = Database(lambda n, _: bad if n == 2 else None)
        ((r, reason, kind),) = await split(db).settle(batch(5))
        assert (r.offset, kind) == (2, "refused_by_handler")
        assert reason.startswith("occurred_at: ")

    async def test_a_record_refused_once_by_a_race_is_applied_on_its_retry(self) -> None:
        # A foreign key met a concurrent writer: the row it needs is there a moment later.
        def refuse(n: int, attempt: int) -> Exception | None:
            return pg.ForeignKeyViolationError("not present") if n == 4 and attempt <= 1 else None

        db = Database(refuse)
        assert await split(db).settle(batch(10)) == []
        # Retried once, alone, after the others.
        assert db.applied == [0, 1, 2, 3, 5, 6, 7, 8, 9, 4]

    async def test_a_retry_refused_for_another_reason_dead_letters_nothing(self) -> None:
        def refuse(n: int, attempt: int) -> Exception | None:
            if n != 4:
                return None
            return check_violation() if attempt <= 1 else pg.UniqueViolationError("dup")

        with pytest.raises(SystemicRefusalError):
            await split(Database(refuse)).settle(batch(10))

    async def test_a_value_error_of_the_handler_is_a_bug_not_the_data(self) -> None:
        db = Database(lambda n, _: ValueError("zip() argument 2 is shorter") if n == 4 else None)
        with pytest.raises(ValueError, match="zip"):
            await split(db).settle(batch(10))
        assert db.calls == 1


class TestSystemic:
    @pytest.mark.parametrize(
        "error",
        [
            pg.NotNullViolationError("null value in column"),  # a new NOT NULL column
            pg.DataError("invalid input for query argument"),  # code and schema disagree
        ],
        ids=lambda e: type(e).__name__,
    )
    async def test_every_record_refused_for_one_reason_dead_letters_nothing(
        self, error: Exception
    ) -> None:
        db = Database(lambda _n, _a: error)
        with pytest.raises(SystemicRefusalError, match="4 records refused alone"):
            await split(db, limit=3).settle(batch(100))
        assert db.applied == []

    async def test_up_to_the_limit_of_one_reason_is_still_bad_data(self) -> None:
        db = Database(lambda n, _: check_violation() if n in {10, 50, 90} else None)
        refused = await split(db, limit=3).settle(batch(100))
        assert [r.offset for r, _, _ in refused] == [10, 50, 90]

    async def test_a_record_never_dead_lettered_makes_the_split_systemic(self) -> None:
        erased = [(HEADER_TYPE, CUSTOMER_ERASED.encode())]
        decoded = batch(6)
        decoded[3] = Decoded(record(3, erased), Answer(n=3))
        db = Database(lambda n, _: check_violation() if n == 3 else None)
        with pytest.raises(SystemicRefusalError, match="never dead-lettered"):
            await split(db).settle(decoded)

    def test_customer_erased_is_never_dead_lettered(self) -> None:
        assert never_dead_lettered(record(1, [(HEADER_TYPE, CUSTOMER_ERASED.encode())]))
        assert not never_dead_lettered(record(1, [(HEADER_TYPE, b"response.submitted")]))
        assert not never_dead_lettered(record(1))

    async def test_a_systemic_split_is_retried_whole_and_applies_once_fixed(self) -> None:
        def refuse(_n: int, _alone: int) -> Exception | None:
            # Fixed once the first attempt has tripped the breaker (4 refused alone).
            tripped = sum(db.attempts.values()) > 4
            return None if tripped else pg.NotNullViolationError("null value in column")

        db = Database(refuse)
        assert await _apply_with_retry(split(db), batch(20)) == []
        assert sorted(db.applied) == list(range(20))
        assert len(db.applied) == 20


class TestStop:
    async def test_stop_between_two_steps_of_a_split_commits_nothing(self) -> None:
        stop = asyncio.Event()

        def refuse(n: int, _attempt: int) -> Exception | None:
            if n == 1:
                stop.set()  # SIGTERM while the first record is alone
                return check_violation()
            return None

        db = Database(refuse)
        assert await _apply_with_retry(split(db, stop), batch(8)) is None
        assert 5 not in db.applied
