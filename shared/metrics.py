"""Prometheus metrics shared by every service, and the helpers that name and expose them.

Names follow ``cxloop_<subsystem>_<what>_<unit>``: ``_total`` on counters, ``_seconds`` on
durations. Labels stay low-cardinality: never a customer id, never free text.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client import generate_latest as _generate_latest

# prometheus_client's own variable: set (by shared.workers.serve_workers, before the workers
# start) when several processes serve one service, each writing its metrics to files there.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def name(subsystem: str, what: str, unit: str = "") -> str:
    """Return a metric name in cxloop's scheme, e.g. ``cxloop_consumer_batch_seconds``."""
    return "_".join(part for part in ("cxloop", subsystem, what, unit) if part)


def exposition() -> tuple[bytes, str]:
    """Return every metric in the Prometheus text format, and its content type.

    One process: its default registry. Several workers of one service: the sum over all of
    them (gauges as each declares its ``multiprocess_mode``), whichever worker is scraped.
    """
    if os.environ.get(MULTIPROCESS_DIR):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return _generate_latest(registry), CONTENT_TYPE_LATEST
    return _generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def forget_dead_workers() -> None:
    """Drop the live gauges of worker processes that are gone (killed, then replaced), so a
    scrape sums only the workers serving now. Counters and histograms of the dead stay in
    the sums: what they counted happened."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if not directory:
        return
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    multiprocess_mode="livemostrecent",
)
READY = Gauge(
    name("service", "ready"),
    "1 when the service's broker and database answer, else 0 (with several workers, 1 only "
    "when every live worker's last check answered).",
    ["service"],
    multiprocess_mode="livemin",
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
