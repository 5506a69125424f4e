"""Receivers and routes, from a YAML file shaped like Alertmanager's.

::

    receivers:
      - name: oncall
        type: webhook            # webhook | slack | pagerduty | alertmanager
        url: https://hooks.example.com/cx
        secret_env: ONCALL_WEBHOOK_SECRET   # its Standard Webhooks secret (whsec_…)
      - name: pager
        type: pagerduty
        routing_key_env: PAGERDUTY_ROUTING_KEY
    routes:                      # first match wins, unless `continue: true`
      - match: {severity: critical}
        receiver: pager
        continue: true
      - receiver: oncall         # no match: everything
    escalation:                  # nobody acknowledged within 15 minutes: tell the pager
      after_minutes: 15
      receiver: pager
    runbook_url: https://wiki.example.com/cx-alerts   # or per rule: rules.detractor.runbook_url
    ticket_urls:                 # per ticket source (`default` for any other): the ticket's page
      zendesk: https://acme.zendesk.com/agent/tickets/{ticket_id}
    high_value:                  # revenue per currency in the 12 months (365 days) up to an
      JPY: 100000                # answer that makes its alert critical (label high_value:
      USD: "1000.50"             # "true", for routes and silences); decimals in quotes

Secrets are named by environment variable, never written in the file. Errors name the line.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import string
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import yaml
import yarl
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from services.alerting.rules import DropRule, Rules
from shared.errors import ConfigError
from shared.money import check_currency, parse_amount, to_minor
from shared.settings import HttpUrlText, http_url


def label(value: Any) -> str:
    """An alert's field as routes and silences compare it: a boolean is ``true``/``false``
    (as YAML and JSON write it), anything else its ``str``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# The alert fields that are booleans: a route or silence matches them as "true"/"false".
BOOLEAN_LABELS = frozenset({"high_value"})


class AtKey(ValueError):
    """A mistake in one key of a mapping: ``load`` names that key and its line."""

    def __init__(self, key: object, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def boolean_label(key: str, value: object) -> str:
    """The value a route or silence matches boolean label ``key`` with: ``true``/``false``
    from a boolean or from that text in any case; anything else raises ``AtKey``."""
    if isinstance(value, bool):
        return label(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower()
    raise AtKey(key, "must be true or false")


def _thresholds(raw: object) -> dict[str, Decimal]:
    """``high_value`` as {currency: amount}: ISO 4217 codes (any case), positive amounts
    with no more decimals than the currency has, each a YAML integer or a string (a float
    is refused: YAML has rounded it already). Errors name the key (``AtKey``)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("must map currency codes to amounts, e.g. {JPY: 100000, USD: 1000}")
    thresholds: dict[str, Decimal] = {}
    for key, amount in raw.items():
        try:
            code = check_currency(key)
        except ValueError as exc:
            raise AtKey(key, str(exc)) from None
        if code in thresholds:
            raise AtKey(key, f"{code} is given twice")
        if isinstance(amount, float):
            # 1000.0000000000000001 would be read as 1000: the digits written are gone.
            raise AtKey(
                key,
                f'write the amount in quotes, e.g. {code}: "1000.50" (unquoted, YAML reads '
                "a number with a decimal point as a float, which may round it)",
            )
        try:
            value = parse_amount(amount)
            to_minor(value, code)
        except ValueError as exc:
            raise AtKey(key, str(exc)) from None
        if value <= 0:
            raise AtKey(key, "the threshold must be above zero")
        thresholds[code] = value
    return thresholds


def webhook_key(secret: str) -> bytes:
    """Return the signing key of a Standard Webhooks secret (``whsec_`` and base64).

    Raises ``ValueError`` without repeating the secret when it is not one.
    """
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ValueError("the webhook secret is not whsec_ followed by base64")
    if not 24 <= len(key) <= 64:
        # Standard Webhooks: a key of 24 to 64 bytes (a short one is guessed offline).
        raise ValueError(f"the webhook secret's key is {len(key)} bytes, not 24 to 64")
    return key


def _from_env(name: str) -> str:
    """Return environment variable ``name``; refuse, naming it (never its value), if unset."""
    value = os.environ.get(name, "") if name else ""
    if not value.strip():
        raise ValueError(f"${name} is not set or is empty" if name else "names no variable")
    return value


def _ticket_template(template: str) -> str:
    try:
        parsed = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template)]
    except ValueError as exc:
        raise ValueError(f"not a valid link template: {exc}") from None
    fields = {name for name, _, _ in parsed if name is not None}
    if any(spec or conv for name, spec, conv in parsed if name is not None):
        # A spec (:d) or conversion (!r) would fail or change the link at send time.
        raise ValueError("a link template may use {ticket_id} only as is, without :spec or !conv")
    unknown = sorted(fields - {"ticket_id"})
    if unknown:
        raise ValueError(f"a link template may use only {{ticket_id}}, not {{{unknown[0]}}}")
    if "ticket_id" not in fields:
        raise ValueError("a link template must hold {ticket_id}")
    http_url(template.format(ticket_id="T-1"))
    return template


TicketTemplate = Annotated[str, AfterValidator(_ticket_template)]


# A host name as name servers know it (IDNA-encoded by yarl): labels of 1 to 63 letters,
# digits, '-' (not first or last) and '_' (service names in compose and Kubernetes).
_HOSTNAME = re.compile(
    r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?", re.ASCII
)


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (without brackets or a zone)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def url_problem(url: str) -> str | None:
    """What stops the outbox's client (aiohttp) from sending to ``url`` as written, or None.

    Checked when the config loads (and on proxies at start-up), so that no notification
    fails on it later, again and again until its retry budget is spent. Never quotes the
    URL, which may hold credentials.
    """
    if any(c.isspace() or ord(c) < 32 or c == "\x7f" for c in url):
        # yarl would drop a tab or a newline and send to another host than written.
        return "it has a space or a control character"
    try:
        parsed = yarl.URL(url)
        host, port = parsed.raw_host, parsed.port
    except ValueError as exc:
        return str(exc)
    if not host:
        return "it names no host"
    if port is not None and not 1 <= port <= 65535:
        return "its port is not from 1 to 65535"
    if "%" in host:
        return "its host has a zone or a % in it"
    numeric = host.rstrip(".").replace(".", "").isdigit()
    if not is_ip(host) and (numeric or not _HOSTNAME.fullmatch(host)):
        return (
            "its host is neither an IP address nor a name of letters, digits, '-' and '_' "
            "in labels of 1 to 63"
        )
    if parsed.user is not None and ":" in parsed.user:
        # Basic credentials are "user:password": such a user cannot be sent.
        return "its user name has a ':' in it"
    return None


class Receiver(BaseModel):
    """Where notifications go."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: Literal["webhook", "slack", "pagerduty", "alertmanager"]
    url: str = Field(default="", pattern=r"^(https?://.+)?$")
    secret_env: str | None = None
    routing_key_env: str | None = None
    # Requests in flight to this receiver at once, per instance (None: its type's default).
    max_in_flight: StrictInt | None = Field(default=None, ge=1, le=64)

    @field_validator("url")
    @classmethod
    def _url_parses(cls, url: str) -> str:
        if url and (problem := url_problem(url)) is not None:
            raise ValueError(f"not a valid URL: {problem}")
        return url

    @field_validator("secret_env")
    @classmethod
    def _secret_is_whsec(cls, name: str | None) -> str | None:
        # Checked when the file loads, so that no notification goes out unsigned later.
        if name is not None:
            try:
                webhook_key(_from_env(name))
            except ValueError as exc:
                raise ValueError(f"{exc} (in ${name})") from None
        return name

    @field_validator("routing_key_env")
    @classmethod
    def _routing_key_set(cls, name: str | None) -> str | None:
        if name is not None:
            _from_env(name)
        return name

    @model_validator(mode="after")
    def _complete(self) -> Receiver:
        if self.type == "pagerduty":
            if not self.routing_key_env:
                raise ValueError("a pagerduty receiver needs routing_key_env")
            self.url = self.url or "https://events.pagerduty.com/v2/enqueue"
        elif not self.url:
            raise ValueError(f"a {self.type} receiver needs a url")
        return self

    def secret(self, name: str | None) -> str | None:
        """Return the secret in environment variable ``name``."""
        return os.environ.get(name) if name else None


class Route(BaseModel):
    """Which alerts go to a receiver: every ``match`` label must equal the alert's."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    receiver: str
    match: dict[str, str] = Field(
        default_factory=dict, description="Labels (alert fields) and the values they must equal."
    )
    continue_: bool = Field(default=False, alias="continue")
    group_by: list[str] = Field(
        default_factory=list, description="Alerts equal in these fields are announced together."
    )
    group_wait_seconds: float = Field(
        default=0, ge=0, le=3600, description="How long a new group waits for more alerts."
    )

    @field_validator("match", mode="before")
    @classmethod
    def _booleans_as_labels(cls, match: object) -> object:
        # `high_value: true` in YAML is a boolean; the label is the text "true". Any other
        # label is text: `location: ON` (a YAML boolean) is refused by the type, naming it.
        if isinstance(match, dict):
            return {k: boolean_label(k, v) if k in BOOLEAN_LABELS else v for k, v in match.items()}
        return match


class Escalation(BaseModel):
    """Who hears of an alert nobody acknowledged in time."""

    model_config = ConfigDict(extra="forbid")

    after_minutes: float = Field(gt=0)
    receiver: str


class AlertingConfig(BaseModel):
    """Receivers, routes, escalation and the runbook linked from every alert."""

    model_config = ConfigDict(extra="forbid")

    receivers: list[Receiver] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    escalation: Escalation | None = None
    rules: Rules = Field(default_factory=Rules)
    score_drops: list[DropRule] = Field(default_factory=list)
    score_drop_every_minutes: float = Field(default=15, gt=0)
    runbook_url: HttpUrlText | None = Field(
        default=None, description="The runbook of every alert whose rule names none."
    )
    ticket_urls: dict[str, TicketTemplate] = Field(
        default_factory=dict,
        description="Per ticket source, a link template, e.g. "
        "{zendesk: 'https://acme.zendesk.com/agent/tickets/{ticket_id}'}.",
    )
    high_value: Annotated[dict[str, Decimal], BeforeValidator(_thresholds)] = Field(
        default_factory=dict,
        description="Per currency, the revenue in the 12 months (365 days) up to the answer "
        "at which a detractor, low-CSAT or high-effort alert becomes critical, e.g. "
        '{JPY: 100000, USD: "1000.50"} (an integer or a decimal string).',
    )

    def thresholds(self) -> dict[str, int]:
        """``high_value`` in each currency's minor units."""
        return {code: to_minor(amount, code) for code, amount in self.high_value.items()}

    def links(self, alert: dict[str, Any]) -> list[dict[str, str]]:
        """Return the links an alert's notifications carry: its ticket and its runbook."""
        links = []
        ticket = self.ticket_url(alert.get("ticket_source"), alert.get("ticket_id"))
        if ticket:
            links.append({"href": ticket, "text": "Ticket"})
        runbook = self.runbook_for(alert)
        if runbook:
            links.append({"href": runbook, "text": "Runbook"})
        return links

    def ticket_url(self, source: str | None, ticket_id: str | None) -> str | None:
        """Return the page of ticket ``ticket_id`` in system ``source`` (its template, else
        the ``default`` one), or None when no template applies."""
        template = self.ticket_urls.get(source or "") or self.ticket_urls.get("default")
        if not template or not ticket_id:
            return None
        return template.format(ticket_id=quote(ticket_id, safe=""))

    def runbook_for(self, alert: dict[str, Any]) -> str | None:
        """Return the runbook of an alert: its rule's, else the config's."""
        rule = alert.get("rule")
        own: str | None = None
        if rule in Rules.model_fields:
            own = getattr(self.rules, str(rule)).runbook_url
        elif rule == "score_drop":
            key = str(alert.get("dedupe_key") or "")
            own = next(
                (
                    d.runbook_url
                    for d in self.score_drops
                    if d.runbook_url
                    and (key == d.key_prefix() if d.by is None else key.startswith(d.key_prefix()))
                ),
                None,
            )
        return own or self.runbook_url

    @model_validator(mode="after")
    def _routes_name_receivers(self) -> AlertingConfig:
        names = [r.name for r in self.receivers]
        if len(names) != len(set(names)):
            raise ValueError("receiver names must be unique")
        for route in self.routes:
            if route.receiver not in names:
                raise ValueError(f"route names receiver {route.receiver!r}, which is not defined")
        if self.escalation and self.escalation.receiver not in names:
            raise ValueError(
                f"escalation names receiver {self.escalation.receiver!r}, which is not defined"
            )
        return self

    def receiver(self, name: str) -> Receiver | None:
        """Return the receiver called ``name``, if it is still configured."""
        return next((r for r in self.receivers if r.name == name), None)

    def route(self, labels: dict[str, Any]) -> list[str]:
        """Return the receivers an alert with ``labels`` goes to, in route order."""
        return [route.receiver for route, _ in self.matches(labels)]

    def matches(self, labels: dict[str, Any]) -> list[tuple[Route, str | None]]:
        """Return the routes an alert takes, each with its group key (None: ungrouped)."""
        chosen: list[tuple[Route, str | None]] = []
        for index, route in enumerate(self.routes):
            if all(label(labels.get(k)) == v for k, v in route.match.items()):
                if route.receiver not in [r.receiver for r, _ in chosen]:
                    grouped = route.group_wait_seconds > 0 and self._groupable(route.receiver)
                    values = ",".join(f"{k}={label(labels.get(k))}" for k in route.group_by)
                    chosen.append(
                        (route, f"{index}:{route.receiver}:{values}" if grouped else None)
                    )
                if not route.continue_:
                    break
        return chosen

    def _groupable(self, name: str) -> bool:
        # PagerDuty deduplicates per alert by dedup_key; it has no use for our groups.
        receiver = self.receiver(name)
        return receiver is not None and receiver.type != "pagerduty"


def _line(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The line of the node at ``loc``, or of the deepest one found on the way."""
    for part in loc:
        found: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if k.value == part), None)
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            found = node.value[part]
        if found is None:
            break
        node = found
    return None if node is None else node.start_mark.line + 1


def load(path: Path) -> AlertingConfig:
    """Read and validate the file; a mistake raises ``ConfigError`` naming its line."""
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        tree = yaml.compose(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    try:
        return AlertingConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, AtKey):
                loc, msg = (*loc, str(cause.key)), cause.message
            line = _line(tree, loc)
            field = ".".join(str(p) for p in loc) or "(top level)"
            problems.append(f"{path}:{line or 1}: {field}: {msg}")
        raise ConfigError("\n".join(problems)) from None
