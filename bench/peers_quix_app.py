"""The Quix Streams peer of the scorer, run by bench/peers.py in Quix's own venv.

Reads a topic of ResponseSubmitted records (keyed by customer), regroups them by channel,
counts NPS promoters, passives and detractors per (channel, UTC hour of occurred_at) in a
1-hour tumbling window, and upserts each window's counts into Postgres with Quix's own
PostgreSQLSink. Quix's defaults otherwise (at-least-once, changelog topics), but a checkpoint
every ``commit_interval`` seconds as configured (bench/peers.py: 1 s, not the default 5 s).
Writes ``time.time()`` to ``first_file`` when it reads its first record.

    python peers_quix_app.py CONFIG_FILE
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from quixstreams import Application  # type: ignore[import-not-found]
from quixstreams.models import TimestampType  # type: ignore[import-not-found]
from quixstreams.sinks.community.postgresql import (  # type: ignore[import-not-found]
    PostgreSQLSink,
)

HOUR = timedelta(hours=1)


def occurred_ms(value: Any, headers: Any, timestamp: float, kind: TimestampType) -> int:
    return int(datetime.fromisoformat(value["occurred_at"]).timestamp() * 1000)


def category(score: int) -> str:
    if score >= 9:
        return "promoters"
    if score >= 7:
        return "passives"
    return "detractors"


def initial(value: dict[str, Any]) -> dict[str, Any]:
    counts = {"channel": value["channel"], "promoters": 0, "passives": 0, "detractors": 0}
    counts[category(value["score"])] += 1
    return counts


def add(counts: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    counts[category(value["score"])] += 1
    return counts


def row(window: dict[str, Any]) -> dict[str, Any]:
    counts = window["value"]
    return {
        "channel": counts["channel"],
        "hour_ms": window["start"],
        "promoters": counts["promoters"],
        "passives": counts["passives"],
        "detractors": counts["detractors"],
    }


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    first_file = Path(config["first_file"])
    seen = False

    def first(value: dict[str, Any]) -> None:
        nonlocal seen
        if not seen:
            seen = True
            first_file.write_text(repr(time.time()))

    app = Application(
        commit_interval=float(config["commit_interval"]),
        broker_address=config["bootstrap"],
        consumer_group=config["group"],
        auto_offset_reset="earliest",
        state_dir=config["state_dir"],
        loglevel="WARNING",
    )
    topic = app.topic(
        config["topic"],
        value_deserializer="json",
        key_deserializer="string",
        timestamp_extractor=occurred_ms,
    )
    sink = PostgreSQLSink(
        host=config["host"],
        port=config["port"],
        dbname=config["dbname"],
        user=config["user"],
        password=config["password"],
        table_name=config["table"],
        primary_key_columns=["channel", "hour_ms"],
        upsert_on_primary_key=True,
        include_metadata=False,
    )
    sdf = app.dataframe(topic)
    sdf = sdf.update(first)
    sdf = sdf[sdf["metric"] == "nps"]
    sdf = sdf.group_by("channel")
    grace = timedelta(hours=config["spread_hours"]) + 2 * HOUR
    sdf = sdf.tumbling_window(HOUR, grace_ms=grace).reduce(add, initial).current()
    sdf = sdf.apply(row)
    sdf.sink(sink)
    app.run()


if __name__ == "__main__":
    main()
