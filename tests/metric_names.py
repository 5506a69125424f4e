"""Metric names that deploy/ files use, and names a Prometheus text exposition offers."""

from __future__ import annotations

import json
import re
from pathlib import Path

DEPLOY = Path(__file__).parents[1] / "deploy"
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "summary": ("_sum", "_count", ""),
}


def used_by_deploy() -> set[str]:
    """Every cxloop metric named by the Prometheus rules and the Grafana dashboards."""
    texts = [p.read_text() for p in (DEPLOY / "prometheus" / "rules").glob("*.yml")]
    for dashboard in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(dashboard.read_text())["panels"]:
            texts += [t["expr"] for t in panel.get("targets", [])]
    return set(re.findall(r"\b(cxloop_[a-z_]+)\b", "\n".join(texts)))


def offered(exposition: str) -> set[str]:
    """The sample names a /metrics page can carry, from its # TYPE lines."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, flags=re.MULTILINE):
        # prometheus_client names a counter's family with its _total already.
        base = name.removesuffix("_total") if kind == "counter" else name
        names |= {base + suffix for suffix in _SUFFIXES.get(kind, ("",))}
    return names
