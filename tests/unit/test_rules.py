"""Which answers call for a follow-up."""

from __future__ import annotations

import pytest

from services.alerting.rules import Rules, Severity, evaluate
from tests.builders import response_event


class TestRules:
    @pytest.mark.parametrize("score", [0, 3, 6])
    def test_every_detractor_alerts(self, score: int) -> None:
        draft = evaluate(response_event(score=score))
        assert draft is not None
        assert draft.rule == "detractor"

    @pytest.mark.parametrize("score", [7, 8, 9, 10])
    def test_passives_and_promoters_do_not(self, score: int) -> None:
        assert evaluate(response_event(score=score)) is None

    def test_the_lowest_scores_are_critical(self) -> None:
        assert evaluate(response_event(score=1)).severity is Severity.CRITICAL  # type: ignore[union-attr]
        assert evaluate(response_event(score=5)).severity is Severity.WARNING  # type: ignore[union-attr]

    def test_low_csat_and_high_effort(self) -> None:
        assert evaluate(response_event(metric="csat", scale=5, score=2)).rule == "low_csat"  # type: ignore[union-attr]
        assert evaluate(response_event(metric="csat", scale=5, score=3)) is None
        assert evaluate(response_event(metric="ces", scale=7, score=2)).rule == "high_effort"  # type: ignore[union-attr]
        assert evaluate(response_event(metric="ces", scale=7, score=3)) is None

    def test_dedupe_key_is_rule_customer_and_ticket(self) -> None:
        a = evaluate(response_event(score=2, customer_id="c1", ticket_id="T-1"))
        b = evaluate(response_event(score=4, customer_id="c1", ticket_id="T-1"))
        c = evaluate(response_event(score=4, customer_id="c1", ticket_id="T-2"))
        assert a is not None
        assert b is not None
        assert c is not None
        assert a.dedupe_key == b.dedupe_key != c.dedupe_key


class TestThresholdsBySegment:
    def test_overrides_change_thresholds_for_a_segment(self) -> None:
        rules = Rules.model_validate(
            {
                "detractor": {
                    "alert_at_or_below": 6,
                    "critical_at_or_below": 3,
                    "overrides": [
                        {"match": {"channel": "sms"}, "critical_at_or_below": 5},
                        {"match": {"location": "test-store"}, "enabled": False},
                    ],
                },
            }
        )
        sms = evaluate(response_event(score=5, channel="sms"), rules)
        web = evaluate(response_event(score=5, channel="web"), rules)
        assert sms is not None
        assert web is not None
        assert (sms.severity, web.severity) == (Severity.CRITICAL, Severity.WARNING)
        assert evaluate(response_event(score=0, segments={"location": "test-store"}), rules) is None

    def test_a_stricter_passive_threshold(self) -> None:
        rules = Rules.model_validate({"detractor": {"alert_at_or_below": 7}})
        assert evaluate(response_event(score=7), rules) is not None
        assert evaluate(response_event(score=8), rules) is None
