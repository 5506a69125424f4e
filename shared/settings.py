"""Settings, one class per concern, read from ``CXLOOP_*`` environment variables.

Build them with :func:`load` in ``main()`` or ``create_app()``, never at import time, so
that tests can pass their own. :func:`load` turns a bad value into a
:class:`~shared.errors.ConfigError` that names the variable, and :func:`check_environment`
refuses ``CXLOOP_*`` variables that no class reads (a typo should stop the process, not
silently fall back to a default).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared import money
from shared.errors import ConfigError
from shared.events import Channel
from shared.topics import Topic, topic_name

ENV_PREFIX = "CXLOOP_"
# Variables under these prefixes belong to tools around the services (the test harness, the
# benchmarks), so one set in a shell never stops a service.
_FOREIGN_PREFIXES = ("CXLOOP_TEST_", "CXLOOP_BENCH_")
# Test knobs that were named outside that prefix once, and are refused with their new name.
_RENAMED = {
    "CXLOOP_SOAK_SECONDS": "CXLOOP_TEST_SOAK_SECONDS",
    "CXLOOP_FUZZ_EXAMPLES": "CXLOOP_TEST_FUZZ_EXAMPLES",
}


def http_url(url: str) -> str:
    """Return ``url`` if it is an absolute http or https URL naming a host; else raise
    ``ValueError`` saying why (for links shown to people: runbooks, consoles, tickets)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed lazily: an invalid port raises here
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("not an http or https URL")
    if not parts.hostname:
        raise ValueError("not a valid URL: it names no host")
    if any(c.isspace() for c in url):
        raise ValueError("not a valid URL: it holds whitespace")
    return url


HttpUrlText = Annotated[str, AfterValidator(http_url)]


class KafkaSettings(BaseSettings):
    """How to reach Kafka and name the topics (``CXLOOP_KAFKA_*``)."""

    model_config = SettingsConfigDict(env_prefix="CXLOOP_KAFKA_", extra="forbid")

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Comma-separated host:port list of brokers."
    )
    topic_prefix: str = Field(
        default="cxloop.", pattern=r"^[A-Za-z0-9._-]*$", description="Prefix of every topic name."
    )
    client_id: str = Field(default="cxloop", description="Client id reported to the broker.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, with SASL_*."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password.")
    ssl_cafile: Path | None = Field(default=None, description="CA bundle for SSL listeners.")
    idempotence: bool = Field(
        default=True,
        description="Use the idempotent producer. Tansu rejects it, so `cxloop up` turns it off.",
    )
    produce_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long a request waits for the broker's ack."
    )
    request_timeout_ms: int = Field(
        default=15_000, gt=0, description="aiokafka's timeout for one broker request."
    )
    retention_days: float = Field(
        default=7,
        gt=0,
        description="retention.ms that `cxloop topics` sets on every topic, new or existing: "
        "raw events (and erased customers' events) age out of the log after it.",
    )

    def retention_ms(self) -> int:
        """Return the topics' retention in milliseconds."""
        return int(self.retention_days * 86_400_000)

    def topic(self, topic: Topic) -> str:
        """Return the broker-side name of ``topic``."""
        return topic_name(topic, self.topic_prefix)

    def to_aiokafka_params(self) -> dict[str, Any]:
        """Return the connection keyword arguments shared by aiokafka clients."""
        params: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            params["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
        if self.sasl_mechanism is not None:
            params["sasl_mechanism"] = self.sasl_mechanism
            params["sasl_plain_username"] = self.sasl_username
            params["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return params


class DatabaseSettings(BaseSettings):
    """How to reach Postgres (``CXLOOP_DATABASE_*``)."""

    model_config = SettingsConfigDict(env_prefix="CXLOOP_DATABASE_", extra="forbid")

    url: SecretStr = Field(
        default=SecretStr("postgresql+asyncpg://cxloop@127.0.0.1:5432/cxloop"),
        description="SQLAlchemy URL; postgresql:// is read as postgresql+asyncpg://.",
    )
    pool_size: int = Field(default=10, ge=1, description="Connections per service process.")
    connect_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long to wait for a new connection."
    )
    parallel_setup_cost: int = Field(
        default=10_000,
        ge=0,
        description="Postgres's parallel_setup_cost for cxloop's sessions. On 2 cores busy "
        "with the pipeline, Postgres's default (1000) planned two parallel workers for a 30-day "
        "score, and it took 16-20 ms against 8-9 ms without them; 10000 leaves parallel plans "
        "to far bigger queries. Set 1000 to plan as Postgres does by default, on a database "
        "with cores to spare.",
    )

    @field_validator("url")
    @classmethod
    def _asyncpg_driver(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                url = "postgresql+asyncpg://" + url.removeprefix(plain)
        if not url.startswith("postgresql+asyncpg://"):
            raise ValueError("must be a postgresql:// or postgresql+asyncpg:// URL")
        return SecretStr(url)

    def sqlalchemy_url(self) -> str:
        """Return the URL with its secret, for the engine only; never log it."""
        return self.url.get_secret_value()


class AuthSettings(BaseSettings):
    """Operator keys, accepted as ``Authorization: Bearer <key>`` (``CXLOOP_API_KEY[S]``).

    Operator keys may do everything; scoped keys live hashed in Postgres (``cxloop keys``).
    """

    model_config = SettingsConfigDict(env_prefix="CXLOOP_", extra="forbid")

    api_key: SecretStr | None = Field(default=None, description="One accepted API key.")
    api_keys: SecretStr | None = Field(
        default=None, description="More accepted keys, comma-separated (for rotation)."
    )
    key_cache_seconds: float = Field(
        default=30.0, ge=0, description="How long a scoped key's lookup is cached (revocation lag)."
    )

    def keys(self) -> tuple[str, ...]:
        """Return the operator keys; raise ``ConfigError`` for one too short to be safe."""
        raw = [self.api_key.get_secret_value()] if self.api_key else []
        if self.api_keys:
            raw += self.api_keys.get_secret_value().split(",")
        keys = tuple(k.strip() for k in raw if k.strip())
        if any(len(k) < 16 for k in keys):
            raise ConfigError("CXLOOP_API_KEY: every key must be at least 16 characters")
        return keys


class PrivacySettings(BaseSettings):
    """Keyed hashing of personal identifiers (``CXLOOP_PRIVACY_*``); every service needs it."""

    model_config = SettingsConfigDict(env_prefix="CXLOOP_PRIVACY_", extra="forbid")

    hash_key: SecretStr = Field(
        min_length=16,
        description="Required. Secret of the HMAC-SHA256 that phone numbers, IVR caller ids "
        "and erased customer ids are kept as; the same in every service, never changed "
        "(`cxloop up` generates one).",
    )

    def key(self) -> bytes:
        """Return the HMAC key; never log it."""
        return self.hash_key.get_secret_value().encode("utf-8")


class LogSettings(BaseSettings):
    """Logging (``CXLOOP_LOG_*``)."""

    model_config = SettingsConfigDict(env_prefix="CXLOOP_LOG_", extra="forbid")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        description="DEBUG, INFO, WARNING or ERROR. DEBUG adds one line per HTTP request.",
    )
    format: Literal["text", "json"] = Field(
        default="text",
        description="text, or json: one object per line (time, level, service, logger, "
        "message, exception).",
    )


class HttpSettings(BaseSettings):
    """Where one service listens; each service subclasses it with its own prefix and port."""

    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=0, ge=0, le=65535, description="Port to bind.")
    max_body_bytes: int = Field(
        default=64 * 1024, gt=0, description="Largest request body accepted (413 above)."
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Proxies whose X-Forwarded-For/Forwarded is believed: comma-separated "
        "addresses or networks, * for any, empty for none (uvicorn's convention).",
    )


class PageSettings(BaseSettings):
    """Mixed into a service that serves pages (the scorer's dashboard, the console)."""

    session_hours: float = Field(
        default=12,
        gt=0,
        le=24 * 30,
        description="How long a browser stays signed in after exchanging its API key.",
    )


DEFAULT_REASON_CODES = (
    "price", "product_quality", "delivery_speed", "wait_time", "agent_knowledge",
    "agent_attitude", "ease_of_use", "website", "app", "billing", "communication", "other",
)  # fmt: skip

CommaList = Annotated[tuple[str, ...], NoDecode]


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def usable_cpus() -> int:
    """Return the CPUs this process may use: those its affinity allows, fewer when its
    cgroup (v2) has a CPU quota (``cpu.max``, rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        group = Path("/proc/self/cgroup").read_text().partition("0::")[2].strip()
        quota, period = Path(f"/sys/fs/cgroup{group}/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def max_workers() -> int:
    """Return the most collector workers this process may run: 4 per usable CPU."""
    return 4 * usable_cpus()


class CollectorSettings(HttpSettings):
    """The collector (``CXLOOP_COLLECTOR_*``)."""

    model_config = SettingsConfigDict(env_prefix="CXLOOP_COLLECTOR_", extra="forbid")

    port: int = Field(default=8000, ge=0, le=65535, description="Port to bind.")
    max_body_bytes: int = Field(
        default=64 * 1024, gt=0, description="Largest single-event body accepted."
    )
    max_batch_bytes: int = Field(default=1024 * 1024, gt=0, description="Largest batch body.")
    max_batch_items: int = Field(default=500, ge=1, description="Most items in one batch.")
    reason_codes: CommaList = Field(
        default=DEFAULT_REASON_CODES,
        description="NPS+ reason codes accepted, comma-separated.",
    )
    locations: CommaList = Field(
        default=(), description="Accepted segment locations, comma-separated; empty accepts any."
    )
    products: CommaList = Field(
        default=(), description="Accepted segment products, comma-separated; empty accepts any."
    )
    business_units: CommaList = Field(
        default=(), description="Accepted business units, comma-separated; empty accepts any."
    )
    idempotency_window_days: float = Field(
        default=7, gt=0, description="How long a repeat is answered `duplicate` without producing."
    )
    fatigue_days: float = Field(
        default=30,
        ge=0,
        description="An invitation within this many days of the last is suppressed.",
    )
    invitation_retention_days: float = Field(
        default=90,
        gt=0,
        description="Invitations (and the phone hashes they hold) are purged this many days "
        "after they were created; none is answered after that.",
    )
    widget_rate_per_minute: float = Field(
        default=30,
        gt=0,
        description="Widget answers allowed per client address per minute, per "
        "collector process (N workers or instances allow N times this).",
    )
    widget_key_rate_per_minute: float = Field(
        default=6000,
        gt=0,
        description="Widget answers allowed per publishable key per minute, per "
        "collector process (N workers or instances allow N times this).",
    )
    broker_wait_seconds: float = Field(
        default=5.0, ge=0, description="How long start-up waits for the broker before serving 503s."
    )
    public_url: str | None = Field(
        default=None,
        description="The collector's public base URL (behind a proxy), for webhook signatures.",
    )
    workers: int = Field(
        default=1,
        description="Collector processes serving the one port (at most 4 per usable CPU: "
        "affinity and cgroup CPU quota); settings, "
        "key cache, producer and widget rate limits are per process; /metrics sums their "
        "counters.",
    )

    @field_validator("workers")
    @classmethod
    def _workers_in_range(cls, value: int) -> int:
        most = max_workers()
        if not 1 <= value <= most:
            raise ValueError(f"must be between 1 and {most} (4 per usable CPU), got {value}")
        return value

    _split_lists = field_validator(
        "reason_codes", "locations", "products", "business_units", mode="before"
    )(_split)


class IvrQuestion(BaseModel):
    """Which metric an IVR question measures."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["nps", "csat", "ces"]
    scale: int | None = None


DEFAULT_IVR_SURVEYS: dict[str, dict[str, IvrQuestion]] = {
    "default": {
        "survey_result_1": IvrQuestion(metric="nps"),
        "survey_result_2": IvrQuestion(metric="csat"),
    }
}


class SourceSettings(BaseSettings):
    """Secrets of the vendor adapters (``CXLOOP_SOURCES_*``); an unset one disables its adapter."""

    model_config = SettingsConfigDict(env_prefix="CXLOOP_SOURCES_", extra="forbid")

    twilio_auth_token: SecretStr | None = Field(
        default=None, description="Twilio auth token: checks X-Twilio-Signature on SMS webhooks."
    )
    zendesk_signing_secret: SecretStr | None = Field(
        default=None, description="Zendesk webhook signing secret: checks its signature."
    )
    stripe_webhook_secrets: SecretStr | None = Field(
        default=None,
        description="Stripe webhook signing secrets (whsec_…), comma-separated (several while "
        "rotating): check Stripe-Signature on /v1/sources/stripe.",
    )
    stripe_tolerance_seconds: float = Field(
        default=300,
        gt=0,
        le=3600,
        description="A Stripe-Signature timestamp further than this from now is refused as a "
        "replay (at most 3600).",
    )
    stripe_livemode: Literal["live", "test"] = Field(
        default="live",
        description="Which Stripe mode's events become orders (live or test); the other "
        "mode's are acknowledged and ignored.",
    )
    stripe_connect_accounts: CommaList = Field(
        default=(),
        description="Connected accounts (acct_…) whose events (carrying `account`) become "
        "orders, comma-separated; other Connect events are ignored.",
    )
    stripe_customer_prefix: str = Field(
        default="stripe:",
        max_length=64,
        pattern=r"^[^\x00]*$",
        description="Put before a Stripe customer id (cus_…) used as the cxloop customer id "
        "(erase such a customer as `stripe:cus_…`); not before metadata.cxloop_customer_id. "
        "Empty: none.",
    )
    stripe_default_channel: Channel = Field(
        default=Channel.WEB,
        description="Channel of a Stripe payment whose metadata.cxloop_channel is absent.",
    )
    ivr_surveys: dict[str, dict[str, IvrQuestion]] = Field(
        default=DEFAULT_IVR_SURVEYS,
        description="JSON: survey id → question → {metric, scale}; `default` when none is named.",
    )

    _split_accounts = field_validator("stripe_connect_accounts", mode="before")(_split)

    @field_validator("stripe_webhook_secrets")
    @classmethod
    def _stripe_signing_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        raw = value.get_secret_value().split(",")
        # The message never quotes a secret.
        if any(not s.strip().startswith("whsec_") for s in raw if s.strip()):
            raise ValueError(
                "every secret must be an endpoint's signing secret, starting with whsec_ "
                "(Stripe dashboard → Webhooks → the endpoint → Signing secret), not an API key"
            )
        return value

    def stripe_secrets(self) -> tuple[str, ...]:
        """Return the Stripe signing secrets; never log them."""
        if self.stripe_webhook_secrets is None:
            return ()
        raw = self.stripe_webhook_secrets.get_secret_value().split(",")
        return tuple(secret.strip() for secret in raw if secret.strip())


class SlaSettings(BaseSettings):
    """Service-level agreements for tickets (``CXLOOP_SLA_*``), by ticket priority."""

    model_config = SettingsConfigDict(env_prefix="CXLOOP_SLA_", extra="forbid")

    first_response_minutes: dict[str, float] = Field(
        default={"urgent": 60, "high": 240, "normal": 480, "low": 1440},
        description="JSON: first-response SLA in minutes by priority, or by channel/priority "
        '(e.g. "chat/urgent": 5), which wins. No priority given: normal.',
    )
    resolution_minutes: dict[str, float] = Field(
        default={"urgent": 240, "high": 1440, "normal": 4320, "low": 10080},
        description="JSON: resolution SLA in minutes, keyed as for first response.",
    )

    def minutes(self, kind: str, priority: str | None, channel: str | None = None) -> float | None:
        """Return the SLA of ``kind`` (first_response or resolution) for a ticket."""
        table = self.first_response_minutes if kind == "first_response" else self.resolution_minutes
        priority = priority or "normal"
        return table.get(f"{channel}/{priority}", table.get(priority))


def _batch_max_records(default: int) -> Any:
    return Field(
        default=default, ge=1, le=100_000, description="Most records applied in one transaction."
    )


class ConsumerSettings(HttpSettings):
    """A consuming service: its HTTP API and its consumer group."""

    group_id: str = Field(default="", description="Kafka consumer group.")
    batch_max_records: int = _batch_max_records(2000)
    batch_timeout_ms: int = Field(
        default=200, ge=1, description="Longest wait for a batch to fill."
    )
    commit_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Longest wait for an offset commit."
    )
    session_timeout_ms: int = Field(
        default=10_000, ge=1000, description="Consumer-group session timeout."
    )
    heartbeat_interval_ms: int = Field(
        default=3_000, ge=100, description="Consumer-group heartbeat interval."
    )


class ScorerSettings(ConsumerSettings, PageSettings):
    """The scorer (``CXLOOP_SCORER_*``)."""

    model_config = SettingsConfigDict(env_prefix="CXLOOP_SCORER_", extra="forbid")

    port: int = Field(default=8001, ge=0, le=65535, description="Port to bind.")
    group_id: str = Field(default="cxloop-scorer", description="Kafka consumer group.")
    # Twice alerting's: on a backlog, 4000 a transaction stored about 10% more answers a
    # second than 2000 for 10% less CPU (fewer commits and bucket merges per answer), at
    # about 40 MiB more at the peak (bench/notes.md, "Batch size").
    batch_max_records: int = _batch_max_records(4000)
    min_n: int = Field(
        default=30, ge=1, description="Below this sample size a score is flagged insufficient."
    )
    gauge_interval_seconds: float = Field(
        default=30, gt=0, description="How often the score gauges on /metrics are recomputed."
    )
    value_refresh_seconds: float = Field(
        default=300,
        gt=0,
        description="How often each scorer process recomputes its snapshot of GET /v1/value "
        "over the 30d, 90d and 365d windows (no filters, no group_by), which those requests "
        "and the value gauges read.",
    )
    batches_in_flight: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Batches applied at once, each in its own transaction (offsets still "
        "commit in order).",
    )
    console_url: HttpUrlText | None = Field(
        default=None,
        description="The alerting service's on-call console (http or https), linked from the "
        "scores pages.",
    )
    value_currencies: CommaList = Field(
        default=("JPY", "USD"),
        max_length=20,
        description="ISO 4217 currencies of the revenue-at-risk and CLV gauges on /metrics, "
        "comma-separated (at most 20: each is a label value).",
    )

    @field_validator("value_currencies", mode="before")
    @classmethod
    def _currencies(cls, value: Any) -> Any:
        codes = _split(value)
        if isinstance(codes, tuple | list):
            codes = tuple(dict.fromkeys(money.check_currency(c) for c in codes))
        return codes


class AlertingSettings(ConsumerSettings, PageSettings):
    """The alerting service (``CXLOOP_ALERTING_*``)."""

    model_config = SettingsConfigDict(env_prefix="CXLOOP_ALERTING_", extra="forbid")

    port: int = Field(default=8002, ge=0, le=65535, description="Port to bind.")
    group_id: str = Field(default="cxloop-alerting", description="Kafka consumer group.")
    timer_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often overdue SLA deadlines are looked for."
    )
    config_path: Path | None = Field(
        default=None,
        description="YAML file of receivers and routes (see `cxloop alerting check-config`).",
    )
    notification_max_age_hours: float = Field(
        default=24,
        gt=0,
        description="Retry budget: a notification still undelivered this long after it became "
        "due (queued, or released when its silence ended) is marked failed.",
    )
    notification_timeout_seconds: float = Field(
        default=10, gt=0, description="How long one receiver may take to answer one request."
    )
    dashboard_url: HttpUrlText | None = Field(
        default=None,
        description="The scorer's scores dashboard (http or https), linked from the on-call "
        "console.",
    )
    touch_retention_days: int = Field(
        default=90,
        gt=0,
        description="A customer's answers and ticket events shown on alert pages are deleted "
        "this many days after they occurred (checked hourly).",
    )
    order_retention_days: int = Field(
        default=400,
        ge=366,
        description="A customer's orders (for the value over the 365 days up to an answer "
        "that alerts carry) are deleted this "
        "many days after they were completed (checked hourly): a year, and room for answers "
        "that arrive late.",
    )


class StackSettings(BaseSettings):
    """The embedded local stack started by ``cxloop up`` (``CXLOOP_STACK_*``)."""

    model_config = SettingsConfigDict(env_prefix="CXLOOP_STACK_", extra="forbid")

    data_dir: Path | None = Field(
        default=None,
        description="Where Postgres keeps its data between runs "
        "(default ~/.local/share/cxloop, or /var/lib/cxloop as root).",
    )
    broker: Literal["tansu", "apache"] = Field(
        default="tansu",
        description="tansu needs nothing; apache runs Apache Kafka (needs java and mvn).",
    )
    postgres_port: int = Field(default=15432, ge=1, le=65535, description="Postgres's port.")
    kafka_port: int = Field(default=19092, ge=1, le=65535, description="The broker's port.")


SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    KafkaSettings,
    DatabaseSettings,
    AuthSettings,
    PrivacySettings,
    LogSettings,
    CollectorSettings,
    SourceSettings,
    SlaSettings,
    ScorerSettings,
    AlertingSettings,
    StackSettings,
)

S = TypeVar("S", bound=BaseSettings)


def env_names(cls: type[BaseSettings]) -> list[str]:
    """Return the environment variable names that ``cls`` reads."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    return [f"{prefix}{name}".upper() for name in cls.model_fields]


def known_env_names() -> set[str]:
    """Return every ``CXLOOP_*`` variable some settings class reads."""
    return {name for cls in SETTINGS_CLASSES for name in env_names(cls)}


def check_twilio_url(collector: CollectorSettings, sources: SourceSettings) -> None:
    """Raise ConfigError when Twilio is configured without the URL it calls.

    Twilio signs the URL it was told to call; behind a proxy or ingress that is not the URL
    the collector sees, so guessing it would refuse every genuine webhook, or trust
    forwarded host and scheme headers to rebuild it.
    """
    if sources.twilio_auth_token is not None and not collector.public_url:
        raise ConfigError(
            "invalid configuration: CXLOOP_COLLECTOR_PUBLIC_URL: required when "
            "CXLOOP_SOURCES_TWILIO_AUTH_TOKEN is set (the base URL Twilio calls, which its "
            "signature covers)"
        )


def check_collector(collector: CollectorSettings) -> None:
    """Raise ``ConfigError`` for any setting that would stop a collector worker building
    its app: what the parent of several workers checks before it starts them, without
    importing the app."""
    load(KafkaSettings)
    load(DatabaseSettings)
    load(AuthSettings).keys()
    check_twilio_url(collector, load(SourceSettings))
    load(PrivacySettings).key()


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise ``ConfigError`` naming any ``CXLOOP_*`` variable that no settings class reads."""
    environ = os.environ if environ is None else environ
    known = known_env_names()
    unknown = sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX)
        and name not in known
        and not name.startswith(_FOREIGN_PREFIXES)
    )
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            if name in _RENAMED:
                hints.append(f"{name} (renamed {_RENAMED[name]})")
            else:
                hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise ConfigError("unknown configuration variable: " + ", ".join(hints))


def load(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment (and ``overrides``); a bad value names its variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        problems = [
            f"{prefix}{'_'.join(str(p) for p in err['loc'])}".upper() + f": {err['msg']}"
            for err in exc.errors()
        ]
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def describe(
    classes: Iterable[type[BaseSettings]] = SETTINGS_CLASSES,
) -> list[tuple[str, str, str]]:
    """Return (variable, default, description) rows for the README's configuration table."""
    rows = []
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, field in cls.model_fields.items():
            default = None if field.is_required() else field.default
            if isinstance(default, SecretStr):
                default = "(secret)"
            elif isinstance(default, tuple):
                default = ",".join(default) or None
            elif isinstance(default, dict):
                default = json.dumps(default, default=lambda m: m.model_dump(exclude_none=True))
            rows.append(
                (
                    f"{prefix}{name}".upper(),
                    "" if default is None else str(default),
                    field.description or "",
                )
            )
    return rows


def markdown_table(classes: Iterable[type[BaseSettings]] = SETTINGS_CLASSES) -> str:
    """Return the configuration table that README.md embeds (``cxloop config``)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for variable, default, description in describe(classes):
        shown = f"`{default}`" if default else "—"
        lines.append(f"| `{variable}` | {shown} | {description} |")
    return "\n".join(lines)
