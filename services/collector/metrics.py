"""The collector's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.metrics import name

EVENTS = Counter(
    name("collector", "events", "total"),
    "Submitted items by source, kind (response, ticket, ...), channel and outcome "
    "(accepted, duplicate, unavailable).",
    ["source", "kind", "channel", "outcome"],
)
REJECTED = Counter(
    name("collector", "rejected", "total"),
    "Requests or items refused, by source and reason.",
    ["source", "reason"],
)
PRODUCE_SECONDS = Histogram(
    name("collector", "produce", "seconds"),
    "Time from handing events to the producer to the broker's acknowledgement.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PURGE_FAILURES = Counter(
    name("collector", "purge_failures", "total"),
    "Failed purges of expired idempotency keys or old invitations (retried next pass), by what.",
    ["what"],
)
ORDERS = Counter(
    name("collector", "orders", "total"),
    "Order events the order ledger judged, by type (order.completed, order.refunded) and "
    "outcome (new, unknown_order, duplicate, order_conflict, refund_conflict, over_refund, "
    "under_refunds, zero_refund, currency_mismatch, customer_mismatch, unavailable, busy).",
    ["type", "outcome"],
)
ORDER_LEDGER_MISSED = Counter(
    name("collector", "order_ledger_missed", "total"),
    "Order events the broker acknowledged (answered 2xx) but the order ledger could not "
    "record (its commit failed); their refunds are capped less.",
)
KEYS_UNSETTLED = Counter(
    name("collector", "keys_unsettled", "total"),
    "Requests whose idempotency keys could not be marked produced or released after the "
    "broker answered (answered as produced all the same), by what (mark, release).",
    ["what"],
)
STRIPE_EVENTS = Counter(
    name("collector", "stripe_events", "total"),
    "Signed Stripe events received, by type (charge.succeeded, charge.refunded, "
    "payment_intent.succeeded, other) and outcome (accepted, duplicate, ignored reasons, "
    "unavailable).",
    ["type", "outcome"],
)
