"""Stripe webhooks: the Stripe-Signature check, and payments and refunds as order events.

Signature (Stripe's "verify webhook signatures"): the header is ``t=<unix seconds>`` and
one or more ``v1=<hex>`` (several while a secret is rotated on Stripe's side), each an
HMAC-SHA256 under the endpoint's signing secret (``whsec_…``, used whole as the key) of
``"<t>." + raw body``. Any ``v1`` (of the first 8) matching any configured secret is
enough, the HMAC computed once per secret; ``v0`` and unknown schemes are ignored. A
timestamp further than the tolerance from now is a replay.

Scope: only events of the configured mode (``livemode``, live by default) count, and an
event of a connected account (a top-level ``account``, Stripe Connect) only when that
account is allowed; a charge only once captured with status ``succeeded``, a PaymentIntent
only with status ``succeeded``.

Mapping (:func:`order_of`):

* ``charge.succeeded`` and ``payment_intent.succeeded`` become ``order.completed``; the
  order id is the PaymentIntent id (``pi_…``) when the charge has one, else the charge id
  (``ch_…``), so both events of one payment are one order.
  The amount is what was paid: a charge's ``amount_captured``, a PaymentIntent's
  ``amount_received``.
* ``charge.refunded`` becomes ``order.refunded`` of that order: this refund's amount is the
  charge's ``amount_refunded`` less ``data.previous_attributes.amount_refunded``; without
  that, the newest refund of the charge's ``refunds`` list when the list holds them all;
  else the event is ignored (``refund_amount_unknown``), never guessed. Its refund id is the
  Stripe event id (``evt_…``, the same on every retry), and the charge's
  ``amount_captured`` tells the ledger the whole order's amount.
* The customer is ``metadata.cxloop_customer_id`` when present, else the Stripe customer
  (``cus_…``), behind ``CXLOOP_SOURCES_STRIPE_CUSTOMER_PREFIX`` (``stripe:``). Segments
  come from the metadata keys ``cxloop_location``, ``cxloop_product`` and
  ``cxloop_business_unit``, the channel from ``cxloop_channel`` (else
  ``CXLOOP_SOURCES_STRIPE_DEFAULT_CHANNEL``).
* Amounts: Stripe sends an integer in its own smallest unit. It is whole units for its
  zero-decimal currencies, thousandths for its three-decimal ones, and hundredths for
  every other currency, ISK, HUF and TWD included (Stripe keeps a two-decimal form for
  them, with amounts divisible by 100). The integer becomes a decimal by Stripe's rule,
  then ISO 4217 minor units by ``shared.money`` (ISK 500 → 5 króna → 5 minor units).

What cannot become an order event (another type, no customer, a currency ISO 4217 does
not have, an amount with decimals its ISO currency lacks) raises :class:`Ignored`: the
route acknowledges it with 200 rather than a 4xx that Stripe would retry for days.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from pydantic import ValidationError

from shared import signatures
from shared.events import ORDER_COMPLETED, ORDER_REFUNDED, Channel, Segments
from shared.money import exponent, from_minor, to_minor

# https://docs.stripe.com/currencies#zero-decimal and #three-decimal
ZERO_DECIMAL: Final = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA"}
    | {"PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"}
)
THREE_DECIMAL: Final = frozenset({"BHD", "JOD", "KWD", "OMR", "TND"})

COMPLETED_TYPES: Final = ("charge.succeeded", "payment_intent.succeeded")
REFUNDED_TYPE: Final = "charge.refunded"
TYPES: Final = (*COMPLETED_TYPES, REFUNDED_TYPE)


class Check(StrEnum):
    """What the Stripe-Signature check found."""

    VALID = "valid"
    MALFORMED = "malformed"  # no t=, or no v1=
    FORGED = "forged"  # no v1 matches any secret
    STALE = "stale"  # signed, but too far from now


# Stripe sends one v1 per secret of the endpoint (two while one is rolled); more than this
# is no real header, and each costs a comparison per secret.
MAX_SIGNATURES: Final = 8


def parse_header(header: str) -> tuple[int, list[str]] | None:
    """Return the timestamp and the v1 signatures of a Stripe-Signature header, or None.

    Only the first :data:`MAX_SIGNATURES` v1 entries are considered.
    """
    timestamp: int | None = None
    v1: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not value.isdigit() or len(value) > 12 or timestamp is not None:
                return None
            timestamp = int(value)
        elif key == "v1" and value and len(v1) < MAX_SIGNATURES:
            v1.append(value)
    if timestamp is None or not v1:
        return None
    return timestamp, v1


def expected_signature(secret: str, timestamp: int, body: bytes) -> str:
    """Return the v1 signature Stripe computes for ``body`` signed at ``timestamp``."""
    signed = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def check_signature(
    secrets: Sequence[str], header: str, body: bytes, now: datetime, tolerance: float
) -> Check:
    """Check a Stripe-Signature header against every secret, then its timestamp."""
    parsed = parse_header(header)
    if parsed is None:
        return Check.MALFORMED
    timestamp, presented = parsed
    # One HMAC per secret, however many v1 entries the header holds.
    expected = [expected_signature(secret, timestamp, body) for secret in secrets]
    if not any(signatures.matches(e, v1) for e in expected for v1 in presented):
        return Check.FORGED
    if abs(now.timestamp() - timestamp) > tolerance:
        return Check.STALE
    return Check.VALID


class Ignored(Exception):
    """A well-signed event that becomes no order event; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def stripe_exponent(currency: str) -> int:
    """Return how many decimals Stripe's integer amounts of ``currency`` (upper case) hold."""
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def iso_amount(stripe_amount: object, currency: str, where: str) -> tuple[Decimal, int]:
    """Return a Stripe integer amount as a decimal in ISO form and in ISO minor units.

    Raises :class:`Ignored` for what is no amount, or does not fit the ISO currency.
    """
    if not isinstance(stripe_amount, int) or isinstance(stripe_amount, bool) or stripe_amount < 0:
        raise Ignored("malformed", f"{where} is not a non-negative integer")
    value = Decimal(stripe_amount).scaleb(-stripe_exponent(currency))
    try:
        minor = to_minor(value, currency)
    except ValueError as exc:
        raise Ignored("amount", f"{where}: {exc}") from None
    return from_minor(minor, currency), minor


@dataclass(frozen=True)
class StripeOrder:
    """One Stripe event as an order event; ``key`` is the Stripe event id."""

    key: str
    stripe_type: str
    type: str
    order_id: str
    customer_id: str
    channel: Channel
    currency: str
    amount: Decimal
    occurred_at: datetime | None
    segments: Segments = field(default_factory=Segments)
    refund_id: str | None = None
    order_amount_minor: int | None = None


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, dict):
        return _text(value.get("id"))  # an expanded object
    return None


def _segments(metadata: dict[str, Any]) -> Segments:
    values = {}
    for name in ("location", "product", "business_unit"):
        value = _text(metadata.get(f"cxloop_{name}"))
        if value is None:
            continue
        try:
            Segments.model_validate({name: value})
        except ValidationError:
            continue  # a segment that cannot be one is left out, not the payment
        values[name] = value
    return Segments.model_validate(values)


def _channel(metadata: dict[str, Any], default: Channel) -> Channel:
    try:
        return Channel(str(metadata.get("cxloop_channel") or default.value).strip().lower())
    except ValueError:
        return default


def _integer(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _scope(body: dict[str, Any], livemode: str, accounts: Collection[str]) -> None:
    """Raise :class:`Ignored` for an event of the other mode, or of a connected account
    that is not allowed."""
    live = body.get("livemode")
    if not isinstance(live, bool):
        raise Ignored("malformed", "the event has no livemode")
    if live != (livemode == "live"):
        mode = "live" if live else "test"
        raise Ignored(
            "livemode",
            f"a {mode}-mode event; this collector takes {livemode}-mode events "
            "(CXLOOP_SOURCES_STRIPE_LIVEMODE)",
        )
    account = body.get("account")
    if account is not None and account not in accounts:
        raise Ignored(
            "connect_account",
            "an event of a connected account not listed in CXLOOP_SOURCES_STRIPE_CONNECT_ACCOUNTS",
        )


def _settled(kind: str, obj: dict[str, Any]) -> None:
    """Raise :class:`Ignored` for a charge not captured, or a payment that did not succeed."""
    if obj.get("status") != "succeeded":
        raise Ignored("not_succeeded", f"{kind}: its status is not succeeded")
    if kind.startswith("charge.") and obj.get("captured") is not True:
        raise Ignored(
            "not_captured",
            f"{kind}: the charge is not captured (manual capture: its payment_intent.succeeded "
            "comes at capture)",
        )


def _refunds(items: object) -> list[tuple[int, int]]:
    """Return (created, amount) of each refund of a charge's ``refunds.data``, or [] when
    any of them lacks one."""
    if not isinstance(items, list):
        return []
    refunds = []
    for item in items:
        created = _integer(item.get("created")) if isinstance(item, dict) else None
        amount = _integer(item.get("amount")) if isinstance(item, dict) else None
        if created is None or amount is None:
            return []
        refunds.append((created, amount))
    return refunds


def _this_refund(data: dict[str, Any], obj: dict[str, Any], refunded: int) -> int:
    """Return how much the refund this ``charge.refunded`` reports refunded (Stripe units).

    By ``data.previous_attributes.amount_refunded``, else by the charge's ``refunds`` list
    when it holds every refund (they add up to ``amount_refunded``): the newest one, as the
    charge is sent as that refund left it. Else :class:`Ignored`: never a guess.
    """
    previous = data.get("previous_attributes")
    if isinstance(previous, dict) and "amount_refunded" in previous:
        before = _integer(previous["amount_refunded"])
        if before is None:
            raise Ignored("malformed", "previous_attributes.amount_refunded is not an integer")
        return refunded - before
    listed = obj.get("refunds")
    if isinstance(listed, dict) and listed.get("has_more") is False:
        refunds = _refunds(listed.get("data"))
        newest = max(refunds, default=None)
        if newest is not None and sum(amount for _, amount in refunds) == refunded:
            tied = {amount for created, amount in refunds if created == newest[0]}
            if len(tied) == 1:
                return newest[1]
    raise Ignored(
        "refund_amount_unknown",
        "the event says neither amount_refunded before it nor every refund of the charge",
    )


def order_of(
    body: Any,
    *,
    customer_prefix: str = "",
    default_channel: Channel,
    livemode: str = "live",
    accounts: Collection[str] = (),
) -> StripeOrder:
    """Map a Stripe event (the parsed webhook body) to an order event, or raise Ignored.

    ``livemode`` is the mode whose events count (live or test); ``accounts`` are the
    connected accounts whose events count (an event without ``account`` is the platform's).
    """
    if not isinstance(body, dict):
        raise Ignored("malformed", "the body is not a JSON object")
    kind = body.get("type")
    event_id = _text(body.get("id"))
    if not isinstance(kind, str) or event_id is None:
        raise Ignored("malformed", "the event has no type or id")
    if kind not in TYPES:
        raise Ignored("unsupported", f"{kind} is not used")
    _scope(body, livemode, accounts)
    data = body.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict) or not isinstance(data, dict):
        raise Ignored("malformed", "data.object is missing")
    _settled(kind, obj)
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    customer = _text(metadata.get("cxloop_customer_id"))
    if customer is None and (stripe_customer := _text(obj.get("customer"))) is not None:
        customer = customer_prefix + stripe_customer
    if customer is None:
        raise Ignored(
            "no_customer",
            "the payment names no customer (set metadata.cxloop_customer_id or a Stripe customer)",
        )
    raw_currency = obj.get("currency")
    try:
        currency = str(raw_currency).upper() if isinstance(raw_currency, str) else ""
        exponent(currency)
    except ValueError:
        raise Ignored("currency", f"{raw_currency!r} is not an ISO 4217 currency") from None
    if kind == "payment_intent.succeeded":
        order_id = _text(obj.get("id"))
    else:
        order_id = _text(obj.get("payment_intent")) or _text(obj.get("id"))
    if order_id is None:
        raise Ignored("malformed", "data.object has no id")
    created = body.get("created")
    occurred_at = (
        datetime.fromtimestamp(created, UTC)
        if isinstance(created, int) and not isinstance(created, bool) and 0 < created < 2**33
        else None
    )
    base = StripeOrder(
        key=event_id,
        stripe_type=kind,
        type=ORDER_COMPLETED,
        order_id=order_id,
        customer_id=customer,
        channel=_channel(metadata, default_channel),
        currency=currency,
        amount=Decimal(0),
        occurred_at=occurred_at,
        segments=_segments(metadata),
    )
    # What was paid: a charge's captured amount (less than its amount after a partial
    # capture), a PaymentIntent's received amount.
    paid = "amount_received" if kind == "payment_intent.succeeded" else "amount_captured"
    order_amount, order_minor = iso_amount(obj.get(paid), currency, f"data.object.{paid}")
    if kind in COMPLETED_TYPES:
        return replace(base, amount=order_amount)
    refunded = _integer(obj.get("amount_refunded"))
    if refunded is None:
        raise Ignored("malformed", "amount_refunded is not an integer")
    this = _this_refund(data, obj, refunded)
    if this <= 0:
        raise Ignored("no_refund", "amount_refunded did not grow")
    amount, _ = iso_amount(this, currency, "data.object.amount_refunded")
    return replace(
        base,
        type=ORDER_REFUNDED,
        amount=amount,
        refund_id=event_id,
        order_amount_minor=order_minor,
    )
