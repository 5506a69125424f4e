"""Customer text in notifications: escaped for Slack, and bounded for every receiver."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from services.alerting import receivers
from services.alerting.config import AlertingConfig, Receiver
from tests.builders import alert

HOSTILE = "<!channel> <https://evil.example|click here> & more"

CONFIG = AlertingConfig(
    receivers=[
        Receiver(name="hook", type="webhook", url="https://hooks.example.com/cx"),
        Receiver(name="team", type="slack", url="https://hooks.slack.com/services/T/B/X"),
        # Not validated: its routing key variable is unset here, which a file may not leave.
        Receiver.model_construct(
            name="pager",
            type="pagerduty",
            url="https://events.pagerduty.com/v2/enqueue",
            routing_key_env="TEST_PD_KEY",
        ),
        Receiver(name="am", type="alertmanager", url="http://alertmanager:9093"),
    ],
    runbook_url="https://wiki.example.com/cx",
    ticket_urls={"default": "https://acme.zendesk.com/agent/tickets/{ticket_id}"},
)
HOOK, SLACK, PAGER, AM = CONFIG.receivers


def sent(receiver: Receiver, action: str, a: dict[str, Any]) -> Any:
    request = receivers.build(receiver, CONFIG, "n-1", action, a)
    return json.loads(request.body.decode("utf-8"))


def slack_texts(payload: dict[str, Any]) -> list[str]:
    return [payload["text"], *(b["text"]["text"] for b in payload["blocks"])]


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every string in a JSON payload, with the keys leading to it."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, (*path, key))
    elif isinstance(value, list):
        for item in value:
            yield from walk(item, path)


def bound(path: tuple[str, ...]) -> int:
    """The longest a string at ``path`` may be, in UTF-16 code units."""
    key = path[-1]
    if key == "text" and path[0] in ("text", "blocks"):
        return receivers.SLACK_TEXT
    if key == "summary":
        return receivers.PAGERDUTY_SUMMARY
    if key in ("comment", "note"):
        return receivers.LONG
    if key == "href":
        return receivers.URL
    return receivers.SHORT


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


class TestSlackAutomaticParsing:
    COMMENT = "@here <!here> see https://evil.example/pay now"

    def assert_shown_verbatim(self, payload: dict[str, Any]) -> None:
        # Slack would otherwise ping @here and make a link of the bare URL by itself.
        assert payload["parse"] == "none"
        assert payload["link_names"] is False
        assert payload["unfurl_links"] is False
        assert payload["unfurl_media"] is False
        texts = [b["text"] for b in payload["blocks"]]
        assert texts
        for text in texts:
            assert text["type"] == "mrkdwn"
            assert text["verbatim"] is True
        for text in slack_texts(payload):
            assert "@here &lt;!here&gt; see https://evil.example/pay now" in text
            assert "<!here>" not in text

    def test_a_mention_and_a_bare_url_in_a_comment_stay_plain_text(self) -> None:
        self.assert_shown_verbatim(sent(SLACK, "trigger", alert(comment=self.COMMENT)))

    def test_in_a_resolution_note_too(self) -> None:
        a = alert(status="resolved", comment=self.COMMENT, note=self.COMMENT)
        self.assert_shown_verbatim(sent(SLACK, "resolve", a))

    def test_in_a_group_announcement_too(self) -> None:
        group = [alert(comment=self.COMMENT, id=uuid.uuid4()) for _ in range(3)]
        request = receivers.build_group(SLACK, CONFIG, "n-1", "trigger", group)
        self.assert_shown_verbatim(json.loads(request.body))


class TestTicketLinks:
    def test_a_ticket_id_is_percent_encoded_in_its_link(self) -> None:
        links = sent(HOOK, "trigger", alert(ticket_id="5/../../admin?x=1#a b&c"))["data"]["links"]
        assert links[0] == {
            "href": "https://acme.zendesk.com/agent/tickets/5%2F..%2F..%2Fadmin%3Fx%3D1%23a%20b%26c",
            "text": "Ticket",
        }


class TestActors:
    def test_the_verified_key_is_sent_beside_the_display_name(self) -> None:
        a = alert(
            status="resolved",
            acknowledged_by="the-ceo",
            acknowledged_actor="support-team",
            acknowledged_actor_id="2b0e7c1a-5f4e-4d7b-9a53-0e1f6e8b9c11",
            resolved_by="the-ceo",
            resolved_actor="cxloop",
            resolved_actor_id=None,
            note="done",
        )
        for action in ("acknowledge", "resolve"):
            hook = sent(HOOK, action, a)["data"]["alert"]
            assert (hook["acknowledged_by"], hook["acknowledged_actor"]) == (
                "the-ceo",
                "support-team",
            )
            assert hook["acknowledged_actor_id"] == "2b0e7c1a-5f4e-4d7b-9a53-0e1f6e8b9c11"
            assert (hook["resolved_by"], hook["resolved_actor"]) == ("the-ceo", "cxloop")
            assert "resolved_actor_id" in hook
        details = sent(PAGER, "trigger", a)["payload"]["custom_details"]
        assert details["acknowledged_actor"] == "support-team"
        assert details["resolved_actor"] == "cxloop"


class TestLengthBounds:
    def test_huge_values_in_every_free_text_field_keep_every_string_within_its_bound(
        self,
    ) -> None:
        big = "x" * 100_000
        a = alert(
            rule="r" * 100_000,
            severity="s" * 100_000,
            status="open",
            customer_id="c" * 100_000,
            channel="h" * 100_000,
            touchpoint="t" * 100_000,
            ticket_id="k" * 100_000,
            metric="m" * 100_000,
            comment=big,
            reasons=["y" * 100_000] * 1_000,
            note="n" * 100_000,
            assignee="a" * 100_000,
            acknowledged_by="b" * 100_000,
            acknowledged_actor="v" * 100_000,
            resolved_by="w" * 100_000,
            resolved_actor="z" * 100_000,
        )
        for action in ("trigger", "acknowledge", "resolve"):
            for receiver in (SLACK, PAGER, AM, HOOK):
                payload = sent(receiver, action, a)
                strings = list(walk(payload))
                assert strings, receiver.type
                for path, value in strings:
                    assert utf16(value) <= bound(path), (receiver.type, action, path)
                assert len(receivers.build(receiver, CONFIG, "n", action, a).body) < 40_000
            group = [a | {"id": uuid.uuid4()} for _ in range(30)]
            for receiver in (SLACK, AM, HOOK):
                body = receivers.build_group(receiver, CONFIG, "n", action, group).body
                for path, value in walk(json.loads(body)):
                    assert utf16(value) <= bound(path), (receiver.type, action, path)

        pager = sent(PAGER, "trigger", a)["payload"]
        for key in ("component", "group", "class"):
            assert len(pager[key]) == receivers.SHORT
            assert pager[key].endswith("…")
        assert len(pager["custom_details"]["reasons"]) == 32
        # A ticket link too long to be a URL is left out, never cut to another ticket.
        assert [link["text"] for link in sent(HOOK, "trigger", a)["data"]["links"]] == ["Runbook"]

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
