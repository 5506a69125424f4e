"""The receivers-and-routes file, and what each receiver is sent."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from services.alerting import outbox, receivers
from services.alerting.config import AlertingConfig, load
from services.cli import main
from shared.errors import ConfigError

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

ALERT: dict[str, Any] = {
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
    "comment": "二度と使わない",
    "reasons": ["price"],
    "occurrences": 1,
    "opened_at": datetime(2026, 11, 22, 1, 0, tzinfo=UTC),
    "acknowledged_by": None,
    "resolved_by": None,
    "note": None,
    "assignee": None,
}


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
            "revenue_minor": 120000,
            "orders": 8,
            "threshold_minor": 100000,
            "high_value": True,
        }
    ],
    "value_reason": "high-value customer: ¥120,000 in the last 12 months (threshold ¥100,000)",
}


class TestHighValue:
    def test_thresholds_per_currency_in_minor_units(self, tmp_path: Path) -> None:
        config = load(write(tmp_path, GOOD + "high_value: {JPY: 100000, usd: 1000.50}\n"))
        assert config.thresholds() == {"JPY": 100000, "USD": 100050}
        assert AlertingConfig().thresholds() == {}

    @pytest.mark.parametrize(
        ("yaml", "says"),
        [
            ("{JPX: 100}", "high_value: JPX: 'JPX' is not an ISO 4217 currency"),
            ("{dollars: 100}", "high_value: dollars: currency must be a three-letter"),
            ("{JPY: 100.5}", "high_value: JPY: amount has more decimals than JPY allows"),
            ("{USD: -5}", "high_value: USD: amount must not be negative"),
            ("{USD: 0}", "high_value: USD: the threshold must be above zero"),
            ("{USD: 1e3}", "high_value: USD: amount must be written in plain decimal"),
            ("{USD: 10, usd: 20}", "high_value: usd: USD is given twice"),
            ("[JPY]", "high_value: must map currency codes to amounts"),
        ],
    )
    def test_a_bad_threshold_names_its_key_and_line(
        self, tmp_path: Path, yaml: str, says: str
    ) -> None:
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, GOOD + f"high_value: {yaml}\n"))
        assert says in str(exc.value)
        assert "alerting.yml:15: " in str(exc.value)

    def test_routes_and_silences_match_high_value_as_true_or_false(self, tmp_path: Path) -> None:
        text = GOOD.replace("match: {severity: critical}", "match: {high_value: true}")
        config = load(write(tmp_path, text))
        assert config.routes[0].match == {"high_value": "true"}
        assert config.route({"high_value": True, "severity": "warning"}) == ["pager", "oncall"]
        assert config.route({"high_value": False, "severity": "critical"}) == ["oncall"]
        quoted = load(write(tmp_path, text.replace("high_value: true", 'high_value: "true"')))
        assert quoted.route({"high_value": True}) == ["pager", "oncall"]
        assert outbox.silenced({"high_value": True}, [{"high_value": "true"}])
        assert not outbox.silenced({"high_value": False}, [{"high_value": "true"}])

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
        # An alert without orders says nothing of them.
        plain = json.loads(receivers.build(config.receivers[2], config, "n", "trigger", ALERT).body)
        assert plain[0]["labels"]["high_value"] == "false"
        assert "in 12 months" not in plain[0]["annotations"]["summary"]
