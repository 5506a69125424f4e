"""The compose file agrees with the code, checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from shared.settings import AlertingSettings, CollectorSettings, ScorerSettings, known_env_names

ROOT = Path(__file__).parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()


class TestCompose:
    def test_every_cxloop_variable_is_one_the_services_read(self) -> None:
        used = set(re.findall(r"\b(CXLOOP_[A-Z0-9_]+)\b", DOCKERFILE))
        for service in COMPOSE["services"].values():
            used |= {k for k in service.get("environment", {}) if k.startswith("CXLOOP_")}
        assert used
        assert used <= known_env_names()

    def test_ports_and_healthchecks_match_the_services(self) -> None:
        defaults = {
            "collector": CollectorSettings().port,
            "scorer": ScorerSettings().port,
            "alerting": AlertingSettings().port,
        }
        for name, port in defaults.items():
            service = COMPOSE["services"][name]
            assert service["command"] == [name]
            assert service["ports"] == [f"{port}:{port}"]
            assert f"http://127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"])

    def test_services_wait_for_migrations_and_topics(self) -> None:
        assert "cxloop migrate" in " ".join(COMPOSE["services"]["init"]["command"])
        for name in ("collector", "scorer", "alerting"):
            depends = COMPOSE["services"][name]["depends_on"]
            assert depends["init"]["condition"] == "service_completed_successfully"
