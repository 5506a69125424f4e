"""Customer text in notifications: escaped for Slack, and bounded for every receiver."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from services.alerting import receivers
from services.alerting.config import AlertingConfig, Receiver

HOSTILE = "<!channel> <https://evil.example|click here> & more"

CONFIG = AlertingConfig(
    receivers=[
        Receiver(name="hook", type="webhook", url="https://hooks.example.com/cx"),
        Receiver(name="team", type="slack", url="https://hooks.slack.com/services/T/B/X"),
        Receiver(name="pager", type="pagerduty", routing_key_env="TEST_PD_KEY"),
        Receiver(name="am", type="alertmanager", url="http://alertmanager:9093"),
    ],
    runbook_url="https://wiki.example.com/cx",
    ticket_urls={"default": "https://acme.zendesk.com/agent/tickets/{ticket_id}"},
)
HOOK, SLACK, PAGER, AM = CONFIG.receivers


def alert(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": uuid.UUID("6f1c1d5e-7b7a-4c39-9f3a-0d2b8b7d1a10"),
        "rule": "detractor",
        "severity": "critical",
        "status": "open",
        "customer_id": "c-1",
        "channel": "sms",
        "touchpoint": "support_call",
        "ticket_id": "T-5",
        "metric": "nps",
        "score": 2,
        "comment": None,
        "reasons": ["price"],
        "occurrences": 1,
        "opened_at": datetime(2026, 11, 22, 1, 0, tzinfo=UTC),
        "acknowledged_by": None,
        "resolved_by": None,
        "note": None,
        "assignee": None,
    }
    return base | overrides


def sent(receiver: Receiver, action: str, a: dict[str, Any]) -> Any:
    request = receivers.build(receiver, CONFIG, "n-1", action, a)
    return json.loads(request.body.decode("utf-8"))


def slack_texts(payload: dict[str, Any]) -> list[str]:
    return [payload["text"], *(b["text"]["text"] for b in payload["blocks"])]


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class TestSlackEscaping:
    def test_a_hostile_comment_neither_pings_nor_disguises_a_link(self) -> None:
        payload = sent(SLACK, "trigger", alert(comment=HOSTILE))
        for text in slack_texts(payload):
            assert "&lt;!channel&gt;" in text
            assert "&lt;https://evil.example|click here&gt;" in text
            assert "<!channel>" not in text
            assert "<https://" not in text
            assert "& more" not in text
            assert "&amp; more" in text

    def test_a_hostile_note_and_ids_are_escaped_too(self) -> None:
        a = alert(
            status="resolved",
            customer_id="<@U123>",
            ticket_id="<#C1>",
            note="<!here> done",
        )
        for text in slack_texts(sent(SLACK, "resolve", a)):
            assert "<" not in text
            assert ">" not in text
            assert "&lt;!here&gt; done" in text
            assert "&lt;@U123&gt;" in text

    def test_a_group_announcement_is_escaped(self) -> None:
        group = [alert(comment=HOSTILE, id=uuid.uuid4()) for _ in range(3)]
        request = receivers.build_group(SLACK, CONFIG, "n-1", "trigger", group)
        for text in slack_texts(json.loads(request.body)):
            assert "<!channel>" not in text
            assert "&lt;!channel&gt;" in text

    def test_clipping_never_cuts_an_escape_in_half(self) -> None:
        for cut in range(8, 20):
            clipped = receivers.slack_text("a" * cut + "<" * 50, 30)
            assert utf16(clipped) <= 30
            body = clipped.removesuffix("…").removeprefix("a" * min(cut, 29))
            assert body.replace("&lt;", "") == "", clipped


class TestLengthBounds:
    def test_a_100_kb_comment_keeps_every_payload_within_its_receivers_limits(self) -> None:
        huge = "x" * 100_000
        a = alert(comment=huge, note="n" * 100_000, customer_id="c" * 5_000)

        slack = sent(SLACK, "trigger", a)
        assert all(utf16(t) <= 3000 for t in slack_texts(slack))
        assert all(utf16(t) <= 3000 for t in slack_texts(sent(SLACK, "resolve", a)))

        pager = sent(PAGER, "trigger", a)["payload"]
        assert utf16(pager["summary"]) <= 1024
        for key in ("source", "component", "group", "class"):
            assert utf16(pager[key]) <= receivers.SHORT
        assert utf16(pager["custom_details"]["comment"]) <= receivers.LONG
        assert utf16(pager["custom_details"]["note"]) <= receivers.LONG
        assert utf16(pager["custom_details"]["customer_id"]) <= receivers.SHORT

        (am,) = sent(AM, "trigger", a)
        assert all(utf16(v) <= receivers.SHORT for v in am["labels"].values())
        assert utf16(am["annotations"]["summary"]) <= 1024

        hook = sent(HOOK, "trigger", a)["data"]
        assert utf16(hook["summary"]) <= 1024
        assert utf16(hook["alert"]["comment"]) <= receivers.LONG
        assert utf16(hook["alert"]["note"]) <= receivers.LONG
        assert utf16(hook["alert"]["customer_id"]) <= receivers.SHORT

        for receiver in (SLACK, PAGER, AM, HOOK):
            assert len(receivers.build(receiver, CONFIG, "n", "trigger", a).body) < 20_000

    def test_japanese_under_the_limit_arrives_unchanged(self) -> None:
        comment = "配達が二時間遅れ、電話も繋がりませんでした。返金をお願いします。" * 3
        a = alert(comment=comment)
        assert len(comment) < receivers.SUMMARY_COMMENT
        assert comment in sent(SLACK, "trigger", a)["text"]
        assert comment in sent(PAGER, "trigger", a)["payload"]["summary"]
        assert comment in sent(AM, "trigger", a)[0]["annotations"]["summary"]
        assert sent(HOOK, "trigger", a)["data"]["alert"]["comment"] == comment

    @pytest.mark.parametrize(
        "unit",
        [
            "配",
            "😀",  # outside the BMP: two UTF-16 code units
            "か\u3099",  # か and a combining voiced mark: が
            "👩\u200d👩\u200d👧",  # a family: emoji joined by zero width joiners
            "👍🏽",  # a thumb and a skin tone
        ],
    )
    def test_japanese_over_the_limit_is_cut_between_whole_characters(self, unit: str) -> None:
        for pad in range(receivers.LONG - 5, receivers.LONG + 1):
            comment = "あ" * pad + unit * 6
            got = sent(HOOK, "trigger", alert(comment=comment))["data"]["alert"]["comment"]
            assert got.endswith("…"), pad
            assert utf16(got) <= receivers.LONG
            kept = got.removesuffix("…")
            assert comment.startswith(kept)
            whole_units = kept.lstrip("あ")
            assert whole_units == unit * (len(whole_units) // len(unit)), (pad, whole_units)
            assert len(kept) >= receivers.LONG - 20

    def test_at_the_limit_nothing_is_cut_and_one_over_loses_two_characters(self) -> None:
        hook = sent(HOOK, "trigger", alert(comment="あ" * receivers.LONG))["data"]["alert"]
        assert hook["comment"] == "あ" * receivers.LONG
        hook = sent(HOOK, "trigger", alert(comment="あ" * (receivers.LONG + 1)))["data"]["alert"]
        assert hook["comment"] == "あ" * (receivers.LONG - 1) + "…"

    def test_the_summary_clips_a_long_japanese_comment_with_an_ellipsis(self) -> None:
        comment = "返金" * 500
        summary = sent(PAGER, "trigger", alert(comment=comment))["payload"]["summary"]
        quoted = summary.split("“", 1)[1]
        assert quoted == "返金" * 99 + "返…”"
