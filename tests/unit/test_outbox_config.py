"""A receiver secret or link template that could never be used stops start-up, by line."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from services.alerting.config import AlertingConfig, load
from services.alerting.outbox import (
    Routes,
    _retry_after,
    connections,
    in_flight_max,
    tls_context,
)
from services.cli import main
from shared.errors import ConfigError

CONFIG = """\
receivers:
  - name: oncall
    type: webhook
    url: https://hooks.example.com/cx
    secret_env: TEST_OUTBOX_SECRET
routes:
  - receiver: oncall
ticket_urls:
  zendesk: https://acme.zendesk.com/agent/tickets/{ticket_id}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alerting.yml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OUTBOX_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


class TestCheckConfig:
    def test_a_malformed_webhook_secret_is_refused_naming_the_line(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("TEST_OUTBOX_SECRET", "whsec_abc")
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, CONFIG))
        assert "alerting.yml:5: receivers.0.secret_env" in str(exc.value)
        assert "$TEST_OUTBOX_SECRET" in str(exc.value)
        assert "whsec_abc" not in str(exc.value)
        assert main(["alerting", "check-config", str(tmp_path / "alerting.yml")]) == 2
        assert "alerting.yml:5: receivers.0.secret_env" in capsys.readouterr().err

    @pytest.mark.parametrize("value", [None, "", " "])
    def test_a_secret_variable_unset_or_empty_is_refused_naming_the_line_and_variable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
    ) -> None:
        # Else the webhook would go out unsigned, and its receiver would take it or drop it.
        if value is None:
            monkeypatch.delenv("TEST_OUTBOX_SECRET")
        else:
            monkeypatch.setenv("TEST_OUTBOX_SECRET", value)
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, CONFIG))
        assert "alerting.yml:5: receivers.0.secret_env: $TEST_OUTBOX_SECRET is not set" in str(
            exc.value
        )

    def test_a_routing_key_variable_unset_is_refused_naming_the_line_and_variable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("TEST_OUTBOX_PD_KEY", raising=False)
        pager = "  - name: pager\n    type: pagerduty\n    routing_key_env: TEST_OUTBOX_PD_KEY\n"
        text = CONFIG.replace("routes:\n", pager + "routes:\n")
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, text))
        assert "alerting.yml:8: receivers.1.routing_key_env: $TEST_OUTBOX_PD_KEY is not set" in str(
            exc.value
        )
        monkeypatch.setenv("TEST_OUTBOX_PD_KEY", "R0UT1NGKEY")
        assert load(write(tmp_path, text)).receivers[1].routing_key_env == "TEST_OUTBOX_PD_KEY"

    @pytest.mark.parametrize(("key", "size"), [(b"k", 1), (b"k" * 23, 23), (b"k" * 65, 65)])
    def test_a_webhook_key_not_24_to_64_bytes_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: bytes, size: int
    ) -> None:
        secret = "whsec_" + base64.b64encode(key).decode()
        monkeypatch.setenv("TEST_OUTBOX_SECRET", secret)
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, CONFIG))
        assert f"receivers.0.secret_env: the webhook secret's key is {size} bytes" in str(exc.value)
        assert secret not in str(exc.value)

    def test_a_good_secret_passes(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TEST_OUTBOX_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        assert load(write(tmp_path, CONFIG)).receivers[0].secret_env == "TEST_OUTBOX_SECRET"

    @pytest.mark.parametrize(
        ("template", "problem"),
        [
            ("https://x.example/{ticket}", "not {ticket}"),
            ("https://x.example/{ticket_id}/{customer_id}", "not {customer_id}"),
            ("https://x.example/{ticket_id", "not a valid link template"),
            ("https://x.example/{ticket_id:d}", "without :spec or !conv"),
            ("https://x.example/{ticket_id!r}", "without :spec or !conv"),
        ],
    )
    def test_a_link_template_naming_an_unknown_field_is_refused_naming_the_line(
        self, tmp_path: Path, template: str, problem: str
    ) -> None:
        text = CONFIG.replace("https://acme.zendesk.com/agent/tickets/{ticket_id}", template)
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, text))
        assert "alerting.yml:9: ticket_urls.zendesk" in str(exc.value)
        assert problem in str(exc.value)

    @pytest.mark.parametrize(
        "url",
        [
            "http://[::1/",
            "http:///hooks",
            "http://h:99999/hooks",
            "http://h:0/hooks",
            "http://exa mple.com/x",
            "http://ho\u00a0st/x",
            "http://a..b/x",
            "http://us%3Aer:pw@h.example/x",
            "http://[fe80::1%25eth0]/x",
            "http://999.1.1.1/x",
            "http://1234/x",
        ],
    )
    def test_a_url_the_sender_cannot_parse_is_refused_naming_the_line(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
    ) -> None:
        monkeypatch.setenv("TEST_OUTBOX_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, CONFIG.replace("https://hooks.example.com/cx", url)))
        assert "alerting.yml:4: receivers.0.url: not a valid URL" in str(exc.value)


def answered(**headers: str) -> CIMultiDictProxy[str]:
    """Headers as aiohttp hands them over: case-insensitive, whatever the receiver wrote."""
    return CIMultiDictProxy(CIMultiDict(headers))


class TestReceiverUrls:
    @pytest.mark.parametrize(
        "url",
        [
            "https://hooks.slack.com/services/T000/B000/XXXXXXXX",
            "https://acme.webhook.office.com/webhookb2/a@b/IncomingWebhook/c/d",
            "https://prod-1.westus.logic.azure.com/workflows/x/triggers?sig=a%2Fb",
            "https://bücher.example/hooks",
            "http://[::1]:8080/hook",
            "http://hooks.example./x",
            "http://my_service:8000/hook",
            "https://ops:p%C3%A4ss@hooks.example/x",
        ],
    )
    def test_real_receiver_urls_load(self, url: str) -> None:
        config = AlertingConfig.model_validate(
            {"receivers": [{"name": "r", "type": "webhook", "url": url}]}
        )
        assert config.receivers[0].url == url


class TestRetryAfter:
    @pytest.mark.parametrize("value", ["²", "1.5", "-1", "١٢", "soon", "", "Wed, 02 Dec 2026"])
    def test_anything_but_digits_or_an_http_date_is_ignored(self, value: str) -> None:
        assert _retry_after(answered(**{"retry-after": value})) is None

    def test_seconds_and_an_http_date_are_honoured(self) -> None:
        assert _retry_after(answered(**{"RETRY-AFTER": "7"})) == 7.0
        soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
        delay = _retry_after(answered(**{"Retry-After": soon}))
        assert delay is not None
        assert 0 < delay <= 30


class TestMaxInFlight:
    @pytest.mark.parametrize("value", ["true", "'8'", "0", "65", "8.5"])
    def test_anything_but_a_whole_number_from_1_to_64_is_refused_naming_the_line(
        self, tmp_path: Path, value: str
    ) -> None:
        text = CONFIG.replace("    secret_env:", f"    max_in_flight: {value}\n    secret_env:")
        with pytest.raises(ConfigError) as exc:
            load(write(tmp_path, text))
        assert "alerting.yml:5: receivers.0.max_in_flight" in str(exc.value)

    def test_chat_and_paging_receivers_get_fewer_requests_at_once_unless_set(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("TEST_PD_KEY", "k" * 32)
        config = load(
            write(
                tmp_path,
                CONFIG.replace(
                    "routes:\n",
                    "  - {name: team, type: slack, url: https://hooks.slack.com/services/x}\n"
                    "  - {name: busy, type: slack, url: https://hooks.slack.com/services/y,"
                    " max_in_flight: 12}\n"
                    "  - {name: pager, type: pagerduty, routing_key_env: TEST_PD_KEY}\n"
                    "routes:\n",
                ),
            )
        )
        wanted = {"oncall": 16, "team": 4, "busy": 12, "pager": 4}
        assert {name: in_flight_max(config, name) for name in wanted} == wanted
        # A connection for each of them at once: a hung receiver never starves another.
        assert connections(config) == sum(wanted.values())


class TestRoutes:
    """How the outbox reaches each receiver URL: its proxy, and credentials in the URL."""

    @pytest.fixture(autouse=True)
    def no_proxies(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for scheme in ("http", "https", "all", "no"):
            monkeypatch.delenv(f"{scheme}_proxy", raising=False)
            monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)

    def test_a_proxy_without_a_scheme_is_http_and_all_proxy_covers_the_rest(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")
        monkeypatch.setenv("ALL_PROXY", "http://other.corp:8080")
        monkeypatch.setenv("NO_PROXY", "internal.example")
        routes = Routes.from_environment()
        assert str(routes("https://hooks.slack.com/x").proxy) == "http://proxy.corp:3128"
        assert str(routes("http://hooks.example/x").proxy) == "http://other.corp:8080"
        assert routes("http://internal.example/x").proxy is None

    @pytest.mark.parametrize(
        "value", ["http://cx:s3cret@:3128", "http://cx:s3cret@pro xy:3128", "socks5://cx:s3cret@p"]
    )
    def test_a_proxy_that_cannot_be_used_stops_start_up_naming_the_variable(
        self, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        monkeypatch.setenv("https_proxy", value)
        with pytest.raises(ConfigError, match="HTTPS_PROXY") as exc:
            Routes.from_environment()
        assert "s3cret" not in str(exc.value)

    @pytest.mark.parametrize(
        ("no_proxy", "direct", "proxied"),
        [
            ("*", ["http://a.example/x", "https://b.example/x"], []),
            ("a.example, *", ["http://b.example/x"], []),
            (
                "example.com",
                ["http://example.com/x", "http://a.example.com/x"],
                ["http://xexample.com/"],
            ),
            (".example.com", ["http://a.example.com/x"], ["http://example.com/x"]),
            ("hooks.example:8080", ["http://hooks.example:8080/x"], ["http://hooks.example/x"]),
            ("https://hooks.example", ["https://hooks.example/x"], ["http://hooks.example/x"]),
            (
                "10.0.0.9,localhost",
                ["http://10.0.0.9/x", "http://localhost/x"],
                ["http://10.0.0.1/"],
            ),
        ],
    )
    def test_no_proxy_is_read_as_httpx_read_it(
        self, monkeypatch: pytest.MonkeyPatch, no_proxy: str, direct: list[str], proxied: list[str]
    ) -> None:
        monkeypatch.setenv("ALL_PROXY", "http://proxy.corp:3128")
        monkeypatch.setenv("no_proxy", no_proxy)
        routes = Routes.from_environment()
        assert [u for u in direct if routes(u).proxy is not None] == []
        assert [u for u in proxied if routes(u).proxy is None] == []

    def test_credentials_in_a_url_are_sent_as_utf8_basic_and_never_in_the_url(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ALL_PROXY", "http://cx:pr%C3%B6xy@proxy.corp:3128")
        route = Routes.from_environment()("https://ops:p%C3%A4ss@hooks.example/x")
        assert str(route.url) == "https://hooks.example/x"
        assert route.headers == {"Authorization": "Basic " + b64("ops:päss")}
        # To an https receiver, the proxy's credentials ride on the CONNECT only.
        assert str(route.proxy) == "http://proxy.corp:3128"
        assert route.proxy_headers == {"Proxy-Authorization": "Basic " + b64("cx:pröxy")}
        # To an http one, the proxy is sent the request itself: they ride on it, and no
        # credential is ever shown in a repr (a log line, a traceback, a test's diff).
        plain = Routes.from_environment()("http://:p%E2%82%ACss@hooks.example/x")
        assert plain.headers == {
            "Authorization": "Basic " + b64(":p€ss"),
            "Proxy-Authorization": "Basic " + b64("cx:pröxy"),
        }
        assert plain.proxy_headers is None
        assert "cx" not in repr(plain) + repr(Routes.from_environment())

    def test_an_unreadable_ca_file_stops_start_up_naming_the_variable(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
        with pytest.raises(ConfigError, match="SSL_CERT_FILE cannot be read"):
            tls_context()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
