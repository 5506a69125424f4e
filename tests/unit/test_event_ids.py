"""Event ids derived from keys: keyed, version 8, and one per body; fingerprints per instant."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, JsonValue

from services.collector.idempotency import EventIds, _json_default, canonical, fingerprint
from services.collector.schemas import EventIn, ResponseIn
from services.collector.service import request_content
from tests.builders import response_payload

SECRET = b"one-secret-of-16-chars"
BODY = fingerprint("ResponseIn", {"score": 9}, SECRET)
OTHER = fingerprint("ResponseIn", {"score": 3}, SECRET)


class TestEventIds:
    def test_ids_are_version_8_and_depend_on_the_secret(self) -> None:
        one = EventIds(b"one-secret-of-16-chars").for_key("api", "operator", "k", BODY)
        two = EventIds(b"another-secret-of-16").for_key("api", "operator", "k", BODY)
        assert (one.version, one.variant) == (8, uuid.RFC_4122)
        assert one != two

    def test_the_body_is_part_of_the_id_and_the_same_body_keeps_it(self) -> None:
        ids = EventIds(b"one-secret-of-16-chars")
        first = ids.for_key("api", "operator", "k", BODY)
        assert ids.for_key("api", "operator", "k", BODY) == first
        assert ids.for_key("api", "operator", "k", OTHER) != first

    def test_no_key_text_reads_as_another_name(self) -> None:
        ids = EventIds(b"one-secret-of-16-chars")
        assert ids.for_vendor("twilio", "a:b") != ids.for_vendor("twilio:a", "b")
        assert ids.for_key("api", "a:b", "c", BODY) != ids.for_key("api", "a", "b:c", BODY)


class TestFingerprint:
    def test_one_instant_in_two_offsets_is_one_body(self) -> None:
        tokyo = datetime(2026, 11, 22, 10, 15, tzinfo=timezone(timedelta(hours=9)))
        bodies = [
            ResponseIn.model_validate(
                response_payload(customer_id="c-1", occurred_at=when.isoformat())
            )
            for when in (tokyo, tokyo.astimezone(UTC))
        ]
        a, b = (fingerprint("ResponseIn", body.model_dump(), SECRET) for body in bodies)
        assert a == b

    def test_fingerprints_are_keyed(self) -> None:
        # A body holds customer ids and comments: nobody without the secret may test a guess
        # against a stored fingerprint.
        content = {"customer_id": "c-1", "comment": "call me"}
        one = fingerprint("ResponseIn", content, SECRET)
        assert one == EventIds(SECRET).fingerprint("ResponseIn", content)
        assert one != fingerprint("ResponseIn", content, b"another-secret-of-16")

    def test_another_instant_is_another_body(self) -> None:
        bodies = [
            ResponseIn.model_validate(response_payload(customer_id="c-1", occurred_at=when))
            for when in ("2026-11-22T10:15:00+09:00", "2026-11-22T10:15:00Z")
        ]
        a, b = (fingerprint("ResponseIn", body.model_dump(), SECRET) for body in bodies)
        assert a != b


class TestFingerprintsAcrossReleases:
    """Fingerprints stored by an older release must still match: a key sent before an upgrade
    and resent after it is a duplicate, not a 409. The expected values were computed by the
    code before orders (commit 2d65178: sorted-key JSON of EventIn's and ResponseIn's fields
    of then)."""

    GOLDEN_SECRET = b"golden-secret-for-fingerprints"

    def test_a_ticket_event_keeps_the_fingerprint_it_had_before_orders(self) -> None:
        payload = EventIn.model_validate(
            {
                "type": "ticket.created",
                "ticket_id": "T-1042",
                "customer_id": "cust-42",
                "channel": "email",
                "priority": "high",
                "occurred_at": "2026-11-22T09:00:00+09:00",
                "segments": {"location": "tokyo-shibuya"},
                "attributes": {"agent": "a1"},
            }
        )
        got = EventIds(self.GOLDEN_SECRET).fingerprint("EventIn", request_content(payload))
        assert got.hex() == "be01619bf083c49764d80122c47852252b3e275d57e9b9891dcda661897f2619"

    def test_a_response_keeps_its_fingerprint(self) -> None:
        payload = ResponseIn.model_validate(
            {
                "customer_id": "cust-42",
                "channel": "web",
                "metric": "nps",
                "score": 9,
                "touchpoint": "checkout",
                "survey_type": "relationship",
                "occurred_at": "2026-11-22T09:00:00+09:00",
            }
        )
        got = EventIds(self.GOLDEN_SECRET).fingerprint("ResponseIn", request_content(payload))
        assert got.hex() == "a0988e36982f28581e3e882da2b538ae28b3782cbdb13ffdd4c1e4bb5a6edf80"

    def test_order_fields_count_when_set(self) -> None:
        order = EventIn.model_validate(
            {
                "type": "order.completed",
                "order_id": "O1",
                "customer_id": "c1",
                "channel": "web",
                "currency": "JPY",
                "amount": "100",
            }
        )
        other = order.model_copy(update={"order_id": "O2"})
        ids = EventIds(self.GOLDEN_SECRET)
        assert ids.fingerprint("EventIn", request_content(order)) != ids.fingerprint(
            "EventIn", request_content(other)
        )


class TestClientEventIds:
    def test_a_version_8_event_id_is_refused(self) -> None:
        derived = EventIds(b"one-secret-of-16-chars").for_key("api", "operator", "k", BODY)
        errors = []
        try:
            ResponseIn.model_validate(response_payload(event_id=str(derived)))
        except ValueError as exc:
            errors = [".".join(map(str, e["loc"])) for e in getattr(exc, "errors", list)()]
        assert errors == ["event_id"]

    def test_a_random_event_id_is_taken(self) -> None:
        event_id = uuid.uuid4()
        payload = ResponseIn.model_validate(response_payload(event_id=str(event_id)))
        assert payload.event_id == event_id


def _json_canonical(kind: str, content: object) -> bytes:
    """What fingerprints hashed before orjson: the text stored keys were made from."""
    return json.dumps(
        [kind, content],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=_json_default,
    ).encode("utf-8")


_texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_leaves = (
    _texts
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.booleans()
    | st.none()
    | st.uuids()
    | st.datetimes(timezones=st.timezones() | st.none())
    | st.decimals(allow_nan=False, allow_infinity=False, places=3)
)
_content = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(_texts, inner, max_size=4)
    ),
    max_leaves=12,
)


class TestCanonicalText:
    @settings(max_examples=300, deadline=None)
    @given(content=st.dictionaries(_texts, _content, max_size=6))
    def test_it_is_what_json_wrote(self, content: dict[str, object]) -> None:
        assert canonical("ResponseIn", content) == _json_canonical("ResponseIn", content)

    def test_what_orjson_refuses_goes_through_json(self) -> None:
        for content in ({"big": 2**70}, {1: "int key"}, {"s": "\ud800"}):
            try:
                expected: bytes | type[Exception] = _json_canonical("EventIn", content)
            except UnicodeEncodeError:
                expected = UnicodeEncodeError
            if isinstance(expected, bytes):
                assert canonical("EventIn", content) == expected
            else:
                with pytest.raises(expected):
                    canonical("EventIn", content)

    @pytest.mark.parametrize("model", [ResponseIn, EventIn])
    def test_request_models_declare_no_float(self, model: type[BaseModel]) -> None:
        # orjson writes floats unlike json: a float in content would change stored
        # fingerprints. Amounts are Decimals, scores ints; no field may hold a float, nor
        # a type (Any, object) that lets one through.
        assert _loose_types(model) == []


def _loose_types(model: type[BaseModel], path: str = "") -> list[str]:
    """Return the fields of ``model`` (and its nested models) whose type admits a float."""
    found: list[str] = []

    def walk(annotation: object, where: str) -> None:
        if annotation in (float, Any, object) or annotation is JsonValue:
            found.append(f"{where}: {annotation}")
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.extend(_loose_types(annotation, f"{where}."))
        for arg in get_args(annotation):
            walk(arg, where)

    for name, info in model.model_fields.items():
        walk(info.annotation, f"{path}{name}")
    return found
