"""The alerting service's metrics."""

from __future__ import annotations

from prometheus_client import Counter

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
