"""The receivers-and-routes file, and what each receiver is sent."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook

from services.alerting import outbox, receivers, value
from services.alerting.config import AlertingConfig, load
from services.alerting.schemas import CustomerValue, SilenceIn
from services.cli import main
from shared import money
from shared.errors import ConfigError
from tests.builders import alert

GOOD = """\
receivers:
  - name: oncall
    type: webhook
    url: https://hooks.example.com/cx
    secret_env: TEST_WEBHOOK_SECRET
  - name: pager
    type: pagerduty
    routing_key_env: TEST_PD_KEY
routes:
  - match: {severity: critical}
    receiver: pager
    continue: true
  - receiver: oncall
runbook_url: https://wiki.example.com/cx
"""

LINKS = """\
ticket_urls:
  zendesk: https://acme.zendesk.com/agent/tickets/{ticket_id}
rules:
  detractor: {alert_at_or_below: 6, runbook_url: https://wiki.example.com/detractors}
score_drops:
  - {metric: nps, by: channel, drop_points: 10, runbook_url: https://wiki.example.com/drops}
"""

ALERT: dict[str, Any] = alert(comment="二度と使わない")


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # A receiver naming an unset variable is refused; these are the file's.
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", "whsec_" + "B" * 32)
    monkeypatch.setenv("TEST_PD_KEY", "R0UT1NGKEY")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alerting.yml"
    path.write_text(text)
    return path


class TestConfig:
    def test_routes_first_match_and_continue(self, tmp_path: Path) -> None:
        config = load(write(tmp_path, GOOD))
        assert config.route({"severity": "critical"}) == ["pager", "oncall"]
        assert config.route({"severity": "warning"}) == ["oncall"]

    def test_errors_name_the_line(self, tmp_path: Path) -> None:
        bad = GOOD.replace("type: pagerduty", "type: pager_duty").replace(
            "receiver: oncall", "receiver: nobody"
        )
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, bad))
        assert "alerting.yml:7: receivers.1.type" in str(exc.value)

    def test_unknown_receiver_and_bad_yaml(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="receiver 'nobody', which is not defined"):
            load(write(tmp_path, GOOD.replace("receiver: oncall", "receiver: nobody")))
        with pytest.raises(ConfigError, match=r"alerting\.yml:\d+: not valid YAML"):
            load(write(tmp_path, "receivers:\n  - name: [unclosed\n"))

    def test_check_config_command(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["alerting", "check-config", str(write(tmp_path, GOOD))]) == 0
        assert "2 receiver(s), 2 route(s)" in capsys.readouterr().out
        assert main(["alerting", "check-config", str(write(tmp_path, "routes: 3\n"))]) == 2
        assert "alerting.yml:1: routes" in capsys.readouterr().err
        linked = GOOD + LINKS
        assert main(["alerting", "check-config", str(write(tmp_path, linked))]) == 0
        assert "1 ticket link template(s), 2 rule runbook(s)" in capsys.readouterr().out
        bad = linked.replace("https://wiki.example.com/detractors", "wiki/detractors")
        assert main(["alerting", "check-config", str(write(tmp_path, bad))]) == 2
        assert "alerting.yml:18: rules.detractor.runbook_url" in capsys.readouterr().err
        bad = linked.replace("agent/tickets/{ticket_id}", "agent/tickets")
        assert main(["alerting", "check-config", str(write(tmp_path, bad))]) == 2
        assert "must hold {ticket_id}" in capsys.readouterr().err

    @pytest.mark.parametrize(
        "url", ["wiki.example.com/cx", "ftp://wiki.example.com/cx", "https://", "https://a b/"]
    )
    def test_a_runbook_must_be_an_http_url(self, tmp_path: Path, url: str) -> None:
        with pytest.raises(ConfigError, match=r"alerting\.yml:14: runbook_url"):
            load(write(tmp_path, GOOD.replace("https://wiki.example.com/cx", url)))

    def test_a_rules_runbook_wins_over_the_configs(self, tmp_path: Path) -> None:
        config = load(write(tmp_path, GOOD + LINKS))
        detractor = {**ALERT, "ticket_source": "zendesk"}
        assert config.links(detractor) == [
            {"href": "https://acme.zendesk.com/agent/tickets/T-5", "text": "Ticket"},
            {"href": "https://wiki.example.com/detractors", "text": "Runbook"},
        ]
        assert config.runbook_for({**ALERT, "rule": "low_csat"}) == "https://wiki.example.com/cx"
        by_channel = {"rule": "score_drop", "dedupe_key": "score_drop:nps:7d:channel=sms"}
        assert config.runbook_for(by_channel) == "https://wiki.example.com/drops"
        overall = {"rule": "score_drop", "dedupe_key": "score_drop:nps:7d:all"}
        assert config.runbook_for(overall) == "https://wiki.example.com/cx"
        assert config.ticket_url("freshdesk", "T-5") is None
        assert config.ticket_url("zendesk", "T/5") == "https://acme.zendesk.com/agent/tickets/T%2F5"


class TestPayloads:
    def test_webhook_signature_verifies_with_standardwebhooks(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        monkeypatch.setenv("TEST_WEBHOOK_SECRET", secret)
        config = load(write(tmp_path, GOOD))
        request = receivers.build(config.receivers[0], config, "msg_1", "trigger", ALERT)
        payload = Webhook(secret).verify(request.body, request.headers)
        assert payload["type"] == "alert.triggered"
        assert payload["data"]["alert"]["comment"] == "二度と使わない"
        assert payload["data"]["links"] == [
            {"href": "https://wiki.example.com/cx", "text": "Runbook"}
        ]
        with pytest.raises(Exception):  # noqa: B017, PT011 - the package raises its own type
            Webhook("whsec_" + "A" * 32).verify(request.body, request.headers)

    def test_pagerduty_events_v2(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TEST_PD_KEY", "R0UT1NGKEY")
        config = load(write(tmp_path, GOOD))
        trigger = json.loads(
            receivers.build(config.receivers[1], config, "n", "trigger", ALERT).body
        )
        assert (trigger["routing_key"], trigger["event_action"]) == ("R0UT1NGKEY", "trigger")
        assert trigger["dedup_key"] == str(ALERT["id"])
        assert trigger["payload"]["severity"] == "critical"
        assert len(trigger["payload"]["summary"]) <= 1024
        resolve = json.loads(
            receivers.build(config.receivers[1], config, "n", "resolve", ALERT).body
        )
        assert resolve == {
            "routing_key": "R0UT1NGKEY",
            "event_action": "resolve",
            "dedup_key": str(ALERT["id"]),
        }

    def test_links_to_the_ticket_and_the_runbook(self) -> None:
        config = AlertingConfig.model_validate(
            {
                "receivers": [{"name": "w", "type": "webhook", "url": "https://h.example/x"}],
                "ticket_urls": {"zendesk": "https://acme.zendesk.com/agent/tickets/{ticket_id}"},
                "runbook_url": "https://wiki.example.com/cx",
            }
        )
        alert = {**ALERT, "ticket_source": "zendesk"}
        body = json.loads(receivers.build(config.receivers[0], config, "n", "trigger", alert).body)
        assert body["data"]["links"] == [
            {"href": "https://acme.zendesk.com/agent/tickets/T-5", "text": "Ticket"},
            {"href": "https://wiki.example.com/cx", "text": "Runbook"},
        ]

    def test_slack_and_alertmanager(self) -> None:
        config = AlertingConfig.model_validate(
            {
                "receivers": [
                    {"name": "s", "type": "slack", "url": "https://hooks.slack.com/services/X"},
                    {"name": "am", "type": "alertmanager", "url": "http://127.0.0.1:9093"},
                ]
            }
        )
        slack = json.loads(receivers.build(config.receivers[0], config, "n", "trigger", ALERT).body)
        assert "detractor" in slack["text"]
        assert slack["blocks"][0]["text"]["type"] == "mrkdwn"
        am = receivers.build(config.receivers[1], config, "n", "resolve", ALERT)
        assert am.url == "http://127.0.0.1:9093/api/v2/alerts"
        (alert,) = json.loads(am.body)
        assert alert["labels"]["alertname"] == "detractor"
        assert alert["endsAt"]


VALUED: dict[str, Any] = {
    **ALERT,
    "high_value": True,
    "value": [
        {
            "currency": "JPY",
            "exponent": 0,
            "revenue_minor": 120000,
            "orders": 8,
            "threshold_minor": 100000,
            "high_value": True,
        }
    ],
    "value_reason": "high-value customer: ¥120,000 in the 12 months up to the answer "
    "(threshold ¥100,000)",
}


class TestHighValue:
    def test_thresholds_per_currency_in_minor_units(self, tmp_path: Path) -> None:
        config = load(write(tmp_path, GOOD + 'high_value: {JPY: 100000, usd: "1000.50"}\n'))
        assert config.thresholds() == {"JPY": 100000, "USD": 100050}
        assert AlertingConfig().thresholds() == {}

    @pytest.mark.parametrize(
        ("yaml", "says"),
        [
            ("{JPX: 100}", "high_value.JPX: 'JPX' is not an ISO 4217 currency"),
            ("{dollars: 100}", "high_value.dollars: currency must be a three-letter"),
            ('{JPY: "100.5"}', "high_value.JPY: amount has more decimals than JPY allows"),
            ("{USD: -5}", "high_value.USD: amount must not be negative"),
            ("{USD: 0}", "high_value.USD: the threshold must be above zero"),
            ("{USD: 1e3}", "high_value.USD: amount must be written in plain decimal"),
            ("{USD: 10, usd: 20}", "high_value.usd: USD is given twice"),
            ("[JPY]", "high_value: must map currency codes to amounts"),
            # YAML reads these as floats: the digits written are gone (the second as 1000).
            ("{USD: 1000.50}", 'high_value.USD: write the amount in quotes, e.g. USD: "1000.50"'),
            ("{JPY: 1000.0000000000000001}", "high_value.JPY: write the amount in quotes"),
        ],
    )
    def test_a_bad_threshold_names_its_key_and_line(
        self, tmp_path: Path, yaml: str, says: str
    ) -> None:
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, GOOD + f"high_value: {yaml}\n"))
        assert says in str(exc.value)
        assert "alerting.yml:15: " in str(exc.value)

    def test_the_line_is_the_bad_keys_not_high_values(self, tmp_path: Path) -> None:
        block = "high_value:\n  JPY: 100000\n  USD: 12.5\n  EUR: 1000\n"
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, GOOD + block))
        assert str(exc.value).endswith(
            "alerting.yml:17: high_value.USD: "
            + (
                'write the amount in quotes, e.g. USD: "1000.50" (unquoted, YAML reads a number '
                "with a decimal point as a float, which may round it)"
            )
        )
        with pytest.raises(ConfigError, match=r"alerting\.yml:18: high_value\.eur: EUR is given"):
            load(write(tmp_path, GOOD + block.replace("USD: 12.5", "EUR: 5\n  eur: 6")))

    def test_routes_and_silences_match_high_value_as_true_or_false(self, tmp_path: Path) -> None:
        text = GOOD.replace("match: {severity: critical}", "match: {high_value: true}")
        config = load(write(tmp_path, text))
        assert config.routes[0].match == {"high_value": "true"}
        assert config.route({"high_value": True, "severity": "warning"}) == ["pager", "oncall"]
        assert config.route({"high_value": False, "severity": "critical"}) == ["oncall"]
        for written in ('"true"', '"True"', "TRUE"):
            quoted = load(
                write(tmp_path, text.replace("high_value: true", f"high_value: {written}"))
            )
            assert quoted.routes[0].match == {"high_value": "true"}
            assert quoted.route({"high_value": True}) == ["pager", "oncall"]
        assert outbox.silenced({"high_value": True}, [{"high_value": "true"}])
        assert not outbox.silenced({"high_value": False}, [{"high_value": "true"}])

    def test_other_labels_refuse_a_yaml_boolean_and_high_value_anything_else(
        self, tmp_path: Path
    ) -> None:
        # `ON` is a YAML boolean: it must not quietly become the label "true".
        location = GOOD.replace("match: {severity: critical}", "match:\n      location: ON")
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, location))
        assert "alerting.yml:11: routes.0.match.location: Input should be a valid string" in str(
            exc.value
        )
        quoted = load(write(tmp_path, location.replace("location: ON", 'location: "ON"')))
        assert quoted.route({"location": "ON"}) == ["pager", "oncall"]
        maybe = GOOD.replace("match: {severity: critical}", "match:\n      high_value: maybe")
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, maybe))
        assert "alerting.yml:11: routes.0.match.high_value: must be true or false" in str(exc.value)

    def test_a_silence_matches_high_value_in_any_case_and_nothing_else(self) -> None:
        def silence(value: object) -> SilenceIn:
            return SilenceIn.model_validate(
                {"matchers": {"high_value": value}, "duration_minutes": 60, "comment": "vip"}
            )

        assert silence("True").matchers == {"high_value": "true"}
        assert silence(" FALSE ").matchers == {"high_value": "false"}
        assert silence(True).matchers == {"high_value": "true"}
        with pytest.raises(ValidationError, match="high_value: must be true or false"):
            silence("yes")

    def test_each_receiver_hears_the_value(self, tmp_path: Path) -> None:
        config = AlertingConfig.model_validate(
            {
                "receivers": [
                    {"name": "hook", "type": "webhook", "url": "https://hooks.example.com/cx"},
                    {"name": "s", "type": "slack", "url": "https://hooks.slack.com/services/X"},
                    {"name": "am", "type": "alertmanager", "url": "http://127.0.0.1:9093"},
                    {"name": "pd", "type": "pagerduty", "routing_key_env": "TEST_PD_KEY"},
                ]
            }
        )
        hook, slack, am, pd = (
            json.loads(receivers.build(r, config, "n", "trigger", VALUED).body)
            for r in config.receivers
        )
        line = "¥120,000 in 12 months, 8 orders"
        assert line in hook["data"]["summary"]
        assert hook["data"]["alert"]["value"] == [
            {
                "currency": "JPY",
                "revenue": "120000",
                "orders": 8,
                "threshold": "100000",
                "high_value": True,
            }
        ]
        assert hook["data"]["alert"]["value_reason"] == VALUED["value_reason"]
        assert line in slack["text"]
        assert "Why critical: high-value customer: ¥120,000" in slack["text"]
        assert am[0]["labels"]["high_value"] == "true"
        assert am[0]["annotations"]["value_reason"] == VALUED["value_reason"]
        assert line in pd["payload"]["summary"]
        assert pd["payload"]["custom_details"]["high_value"] is True
        # An alert without orders says nothing of them, and has no high_value label at all:
        # a label on every alert would change the fingerprint of alerts sent before it.
        plain = json.loads(receivers.build(config.receivers[2], config, "n", "trigger", ALERT).body)
        assert "high_value" not in plain[0]["labels"]
        assert "value_reason" not in plain[0]["annotations"]
        assert "in 12 months" not in plain[0]["annotations"]["summary"]
        # One without a computed value (opened before alerts had one) says null, not [].
        hook = json.loads(receivers.build(config.receivers[0], config, "n", "trigger", ALERT).body)
        assert hook["data"]["alert"]["value"] is None

    def test_a_long_reason_is_clipped_the_same_for_every_receiver(self) -> None:
        config = AlertingConfig.model_validate(
            {
                "receivers": [
                    {"name": "hook", "type": "webhook", "url": "https://hooks.example.com/cx"},
                    {"name": "s", "type": "slack", "url": "https://hooks.slack.com/services/X"},
                    {"name": "am", "type": "alertmanager", "url": "http://127.0.0.1:9093"},
                    {"name": "pd", "type": "pagerduty", "routing_key_env": "TEST_PD_KEY"},
                ]
            }
        )
        many = tuple(
            value.CurrencyValue(code, 10**12, 1, money.exponent(code), 1)
            for code in sorted(money.currencies())
        )
        why = value.reason(many)
        assert why is not None
        assert len(why) <= value.REASON_CHARS
        assert why.endswith("; …")
        assert why.count("(threshold") < len(many)  # whole currencies, then the ellipsis
        alert = {**VALUED, "value": [v.stored() for v in many], "value_reason": why}
        hook, slack, am, pd = (
            json.loads(receivers.build(r, config, "n", "trigger", alert).body)
            for r in config.receivers
        )
        assert hook["data"]["alert"]["value_reason"] == why
        assert pd["payload"]["custom_details"]["value_reason"] == why
        assert am[0]["annotations"]["value_reason"] == why
        assert f"Why critical: {why}" in slack["text"]

    def test_a_value_stored_without_its_exponent_gets_its_currencys(self) -> None:
        stored = {"currency": "JPY", "revenue_minor": 1200, "orders": 2, "threshold_minor": None}
        assert value.CurrencyValue.from_stored(stored).exponent == 0
        usd = value.CurrencyValue.from_stored({**stored, "currency": "USD"})
        assert usd == value.CurrencyValue("USD", 1200, 2, 2, None)
        kept = value.CurrencyValue.from_stored({**stored, "currency": "USD", "exponent": 2})
        assert kept == usd


class TestMoney:
    @pytest.mark.parametrize(
        ("minor", "currency", "locale", "shown"),
        [
            # ISO 4217 gives IQD 3 decimals, CLDR none: Babel alone writes IQD1,000.
            (999600, "IQD", "en", "IQD999.600"),
            (120000, "JPY", "en", "¥120,000"),
            (120000, "JPY", "ja", "￥120,000"),
            (500, "USD", "en", "$5.00"),
            (123456789, "USD", "de", "1.234.567,89\xa0$"),
        ],
    )
    def test_amounts_have_the_iso_digits(
        self, minor: int, currency: str, locale: str, shown: str
    ) -> None:
        exponent = money.exponent(currency)
        assert value.money(minor, currency, exponent, locale) == shown
        # As the console writes the API's decimal string.
        text = value.decimal_string(minor, exponent)
        assert value.format_money(Decimal(text), currency, locale) == shown

    def test_a_stored_value_needs_no_currency_table(self) -> None:
        # A currency the iso4217 package might drop later: the alert keeps its exponent.
        stored = {
            "currency": "XQQ",
            "exponent": 3,
            "revenue_minor": 1500,
            "orders": 2,
            "threshold_minor": None,
            "high_value": False,
        }
        (worth,) = value.of_alert({"value": [stored]}) or []
        assert worth.public()["revenue"] == "1.500"
        assert value.describe([worth]) == "XQQ1.500 in 12 months, 2 orders"
        assert worth.stored() == stored
        assert CustomerValue.model_validate(stored).revenue == "1.500"
        assert value.of_alert({"value": None}) is None
