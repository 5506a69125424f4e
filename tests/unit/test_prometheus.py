"""The Prometheus config and rules in deploy/: valid, unit-tested, and naming real metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import services.alerting.app
import services.collector.app
import services.scorer.app
import services.scorer.gauges  # noqa: F401 - importing registers every metric
from tests.metric_names import used_by_deploy

PROMETHEUS = Path(__file__).parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and os.environ.get("CI") != "true",
    reason="needs Debian's prometheus (promtool); CI installs it",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "CI must install Debian's prometheus for promtool"
    return subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
class TestPromtool:
    def test_config_and_rules_check(self) -> None:
        for args in (
            ("check", "config", "prometheus.yml"),
            ("check", "rules", "rules/recording.yml", "rules/alerts.yml"),
        ):
            result = promtool(*args)
            assert result.returncode == 0, result.stdout + result.stderr

    def test_every_alert_rule_is_unit_tested(self) -> None:
        result = promtool("test", "rules", "tests/alerts_test.yml")
        assert result.returncode == 0, result.stdout + result.stderr
        alerts = set(re.findall(r"- alert: (\w+)", (PROMETHEUS / "rules/alerts.yml").read_text()))
        tested = set(
            re.findall(r"alertname: (\w+)", (PROMETHEUS / "tests/alerts_test.yml").read_text())
        )
        assert alerts == tested


def exported_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",),
        }.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


def test_rules_and_dashboards_name_only_metrics_the_services_export() -> None:
    used = used_by_deploy()
    assert len(used) > 10
    assert used <= exported_names(), used - exported_names()


def test_the_dashboard_covers_what_operators_watch() -> None:
    dashboard = json.loads((PROMETHEUS.parent / "grafana/dashboards/cxloop.json").read_text())
    titles = " | ".join(p["title"] for p in dashboard["panels"])
    for topic in (
        "NPS",
        "CSAT",
        "CES",
        "Sample size",
        "Service times",
        "Open alerts",
        "Time to acknowledge",
        "Ingest",
        "Rejected",
        "lag",
        "Dead letters",
    ):
        assert topic.lower() in titles.lower(), topic


@pytest.mark.skipif(
    shutil.which("amtool") is None and os.environ.get("CI") != "true",
    reason="needs Debian's prometheus-alertmanager (amtool); CI installs it",
)
def test_alertmanager_config_checks() -> None:
    amtool = shutil.which("amtool")
    assert amtool is not None
    config = PROMETHEUS.parent / "alertmanager" / "alertmanager.yml"
    result = subprocess.run(
        [amtool, "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
