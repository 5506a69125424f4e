"""Configuration errors stop a process with a message that names the variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from shared.errors import ConfigError
from shared.settings import (
    AlertingSettings,
    AuthSettings,
    CollectorSettings,
    DatabaseSettings,
    ScorerSettings,
    SourceSettings,
    check_environment,
    load,
)

ROOT = Path(__file__).parents[2]
# Misspelt on purpose by the tests that check they are refused, and test knobs' old names.
REFUSED_ON_PURPOSE = {
    "CXLOOP_KAFKA_BOOTSTRAP_SERVER",
    "CXLOOP_DATABSE_URL",
    "CXLOOP_SOAK_SECONDS",
    "CXLOOP_FUZZ_EXAMPLES",
}


def _variables_named_in_the_repository() -> set[str]:
    """Every CXLOOP_* name (not a prefix such as CXLOOP_SLA_*) in the docs, tests and code."""
    files = [ROOT / "README.md", ROOT / "DEVELOPERS.md", ROOT / "Makefile", ROOT / "cxloop"]
    for folder in ("docs", "tests", "deploy", ".ci", "services", "shared", "bench"):
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix != ".pyc"]
    named: set[str] = set()
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        named |= set(re.findall(r"\bCXLOOP_[A-Z0-9_]*[A-Z0-9]\b", text))
    return named


class TestUnknownVariables:
    def test_a_typo_is_named_with_a_suggestion(self) -> None:
        with pytest.raises(ConfigError, match=r"CXLOOP_KAFKA_BOOTSTRAP_SERVER \(did you mean "
                           r"CXLOOP_KAFKA_BOOTSTRAP_SERVERS\?\)"):  # fmt: skip
            check_environment({"CXLOOP_KAFKA_BOOTSTRAP_SERVER": "x:9092"})

    def test_known_and_foreign_variables_pass(self) -> None:
        check_environment(
            {
                "CXLOOP_KAFKA_BOOTSTRAP_SERVERS": "x:9092",
                "CXLOOP_TEST_KAFKA_BACKEND": "tansu",
                "CXLOOP_BENCH_BRIDGE": "/opt/strimzi-kafka-bridge",
                "PATH": "/bin",
            }
        )

    def test_every_variable_the_docs_and_tests_name_is_accepted(self) -> None:
        # A knob a page tells you to set (CXLOOP_TEST_SOAK_SECONDS, for the soak) must not
        # stop `cxloop up` or `cxloop config` in the same shell. Test knobs are CXLOOP_TEST_*.
        named = _variables_named_in_the_repository()
        assert "CXLOOP_TEST_SOAK_SECONDS" in named
        assert "CXLOOP_TEST_FUZZ_EXAMPLES" in named
        check_environment(dict.fromkeys(named - REFUSED_ON_PURPOSE, "1"))

    def test_a_test_knob_by_its_old_name_is_refused_with_its_new_one(self) -> None:
        with pytest.raises(ConfigError, match=r"CXLOOP_SOAK_SECONDS \(renamed CXLOOP_TEST_SOAK_"):
            check_environment({"CXLOOP_SOAK_SECONDS": "30"})

    @pytest.mark.parametrize("typo", sorted(REFUSED_ON_PURPOSE))
    def test_the_names_tests_plant_are_refused(self, typo: str) -> None:
        with pytest.raises(ConfigError, match=typo):
            check_environment({typo: "1"})


class TestValues:
    def test_a_bad_port_names_its_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CXLOOP_COLLECTOR_PORT", "eighty")
        with pytest.raises(ConfigError, match="CXLOOP_COLLECTOR_PORT"):
            load(CollectorSettings)

    def test_stripe_secrets_must_be_signing_secrets(self, monkeypatch: pytest.MonkeyPatch) -> None:
        variable = "CXLOOP_SOURCES_STRIPE_WEBHOOK_SECRETS"
        monkeypatch.setenv(variable, "whsec_new_0123456789, sk_live_oops_0123456789")
        with pytest.raises(ConfigError, match=f"{variable}: .*whsec_") as caught:
            load(SourceSettings)
        assert "sk_live_oops" not in str(caught.value)
        monkeypatch.setenv(variable, "whsec_new_0123456789, whsec_old_0123456789")
        assert len(load(SourceSettings).stripe_secrets()) == 2

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            ("CXLOOP_SOURCES_STRIPE_TOLERANCE_SECONDS", "86400"),
            ("CXLOOP_SOURCES_STRIPE_LIVEMODE", "sandbox"),
        ],
    )
    def test_stripe_bounds(
        self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
    ) -> None:
        monkeypatch.setenv(variable, value)
        with pytest.raises(ConfigError, match=variable):
            load(SourceSettings)

    def test_plain_postgres_urls_get_the_async_driver(self) -> None:
        settings = DatabaseSettings(url="postgresql://u:p@db:5432/cx")
        assert settings.sqlalchemy_url() == "postgresql+asyncpg://u:p@db:5432/cx"

    def test_the_database_password_never_shows_in_repr(self) -> None:
        settings = DatabaseSettings(url="postgresql://u:hunter2@db/cx")
        assert "hunter2" not in repr(settings)

    @pytest.mark.parametrize(
        ("variable", "cls", "field"),
        [
            ("CXLOOP_ALERTING_DASHBOARD_URL", AlertingSettings, "dashboard_url"),
            ("CXLOOP_SCORER_CONSOLE_URL", ScorerSettings, "console_url"),
        ],
    )
    def test_the_cross_links_are_http_urls(
        self, monkeypatch: pytest.MonkeyPatch, variable: str, cls: type[BaseSettings], field: str
    ) -> None:
        assert getattr(load(cls), field) is None
        monkeypatch.setenv(variable, "https://cx.example.com/scores")
        assert getattr(load(cls), field) == "https://cx.example.com/scores"
        for bad in ("javascript:alert(1)", "cx.example.com/scores", "https://", "http://h:99999/"):
            monkeypatch.setenv(variable, bad)
            with pytest.raises(ConfigError, match=variable):
                load(cls)


class TestApiKeys:
    def test_operator_keys_are_optional(self) -> None:
        # Without one, only scoped keys from `cxloop keys create` are accepted.
        assert AuthSettings(api_key=None, api_keys=None).keys() == ()

    def test_keys_can_rotate(self) -> None:
        settings = AuthSettings(api_key="a" * 20, api_keys="b" * 20 + ", " + "c" * 20)
        assert settings.keys() == ("a" * 20, "b" * 20, "c" * 20)

    def test_short_keys_are_refused(self) -> None:
        with pytest.raises(ConfigError, match="at least 16"):
            AuthSettings(api_key="short").keys()


class TestSla:
    def test_channel_specific_sla_wins_over_the_priority_default(self) -> None:
        from shared.settings import SlaSettings

        sla = SlaSettings(first_response_minutes={"urgent": 60, "chat/urgent": 5, "normal": 480})
        assert sla.minutes("first_response", "urgent", "chat") == 5
        assert sla.minutes("first_response", "urgent", "email") == 60
        assert sla.minutes("first_response", None, "chat") == 480
        assert sla.minutes("first_response", "low", "chat") is None
