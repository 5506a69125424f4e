"""A bare confluent-kafka consume loop that only counts records: the limit of reading a topic
in Python, for context. Run by bench/peers.py in Quix's venv (which has confluent-kafka).

    python peers_bare_loop.py BOOTSTRAP TOPIC GROUP N
Prints one JSON line: {"records": N, "first": ..., "done": ..., "cpu_seconds": ...}: the
time.time() of its first record and of its N-th, and its CPU-seconds between the two.
"""

from __future__ import annotations

import json
import os
import sys
import time

from confluent_kafka import Consumer  # type: ignore[import-not-found]


def main() -> None:
    bootstrap, topic, group, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    seen = 0
    first, cpu_at_first = 0.0, 0.0
    try:
        while seen < n:
            for message in consumer.consume(num_messages=500, timeout=1.0):
                if message.error() is None:
                    if not seen:
                        first, cpu_at_first = time.time(), _cpu()
                    seen += 1
        done, cpu = time.time(), _cpu() - cpu_at_first
    finally:
        consumer.close()
    print(
        json.dumps({"records": seen, "first": first, "done": done, "cpu_seconds": cpu}),
        flush=True,
    )


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


if __name__ == "__main__":
    main()
