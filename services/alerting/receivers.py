"""What each kind of receiver is sent: the request for one notification of one alert."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.alerting.config import AlertingConfig, Receiver
from shared.events import utcnow

ACTIONS = {
    "trigger": "alert.triggered",
    "acknowledge": "alert.acknowledged",
    "resolve": "alert.resolved",
}
_PAGERDUTY_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


@dataclass(frozen=True)
class Request:
    """An HTTP POST to make."""

    url: str
    headers: dict[str, str]
    body: bytes


def summary(alert: dict[str, Any]) -> str:
    """One line a person reads first: what happened, to whom, where."""
    what = alert["rule"].replace("_", " ")
    score = f", score {alert['score']}" if alert.get("score") is not None else ""
    ticket = f", ticket {alert['ticket_id']}" if alert.get("ticket_id") else ""
    comment = f" — “{alert['comment'][:200]}”" if alert.get("comment") else ""
    return (
        f"[{alert['severity']}] {what}: customer {alert['customer_id']} on "
        f"{alert['channel']}/{alert.get('touchpoint') or '-'}{score}{ticket}{comment}"
    )


def _public(alert: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id",
        "rule",
        "severity",
        "status",
        "customer_id",
        "channel",
        "touchpoint",
        "ticket_id",
        "metric",
        "score",
        "comment",
        "reasons",
        "occurrences",
        "opened_at",
        "acknowledged_by",
        "resolved_by",
        "note",
        "assignee",
    )
    return {k: alert.get(k) for k in keys}


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return a Standard Webhooks ``webhook-signature`` value for ``body``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def build(
    receiver: Receiver,
    config: AlertingConfig,
    notification_id: str,
    action: str,
    alert: dict[str, Any],
    now: datetime | None = None,
) -> Request:
    """Return the request that announces ``action`` on ``alert`` to ``receiver``."""
    now = now or utcnow()
    links = config.links(alert)
    headers = {"Content-Type": "application/json"}
    payload: Any
    if receiver.type == "webhook":
        payload = {
            "type": ACTIONS[action],
            "timestamp": now.isoformat(),
            "data": {"alert": _public(alert), "summary": summary(alert), "links": links},
        }
        body = json.dumps(payload, default=str, ensure_ascii=False).encode()
        timestamp = int(now.timestamp())
        headers |= {"webhook-id": notification_id, "webhook-timestamp": str(timestamp)}
        secret = receiver.secret(receiver.secret_env)
        if secret:
            headers["webhook-signature"] = sign(secret, notification_id, timestamp, body)
        return Request(receiver.url, headers, body)
    if receiver.type == "slack":
        state = {"trigger": "🔔", "acknowledge": "👀 acknowledged:", "resolve": "✅ resolved:"}[
            action
        ]
        text = f"{state} {summary(alert)}"
        if action == "resolve" and alert.get("note"):
            text += f"\nFollow-up: {alert['note']}"
        payload = {
            "text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        }
    elif receiver.type == "pagerduty":
        payload = {
            "routing_key": receiver.secret(receiver.routing_key_env) or "",
            "event_action": action,
            "dedup_key": str(alert["id"]),
        }
        if action == "trigger":
            payload["payload"] = {
                "summary": summary(alert)[:1024],
                "source": "cxloop",
                "severity": _PAGERDUTY_SEVERITY.get(alert["severity"], "warning"),
                "timestamp": str(alert["opened_at"]),
                "component": alert["channel"],
                "group": alert.get("touchpoint") or "",
                "class": alert["rule"],
                "custom_details": _public(alert),
            }
            payload["links"] = links
    else:
        labels = {
            "alertname": alert["rule"],
            "severity": alert["severity"],
            "channel": alert["channel"],
            "alert_id": str(alert["id"]),
            "source": "cxloop",
        }
        ends = now if action == "resolve" else now + timedelta(hours=24)
        payload = [
            {
                "labels": labels,
                "annotations": {"summary": summary(alert), "runbook_url": config.runbook_url or ""},
                "startsAt": str(alert["opened_at"]).replace(" ", "T"),
                "endsAt": ends.isoformat(),
            }
        ]
        url = receiver.url.rstrip("/") + "/api/v2/alerts"
        return Request(url, headers, json.dumps(payload, default=str).encode())
    return Request(
        receiver.url, headers, json.dumps(payload, default=str, ensure_ascii=False).encode()
    )


def build_group(
    receiver: Receiver,
    config: AlertingConfig,
    notification_id: str,
    action: str,
    group: list[dict[str, Any]],
    now: datetime | None = None,
) -> Request:
    """Return the one request that announces several alerts of a group together."""
    if len(group) == 1 or receiver.type == "pagerduty":
        return build(receiver, config, notification_id, action, group[0], now)
    now = now or utcnow()
    if receiver.type == "alertmanager":
        requests = [build(receiver, config, notification_id, action, a, now) for a in group]
        alerts = [json.loads(r.body)[0] for r in requests]
        return Request(requests[0].url, requests[0].headers, json.dumps(alerts).encode())
    lines = [summary(a) for a in group]
    headline = f"{len(group)} alerts: {group[0]['rule'].replace('_', ' ')} and more"
    if receiver.type == "slack":
        text = "🔔 " + headline + "\n" + "\n".join(lines[:20])
        if len(lines) > 20:
            text += f"\n…and {len(lines) - 20} more"
        payload: Any = {
            "text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        }
        return Request(
            receiver.url,
            {"Content-Type": "application/json"},
            json.dumps(payload, ensure_ascii=False).encode(),
        )
    payload = {
        "type": ACTIONS[action],
        "timestamp": now.isoformat(),
        "data": {"alerts": [_public(a) for a in group], "summary": headline},
    }
    body = json.dumps(payload, default=str, ensure_ascii=False).encode()
    timestamp = int(now.timestamp())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": notification_id,
        "webhook-timestamp": str(timestamp),
    }
    secret = receiver.secret(receiver.secret_env)
    if secret:
        headers["webhook-signature"] = sign(secret, notification_id, timestamp, body)
    return Request(receiver.url, headers, body)
