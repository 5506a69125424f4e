"""Prometheus metrics shared by every service, and the helpers that name and expose them.

Names follow ``cxloop_<subsystem>_<what>_<unit>``: ``_total`` on counters, ``_seconds`` on
durations. Labels stay low-cardinality: never a customer id, never free text.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest


def name(subsystem: str, what: str, unit: str = "") -> str:
    """Return a metric name in cxloop's scheme, e.g. ``cxloop_consumer_batch_seconds``."""
    return "_".join(part for part in ("cxloop", subsystem, what, unit) if part)


def exposition() -> tuple[bytes, str]:
    """Return the default registry in the Prometheus text format, and its content type."""
    return _generate_latest(REGISTRY), CONTENT_TYPE_LATEST


CONSUMED = Counter(
    name("consumer", "records", "total"),
    "Records consumed and committed, by consumer group and topic.",
    ["group", "topic"],
)
DEAD_LETTERS = Counter(
    name("consumer", "dead_letters", "total"),
    "Records sent to the dead-letter topic because they can never be applied: reason is "
    "validation (undecodable), refused_by_database or refused_by_handler (applied alone).",
    ["group", "topic", "reason"],
)
HELD_BACK = Counter(
    name("consumer", "held_back", "total"),
    "Fetches that met a record never dead-lettered (an erasure) that cannot be decoded: its "
    "partition waits at it and retries with backoff.",
    ["group", "topic"],
)
BATCH_SPLITS = Counter(
    name("consumer", "batch_splits", "total"),
    "Batches refused for their data and applied in halves, by outcome: dead_lettered, "
    "applied (nothing refused in the end) or systemic (one cause refused too many records "
    "alone, or a record never dead-lettered: the batch is retried whole).",
    ["group", "outcome"],
)
BATCH_FAILURES = Counter(
    name("consumer", "batch_failures", "total"),
    "Batches whose handler failed and will be retried (database down, or a bug).",
    ["group"],
)
COMMIT_FAILURES = Counter(
    name("consumer", "commit_failures", "total"),
    "Offset commits that failed; the batch is applied and may be redelivered.",
    ["group"],
)
BATCH_SECONDS = Histogram(
    name("consumer", "batch", "seconds"),
    "Time to apply one batch in the database.",
    ["group"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LAG = Gauge(
    name("consumer", "lag", "records"),
    "Records on the broker not yet consumed, by consumer group and topic.",
    ["group", "topic"],
)
READY = Gauge(
    name("service", "ready"),
    "1 when the service's broker and database answer, else 0.",
    ["service"],
)
HTTP_REQUESTS = Counter(
    name("http", "requests", "total"),
    "HTTP requests by service, method, route template and status code.",
    ["service", "method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    name("http", "request", "seconds"),
    "HTTP request latency by service and route template.",
    ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
