"""The scorer's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.metrics import name

APPLIED = Counter(
    name("scorer", "responses_applied", "total"),
    "Responses stored and counted for the first time, by metric.",
    ["metric"],
)
TOUCHPOINTS_APPLIED = Counter(
    name("scorer", "touchpoints_applied", "total"),
    "Touchpoint events (tickets, purchases, ...) applied for the first time.",
)
DUPLICATES = Counter(
    name("scorer", "duplicates", "total"),
    "Redelivered or resent events recognised by event id and not counted again.",
)
EVENT_TO_AGGREGATE_SECONDS = Histogram(
    name("scorer", "event_to_aggregate", "seconds"),
    "From the collector accepting a response to its aggregate committing.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
