"""The wire contract: what a consumer in any language can rely on."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import pytest
from pydantic import ValidationError

from services.collector import service
from services.collector.schemas import ResponseIn
from shared.events import (
    NpsCategory,
    ResponseSubmitted,
    Segments,
    TouchpointEvent,
    json_schemas,
    nps_category,
    utcnow,
)
from shared.kafka import encode
from tests.builders import response_event


class TestTimestamps:
    def test_naive_occurred_at_is_rejected(self) -> None:
        with pytest.raises(ValidationError, match="timezone"):
            response_event(occurred_at=datetime(2026, 11, 22, 10, 0))

    def test_offset_is_kept_through_the_wire(self) -> None:
        event = response_event(occurred_at="2026-11-22T10:15:00+09:00")
        back = ResponseSubmitted.model_validate_json(encode(event))
        assert back.occurred_at == event.occurred_at
        assert back.occurred_at.utcoffset() is not None


class TestScoreRanges:
    @pytest.mark.parametrize(
        ("metric", "scale", "score", "message"),
        [
            ("nps", 10, 11, "score 11 is outside 0–10 for nps"),
            ("nps", 10, -1, "score -1 is outside 0–10 for nps"),
            ("csat", 5, 0, "score 0 is outside 1–5 for csat"),
            ("ces", 5, 6, "score 6 is outside 1–5 for ces"),
        ],
    )
    def test_out_of_range_names_the_range(
        self, metric: str, scale: int, score: int, message: str
    ) -> None:
        with pytest.raises(ValidationError, match=message):
            response_event(metric=metric, scale=scale, score=score)

    def test_ces_seven_point_accepts_seven(self) -> None:
        assert response_event(metric="ces", scale=7, score=7).score == 7

    def test_nps_on_another_scale_is_rejected(self) -> None:
        with pytest.raises(ValidationError, match="scale 5 is not valid for nps"):
            response_event(metric="nps", scale=5, score=3)

    @pytest.mark.parametrize(
        ("score", "category"),
        [(0, NpsCategory.DETRACTOR), (6, NpsCategory.DETRACTOR), (7, NpsCategory.PASSIVE),
         (8, NpsCategory.PASSIVE), (9, NpsCategory.PROMOTER), (10, NpsCategory.PROMOTER)],
    )  # fmt: skip
    def test_nps_category_boundaries(self, score: int, category: NpsCategory) -> None:
        assert nps_category(score) is category


class TestCompatibility:
    def test_unknown_fields_from_a_newer_producer_are_ignored(self) -> None:
        raw = json.loads(encode(response_event()))
        raw["added_in_a_later_release"] = {"x": 1}
        assert ResponseSubmitted.model_validate(raw).event_id

    def test_a_future_schema_version_is_refused(self) -> None:
        raw = json.loads(encode(response_event()))
        raw["schema_version"] = 2
        with pytest.raises(ValidationError, match="schema_version"):
            ResponseSubmitted.model_validate(raw)

    def test_utf8_comment_round_trips(self) -> None:
        event = response_event(comment="対応が遅すぎる 😠 — très lent")
        assert ResponseSubmitted.model_validate_json(encode(event)).comment == event.comment

    def test_the_wire_text_is_pydantics_json_in_utf8(self) -> None:
        # Consumers in other languages read these bytes: raw UTF-8 (not \u escapes), UTC
        # written as Z, the JSON Schema's field names, nothing but the event.
        event = response_event(
            comment="配送が遅い 😠",
            occurred_at="2026-11-22T10:15:00+09:00",
            segments={"location": "東京"},
        )
        wire = encode(event)
        assert wire == event.model_dump_json().encode("utf-8")
        assert "配送が遅い 😠".encode() in wire
        assert b"\\u" not in wire
        assert json.loads(wire)["occurred_at"] == "2026-11-22T10:15:00+09:00"
        assert json.loads(wire)["received_at"].endswith("Z")

    def test_a_request_s_segments_reach_the_wire_as_the_contract_s_model(self) -> None:
        # The collector shares one Segments per set of values between wire events.
        payloads = [
            ResponseIn.model_validate(
                {
                    "metric": "nps",
                    "score": score,
                    "channel": "web",
                    "survey_type": "transactional",
                    "touchpoint": "checkout",
                    "customer_id": f"c{score}",
                    "segments": {"location": " 東京 ", "product": "app"},
                }
            )
            for score in (3, 9)
        ]
        events = [
            service.response_event(p, event_id=uuid.uuid4(), received_at=utcnow(), source="api")
            for p in payloads
        ]
        for event in events:
            assert type(event.segments) is Segments
            assert event.segments == Segments(location="東京", product="app")
            assert ResponseSubmitted.model_validate_json(encode(event)) == event
        assert events[0].segments is events[1].segments
        assert json.loads(encode(events[1]))["segments"] == {
            "location": "東京",
            "product": "app",
            "business_unit": None,
        }


class TestJsonSchemas:
    def test_every_event_has_a_schema_with_an_id(self) -> None:
        schemas = json_schemas()
        assert set(schemas) == {
            "ResponseSubmitted.v1.schema.json",
            "TouchpointEvent.v1.schema.json",
            "CustomerErased.v1.schema.json",
        }
        for name, schema in schemas.items():
            assert schema["$id"].endswith(".json")
            assert "event_id" in schema["required"]
            assert "customer_id" in schema["required"]
            if not name.startswith("CustomerErased"):
                assert "occurred_at" in schema["required"]

    def test_touchpoint_types_are_dotted_names(self) -> None:
        base = {
            "event_id": "6f1c1d5e-7b7a-4c39-9f3a-0d2b8b7d1a10",
            "occurred_at": "2026-11-22T10:00:00Z",
            "received_at": "2026-11-22T10:00:01Z",
            "source": "zendesk",
            "channel": "email",
            "customer_id": "c1",
        }
        assert TouchpointEvent.model_validate({**base, "type": "ticket.created"}).type
        with pytest.raises(ValidationError):
            TouchpointEvent.model_validate({**base, "type": "Ticket Created"})
