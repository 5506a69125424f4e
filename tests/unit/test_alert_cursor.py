"""The queue's cursor: what it encodes decodes back, and anything forged is a PermanentError
naming ``cursor`` (422), never a 500."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from services.alerting.schemas import QueueSort
from services.alerting.service import decode_cursor, encode_cursor
from shared.errors import PermanentError


def forged(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


class TestCursor:
    def test_round_trip(self) -> None:
        opened, alert_id = datetime(2026, 5, 1, 9, 30, tzinfo=UTC), uuid.uuid4()
        cursor = encode_cursor(QueueSort.SEVERITY, [1, opened, alert_id])
        assert decode_cursor(QueueSort.SEVERITY, cursor) == [1, opened, alert_id]

    @pytest.mark.parametrize(
        "data",
        [
            {"sort": "severity", "after": ["1", "2026-05-01T00:00:00+00:00", 5]},
            {"sort": "severity", "after": ["1", "2026-05-01T00:00:00+00:00", None]},
            {"sort": "severity", "after": [1, "2026-05-01T00:00:00+00:00", str(uuid.uuid4())]},
            {"sort": "severity", "after": ["1", 20260501, str(uuid.uuid4())]},
            {"sort": "severity", "after": ["1", "0001-01-01T00:00:00+14:00", str(uuid.uuid4())]},
            {"sort": "severity", "after": ["1", "9999-12-31T23:59:59-14:00", str(uuid.uuid4())]},
            {"sort": "severity", "after": ["1", "0001-01-01T00:00:00+00:00", str(uuid.uuid4())]},
            {"sort": "severity", "after": {"a": 1}},
            {"sort": "severity", "after": "abc"},
            ["severity"],
            "severity",
            {"sort": ["severity"], "after": []},
        ],
    )
    def test_a_forged_cursor_is_refused_naming_it(self, data: Any) -> None:
        with pytest.raises(PermanentError) as refused:
            decode_cursor(QueueSort.SEVERITY, forged(data))
        assert refused.value.field == "cursor"
