"""Topic names, partition counts and partition keys, in one place.

Every topic name carries a prefix (``CXLOOP_KAFKA_TOPIC_PREFIX``, default ``cxloop.``) so
that several cxloop installations, or several test runs, can share one cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Topic(StrEnum):
    """The logical topics; :func:`topic_name` gives the name on the broker."""

    RESPONSES = "responses.v1"
    TOUCHPOINTS = "touchpoints.v1"
    DEAD_LETTERS = "deadletters.v1"


@dataclass(frozen=True)
class TopicSpec:
    """How a topic is created: its partition count bounds consumer parallelism."""

    topic: Topic
    partitions: int


TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(Topic.RESPONSES, partitions=6),
    TopicSpec(Topic.TOUCHPOINTS, partitions=6),
    TopicSpec(Topic.DEAD_LETTERS, partitions=1),
)


def topic_name(topic: Topic, prefix: str) -> str:
    """Return the broker-side name of ``topic`` under ``prefix``."""
    return f"{prefix}{topic.value}"


def partition_key(customer_id: str) -> bytes:
    """Return the record key that keeps one customer's events in order on one partition."""
    return customer_id.encode("utf-8")
