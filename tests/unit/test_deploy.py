"""The compose file agrees with the code, checked without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from shared.settings import AlertingSettings, CollectorSettings, ScorerSettings, known_env_names
from tests.helpers import load_script

ROOT = Path(__file__).parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()


LOCK_SCRIPT = "scripts/lock_requirements.py"


def _lock_script() -> Any:
    return load_script(ROOT / LOCK_SCRIPT)


class TestImage:
    def test_the_image_pins_its_base_and_every_dependency(self) -> None:
        assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim", DOCKERFILE, re.MULTILINE)
        assert "USER 10001" in DOCKERFILE
        assert "-c requirements.lock" in DOCKERFILE
        lock = (ROOT / "deploy" / "requirements.lock").read_text().split()
        pinned = {line.split("==")[0].lower().replace("_", "-") for line in lock}
        # Every package the runtime dependencies pull in (as installed here), not only the
        # direct ones: one left out is installed unpinned, at whatever version is newest.
        needed = set(_lock_script().closure())
        assert needed <= pinned, f"not pinned: {sorted(needed - pinned)}; run {LOCK_SCRIPT}"
        assert {"fastapi", "aiohttp", "yarl", "greenlet", "jinja2", "orjson"} <= needed
        assert all("==" in line for line in lock)


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


K8S = ROOT / "deploy" / "k8s"


def k8s_documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


class TestKubernetes:
    def test_every_file_is_in_the_kustomization(self) -> None:
        listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
        on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == on_disk

    def test_deployments_probe_limit_and_run_the_right_command(self) -> None:
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for doc in k8s_documents():
            by_kind.setdefault(doc["kind"], []).append(doc)
        ports = {
            "collector": CollectorSettings().port,
            "scorer": ScorerSettings().port,
            "alerting": AlertingSettings().port,
        }
        deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
        assert set(deployments) == {f"cxloop-{n}" for n in ports}
        for name, port in ports.items():
            (container,) = deployments[f"cxloop-{name}"]["spec"]["template"]["spec"]["containers"]
            assert container["args"] == [name]
            assert container["ports"] == [{"name": "http", "containerPort": port}]
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]
        assert {p["metadata"]["name"] for p in by_kind["PodDisruptionBudget"]} == set(deployments)
        (hpa,) = by_kind["HorizontalPodAutoscaler"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == "cxloop-collector"

    def test_config_maps_set_only_known_variables(self) -> None:
        config = next(
            d
            for d in k8s_documents()
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "cxloop-config"
        )
        assert set(config["data"]) <= known_env_names()
