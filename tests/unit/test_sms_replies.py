"""SMS replies as people really write them."""

from __future__ import annotations

from typing import ClassVar

import pytest
from twilio.request_validator import RequestValidator

from services.collector.sources import sms, twilio_signature
from services.collector.sources.sms import Keyword, ParsedReply, parse_reply


class TestScores:
    @pytest.mark.parametrize(
        ("reply", "score", "comment"),
        [
            ("9", 9, None),
            (" 10 ", 10, None),
            ("9 - great service", 9, "great service"),
            ("nine", 9, None),
            ("Ten! loved it", 10, "loved it"),
            ("10/10", 10, None),
            ("8 out of 10, slow delivery", 8, "slow delivery"),
            ("I'd say 8", 8, None),
            ("０", 0, None),
            ("９", 9, None),
            ("１０です", 10, None),
            ("九", 9, None),
            ("十", 10, None),
            ("十点", 10, None),
            ("3。電話がなかなかつながらない", 3, "電話がなかなかつながらない"),
            ("7点かな", 7, None),
        ],
    )
    def test_score_and_comment(self, reply: str, score: int, comment: str | None) -> None:
        assert parse_reply(reply, 0, 10) == ParsedReply(score, comment)

    @pytest.mark.parametrize(
        "reply", ["", "great!", "11", "100", "-3", "一番良かった", "十分です", "9.5", "🙂"]
    )
    def test_no_score_means_a_re_ask(self, reply: str) -> None:
        assert parse_reply(reply, 0, 10) is None

    def test_scale_is_the_invitations(self) -> None:
        assert parse_reply("5", 1, 5) == ParsedReply(5, None)
        assert parse_reply("6", 1, 5) is None
        assert parse_reply("0", 1, 5) is None


class TestKeywords:
    @pytest.mark.parametrize(
        ("reply", "expected"),
        [("STOP", Keyword.STOP), ("stop ", Keyword.STOP), ("ＳＴＯＰ", Keyword.STOP),
         ("Unsubscribe", Keyword.STOP), ("配信停止", Keyword.STOP), ("START", Keyword.START),
         ("unstop", Keyword.START), ("HELP", Keyword.HELP), ("help me", None), ("9", None)],
    )  # fmt: skip
    def test_carrier_keywords(self, reply: str, expected: Keyword | None) -> None:
        assert sms.keyword(reply) is expected


class TestTwiml:
    def test_reply_is_escaped_xml(self) -> None:
        assert sms.twiml("a < b & 'c'") == (
            '<?xml version="1.0" encoding="UTF-8"?>'
            "<Response><Message>a &lt; b &amp; 'c'</Message></Response>"
        )
        assert sms.twiml(None).endswith("<Response></Response>")

    def test_language_follows_locale(self) -> None:
        assert sms.text("thanks", "ja-JP") == "ご回答ありがとうございました。"
        assert "0 to 10" in sms.text("reask", "en", low=0, high=10)


class TestSignature:
    """Our check against signatures made by Twilio's own library."""

    URL = "https://cx.example.com/v1/sources/twilio/sms?tenant=jp"
    PARAMS: ClassVar[dict[str, str]] = {
        "MessageSid": "SM" + "a" * 32,
        "From": "+819012345678",
        "Body": "９ 最高でした",
    }

    def test_a_twilio_signature_is_valid(self) -> None:
        signature = RequestValidator("token-123").compute_signature(self.URL, self.PARAMS)
        assert twilio_signature.valid("token-123", [self.URL], list(self.PARAMS.items()), signature)

    def test_another_token_or_body_is_not(self) -> None:
        signature = RequestValidator("token-123").compute_signature(self.URL, self.PARAMS)
        assert not twilio_signature.valid(
            "token-456", [self.URL], list(self.PARAMS.items()), signature
        )
        tampered = {**self.PARAMS, "Body": "0"}
        assert not twilio_signature.valid(
            "token-123", [self.URL], list(tampered.items()), signature
        )

    def test_default_port_variants_are_tried(self) -> None:
        signed_with_port = "https://cx.example.com:443/v1/sources/twilio/sms"
        signature = RequestValidator("t").compute_signature(signed_with_port, self.PARAMS)
        urls = twilio_signature.candidate_urls("https://cx.example.com/v1/sources/twilio/sms")
        assert twilio_signature.valid("t", urls, list(self.PARAMS.items()), signature)
