"""The alerting service's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import name

OPENED = Counter(
    name("alerting", "alerts_opened", "total"),
    "Alerts opened, by rule and severity.",
    ["rule", "severity"],
)
FOLDED = Counter(
    name("alerting", "alerts_folded", "total"),
    "Repeat triggers folded into an alert that was already open, by rule.",
    ["rule"],
)
RESOLVED = Counter(
    name("alerting", "alerts_resolved", "total"),
    "Alerts resolved, by rule (by a person, or by the ticket resolving).",
    ["rule"],
)
OPEN = Gauge(
    name("alerting", "open_alerts"),
    "Alerts not yet resolved, by rule and status.",
    ["rule", "status"],
)
_DURATIONS = (60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200, 604800)
TIME_TO_ACK = Histogram(
    name("alerting", "time_to_ack", "seconds"),
    "From an alert opening to its acknowledgement.",
    ["rule"],
    buckets=_DURATIONS,
)
TIME_TO_RESOLVE = Histogram(
    name("alerting", "time_to_resolve", "seconds"),
    "From an alert opening to its resolution.",
    ["rule"],
    buckets=_DURATIONS,
)
NOTIFY_ATTEMPTS = Counter(
    name("alerting", "notification_attempts", "total"),
    "Notification attempts by receiver and outcome (delivered, retry, failed).",
    ["receiver", "outcome"],
)
NOTIFICATIONS_EXPIRED = Counter(
    name("alerting", "notifications_expired", "total"),
    "Notifications marked failed because retrying them outlived the retry budget.",
    ["receiver"],
)
OUTBOX_DEPTH = Gauge(
    name("alerting", "outbox_depth"),
    "Notifications waiting for delivery (pending), held by a silence (held), and those that "
    "failed for good.",
    ["status"],
)
ORDER_CONFLICTS = Counter(
    name("alerting", "order_conflicts", "total"),
    "Completions of an order already kept for another customer, currency or amount (the "
    "first one stands), by what differs: customer, currency or amount.",
    ["kind"],
)
