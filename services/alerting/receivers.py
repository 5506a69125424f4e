"""What each kind of receiver is sent: the request for one notification of one alert."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from services.alerting import value
from services.alerting.config import AlertingConfig, Receiver, label, webhook_key
from shared.events import utcnow

ACTIONS = {
    "trigger": "alert.triggered",
    "acknowledge": "alert.acknowledged",
    "resolve": "alert.resolved",
}
_PAGERDUTY_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}

# How long a text any receiver is sent may be, in characters counted as UTF-16 code units
# (the strictest count in use, so an emoji counts two). Documented limits where a receiver
# has one: a Slack section block's text, PagerDuty's Events v2 summary. The others are
# ours: short fields (ids, names, labels) and a comment or note, so that one customer's
# long comment never makes a notification that a receiver refuses or truncates blindly.
SLACK_TEXT = 3000
PAGERDUTY_SUMMARY = 1024
SHORT = 255
LONG = 4000
SUMMARY_COMMENT = 200
# A link longer than this is left out, not cut: a cut link would lead somewhere else.
URL = 2048
ELLIPSIS = "…"
_SLACK_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_ZWJ = "\u200d"


def _width(char: str, slack: bool) -> int:
    if slack and char in _SLACK_ESCAPES:
        return len(_SLACK_ESCAPES[char])
    return 2 if ord(char) > 0xFFFF else 1


def _extends(char: str) -> bool:
    """Whether ``char`` belongs to the character before it (a mark, joiner, selector)."""
    code = ord(char)
    return (
        unicodedata.category(char).startswith("M")
        or char == _ZWJ
        or 0xFE00 <= code <= 0xFE0F
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
    )


def _clip(text: str, limit: int, *, slack: bool) -> str:
    # Every character counts at least one, so no more than limit + 1 need measuring.
    widths = [_width(c, slack) for c in text[: limit + 1]]
    if sum(widths) <= limit:
        return slack_escape(text) if slack else text
    budget, used, cut = limit - len(ELLIPSIS), 0, 0
    while cut < len(widths) and used + widths[cut] <= budget:
        used += widths[cut]
        cut += 1
    # Never end between a character and what combines with it (a voiced mark, a skin tone,
    # the halves of a joined emoji): that would show a different character.
    while cut > 0 and (_extends(text[cut]) or text[cut - 1] == _ZWJ):
        cut -= 1
    head = text[:cut]
    return (slack_escape(head) if slack else head) + ELLIPSIS


def clip(text: str, limit: int) -> str:
    """Return ``text``, or as much of it as fits ``limit`` with an ellipsis, cut between
    whole characters."""
    return _clip(text, limit, slack=False)


def slack_escape(text: str) -> str:
    """Escape the three characters Slack reads as control sequences in mrkdwn."""
    return "".join(_SLACK_ESCAPES.get(c, c) for c in text)


def slack_text(text: str, limit: int = SLACK_TEXT) -> str:
    """Return ``text`` escaped for Slack and clipped to ``limit`` after escaping, never
    inside an ``&lt;``."""
    return _clip(text, limit, slack=True)


def slack_payload(text: str) -> dict[str, Any]:
    """Return the Slack message showing ``text`` (escaped already) as it is.

    Escaping stops ``<!here>`` and ``<url|label>``; turning automatic parsing off stops the
    rest: a ``verbatim`` text object makes no link of a bare URL, channel name or
    ``@here``, and the fallback ``text`` is neither parsed nor unfurled.
    """
    return {
        "text": text,
        "parse": "none",
        "link_names": False,
        "unfurl_links": False,
        "unfurl_media": False,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}],
    }


def _short(value: Any) -> str:
    return clip(str(value), SHORT)


@dataclass(frozen=True)
class Request:
    """An HTTP POST to make."""

    url: str
    headers: dict[str, str]
    body: bytes


def summary(alert: dict[str, Any]) -> str:
    """One line a person reads first: what happened, to whom, where."""
    what = _short(alert["rule"]).replace("_", " ")
    score = f", score {alert['score']}" if alert.get("score") is not None else ""
    ticket = f", ticket {_short(alert['ticket_id'])}" if alert.get("ticket_id") else ""
    worth = value.describe(value.of_alert(alert) or [])
    worth = f"; {worth}" if worth else ""
    comment = f" — “{clip(alert['comment'], SUMMARY_COMMENT)}”" if alert.get("comment") else ""
    line = (
        f"[{_short(alert['severity'])}] {what}: customer {_short(alert['customer_id'])} on "
        f"{_short(alert['channel'])}/{_short(alert.get('touchpoint') or '-')}"
        f"{score}{ticket}{worth}{comment}"
    )
    return clip(line, PAGERDUTY_SUMMARY)


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
        "acknowledged_actor",
        "acknowledged_actor_id",
        "resolved_by",
        "resolved_actor",
        "resolved_actor_id",
        "note",
        "assignee",
    )
    public = {k: alert.get(k) for k in keys}
    for key, text in public.items():
        if isinstance(text, str):
            public[key] = clip(text, LONG if key in ("comment", "note") else SHORT)
    if public["reasons"]:
        public["reasons"] = [_short(r) for r in public["reasons"][:32]]
    worth = value.of_alert(alert)
    public["value"] = None if worth is None else [v.public() for v in worth]
    public["high_value"] = bool(alert.get("high_value"))
    public["value_reason"] = _reason(alert)
    return public


def _reason(alert: dict[str, Any]) -> str | None:
    """An alert's value_reason, clipped as it is stored (the same in every receiver)."""
    why = alert.get("value_reason")
    return None if not why else clip(str(why), value.REASON_CHARS)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return a Standard Webhooks ``webhook-signature`` value for ``body``."""
    key = webhook_key(secret)
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
    links = [link for link in config.links(alert) if len(link["href"]) <= URL]
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
        if action == "trigger" and _reason(alert):
            text += f"\nWhy critical: {_reason(alert)}"
        if action == "resolve" and alert.get("note"):
            text += f"\nFollow-up: {clip(alert['note'], LONG)}"
        payload = slack_payload(slack_text(text))
    elif receiver.type == "pagerduty":
        payload = {
            "routing_key": receiver.secret(receiver.routing_key_env) or "",
            "event_action": action,
            "dedup_key": str(alert["id"]),
        }
        if action == "trigger":
            payload["payload"] = {
                "summary": summary(alert),
                "source": "cxloop",
                "severity": _PAGERDUTY_SEVERITY.get(alert["severity"], "warning"),
                "timestamp": str(alert["opened_at"]),
                "component": _short(alert["channel"]),
                "group": _short(alert.get("touchpoint") or ""),
                "class": _short(alert["rule"]),
                "custom_details": _public(alert),
            }
            payload["links"] = links
    else:
        labels = {
            "alertname": _short(alert["rule"]),
            "severity": _short(alert["severity"]),
            "channel": _short(alert["channel"]),
            "alert_id": str(alert["id"]),
            "source": "cxloop",
        }
        if alert.get("high_value"):
            # Only when true: a label on every alert would change every alert's fingerprint.
            labels["high_value"] = label(True)
        annotations = {
            "summary": summary(alert),
            "runbook_url": config.runbook_for(alert) or "",
        }
        if _reason(alert):
            annotations["value_reason"] = str(_reason(alert))
        ends = now if action == "resolve" else now + timedelta(hours=24)
        payload = [
            {
                "labels": labels,
                "annotations": annotations,
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
    headline = f"{len(group)} alerts: {_short(group[0]['rule']).replace('_', ' ')} and more"
    if receiver.type == "slack":
        text = "🔔 " + headline + "\n" + "\n".join(lines[:20])
        if len(lines) > 20:
            text += f"\n…and {len(lines) - 20} more"
        payload: Any = slack_payload(slack_text(text))
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
