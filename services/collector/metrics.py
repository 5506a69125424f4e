"""The collector's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.metrics import name

ACCEPTED = Counter(
    name("collector", "accepted", "total"),
    "Events acknowledged by the broker and answered 2xx, by source and kind.",
    ["source", "kind"],
)
REJECTED = Counter(
    name("collector", "rejected", "total"),
    "Requests refused, by HTTP status.",
    ["status"],
)
UNAVAILABLE = Counter(
    name("collector", "unavailable", "total"),
    "Requests answered 503 because the broker did not acknowledge in time.",
)
PRODUCE_SECONDS = Histogram(
    name("collector", "produce", "seconds"),
    "Time from handing an event to the producer to the broker's acknowledgement.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
