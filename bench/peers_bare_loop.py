"""A bare confluent-kafka consume loop that only counts records: the limit of reading a topic
in Python, for context. Run by bench/peers.py in Quix's venv (which has confluent-kafka).

    python peers_bare_loop.py BOOTSTRAP TOPIC GROUP N
Prints one JSON line: {"records": N, "cpu_seconds": ...}.
"""

from __future__ import annotations

import json
import os
import sys

from confluent_kafka import Consumer  # type: ignore[import-not-found]


def main() -> None:
    bootstrap, topic, group, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    seen = 0
    try:
        while seen < n:
            for message in consumer.consume(num_messages=10_000, timeout=1.0):
                if message.error() is None:
                    seen += 1
    finally:
        consumer.close()
    times = os.times()
    print(json.dumps({"records": seen, "cpu_seconds": times.user + times.system}), flush=True)


if __name__ == "__main__":
    main()
