"""Starting real servers: what goes wrong one run in sixty-four must not go wrong at all."""

from __future__ import annotations

from services.servers import _kafka_cluster_id


def test_a_kafka_cluster_id_never_reads_as_an_option() -> None:
    # One in 64 random ids starts with '-'; kafka-storage then takes it for a flag.
    ids = [_kafka_cluster_id() for _ in range(2000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 22 for i in ids)
