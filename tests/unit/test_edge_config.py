"""Edge configuration that would be wrong in production is refused, or at least said aloud."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from fastapi import APIRouter

from services.collector.app import create_app as create_collector
from shared.apikeys import KeyStore
from shared.errors import ConfigError
from shared.http import build_app
from shared.settings import AuthSettings, CollectorSettings, ScorerSettings, SourceSettings

ROOT = Path(__file__).parents[2]
AUTH = AuthSettings(api_key="k" * 20)
TWILIO = SourceSettings(twilio_auth_token="twilio-token-0123456789")


def test_twilio_without_the_public_url_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="CXLOOP_COLLECTOR_PUBLIC_URL"):
        create_collector(auth=AUTH, settings=CollectorSettings(), sources=TWILIO)


def test_twilio_with_the_public_url_builds() -> None:
    settings = CollectorSettings(public_url="https://cx.example.com")
    assert create_collector(auth=AUTH, settings=settings, sources=TWILIO).title


def _build(service: str, allow: str) -> None:
    async def ready() -> dict[str, bool]:
        return {}

    build_app(
        service=service,
        description="",
        lifespan=None,
        readiness=ready,
        routers=[APIRouter()],
        keystore=KeyStore([]),
        http=ScorerSettings(forwarded_allow_ips=allow),
    )


def test_trusting_any_proxy_is_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.http.app"):
        _build("edgetest", "10.0.0.1")
        assert not caplog.records
        _build("edgetest", "10.0.0.1, *")
        _build("edgetest", "*")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "_EDGETEST_FORWARDED_ALLOW_IPS is '*'" in warnings[0]


def test_kubernetes_trusts_proxies_only_where_the_address_is_read() -> None:
    docs = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "config.yaml").read_text())
    config = next(d for d in docs if d and d["metadata"]["name"] == "cxloop-config")["data"]
    assert config["CXLOOP_SCORER_FORWARDED_ALLOW_IPS"] == ""
    assert config["CXLOOP_ALERTING_FORWARDED_ALLOW_IPS"] == ""
    assert config["CXLOOP_COLLECTOR_FORWARDED_ALLOW_IPS"] not in ("", "*")
    assert config["CXLOOP_COLLECTOR_PUBLIC_URL"].startswith("https://")


def test_compose_sets_the_public_url() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["collector"]["environment"]["CXLOOP_COLLECTOR_PUBLIC_URL"]
