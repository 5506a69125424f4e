"""Query latency of the scorer's API over a large history.

Seeds --responses raw answers in bulk with SQL (spread over 100 days across 4 channels,
4 touchpoints, 8 locations and 2 survey types), derives their hourly and daily score buckets in the
same transaction, then starts the scorer as a process and times, one request at a time
after a warm-up:
  30d by channel     GET /v1/scores?metric=nps&window=30d&group_by=channel
  90d by channel     GET /v1/scores?metric=nps&window=90d&group_by=channel
  90d daily series   GET /v1/scores/timeseries?metric=nps&window=90d&interval=day
and the dashboard's own requests, with the session cookie of a one-time sign-in link:
  dashboard 30d      GET /dashboard (tiles, trends, breakdowns, drivers, service times, ...)
  dashboard 90d web  GET /dashboard?window=90d&channel=web
  answers page       GET /dashboard/responses
  live poll          GET /dashboard/live?cursor=... (what dashboard.js asks every second)
Each page's own Server-Timing header (a panel's service call, `render`, `total`) is read
back and printed as p50/p99 per part under the page's line.

Customer value (issue 13) over --orders orders (default 1M, 95% JPY and 5% USD, dated over
the same 100 days, from the same 200,000 customers, 5% of them partly refunded), with
every customer's NPS answers and monthly activity derived from the seeded rows and the
revenue facts derived by the scorer's own rebuild code:
  value 30d          GET /v1/value?window=30d       (the default view: the scorer's snapshot)
  value 365d         GET /v1/value?window=365d      (snapshot; what the gauges read)
  value range        GET /v1/value?from=…&to=…      (a custom 30-day range: computed live)
  value by channel   GET /v1/value?window=30d&group_by=channel   (computed live)
The snapshot rows time a dictionary lookup the scorer refreshes every
CXLOOP_SCORER_VALUE_REFRESH_SECONDS; the live rows time the exact per-customer statements.

    python bench/queries.py --responses 10000000 --orders 1000000 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import sqlalchemy as sa
from common import (
    Result,
    Servers,
    asyncpg_dsn,
    checkpoint,
    drop_database,
    percentile,
    servers,
    stack,
)
from scorer_throughput import answer
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db import create_engine, session_settings
from shared.kafka import encode, make_producer
from shared.settings import DatabaseSettings, KafkaSettings, ScorerSettings
from shared.timing import parse_header
from shared.topics import Topic
from shared.web.sessions import sign_in_link_for

# Bench-only seeding SQL. It builds the rows the scorer would have stored; the scorer's own
# code is what the benchmark then times.
_SEED_RESPONSES = """
INSERT INTO responses (event_id, metric, scale, score, survey_type, channel, touchpoint,
    location, customer_id, reasons, source, occurred_at, received_at)
SELECT gen_random_uuid(), 'nps', 10, (random() * 10)::int,
    (ARRAY['transactional', 'relationship'])[1 + (i % 2)],
    (ARRAY['web', 'sms', 'call_center', 'email'])[1 + (i / 2 % 4)],
    (ARRAY['checkout', 'delivery', 'support_call', 'onboarding'])[1 + (i / 8 % 4)],
    'loc' || (i / 32 % 8), 'c' || (i % 200000), '{}', 'api', at, at
FROM (SELECT i, now() - random() * interval '100 days' AS at
      FROM generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS i) AS s
"""

_SEED_BUCKETS = """
INSERT INTO score_buckets (bucket_start, metric, scale, channel, survey_type, touchpoint,
    location, product, business_unit, n, score_sum, promoters, passives, detractors,
    satisfied, easy, score_sq_sum)
SELECT date_trunc('hour', occurred_at, 'UTC'), metric, scale, channel, survey_type,
    touchpoint, coalesce(location, ''), '', '', count(*), sum(score),
    count(*) FILTER (WHERE score >= 9), count(*) FILTER (WHERE score BETWEEN 7 AND 8),
    count(*) FILTER (WHERE score <= 6), 0, 0, sum(score * score)
FROM responses GROUP BY 1, 2, 3, 4, 5, 6, 7
"""

_SEED_DAYS = """
INSERT INTO score_days SELECT date_trunc('day', bucket_start, 'UTC'), metric, scale, channel,
    survey_type, touchpoint, location, product, business_unit, sum(n), sum(score_sum),
    sum(promoters), sum(passives), sum(detractors), sum(satisfied), sum(easy), sum(score_sq_sum)
FROM score_buckets GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9
"""

_SEED_ORDERS = """
INSERT INTO orders (order_id, customer_id, currency, amount_minor, completed_at,
    completed_event, channel, location, product, business_unit, refunded_minor)
SELECT 'o' || i, 'c' || (CAST(i AS bigint) * 7919 % 200000),
    CASE WHEN i % 20 = 0 THEN 'USD' ELSE 'JPY' END,
    CASE WHEN i % 20 = 0 THEN 500 + (random() * 20000)::bigint
         ELSE 10 * (50 + (random() * 2000)::bigint) END,
    at, gen_random_uuid(),
    (ARRAY['web', 'in_app', 'in_person', 'email'])[1 + (i % 4)],
    'loc' || (i / 4 % 8), '', '', 0
FROM (SELECT i, now() - random() * interval '100 days' AS at
      FROM generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS i) AS s
"""

_SEED_REFUNDS = """
INSERT INTO order_refunds (order_id, refund_id, currency, amount_minor, occurred_at, event_id)
SELECT order_id, 'r1', currency, amount_minor / 2, completed_at + interval '1 day',
    gen_random_uuid()
FROM orders WHERE hashtext(order_id) % 20 = 0
"""

_SEED_NPS = """
INSERT INTO customer_nps (customer_key, occurred_at, event_id, score)
SELECT customer_id, occurred_at, event_id, score FROM responses WHERE metric = 'nps'
ON CONFLICT DO NOTHING
"""

_SEED_ACTIVITY = """
INSERT INTO customer_activity (period, period_start, customer_key)
SELECT DISTINCT 'month', date_trunc('month', completed_at, 'UTC')::date, customer_id
FROM orders WHERE completed_at IS NOT NULL
ON CONFLICT DO NOTHING
"""

VALUE_QUERIES = {
    "value 30d": ("/v1/value", {"window": "30d"}),
    "value 365d": ("/v1/value", {"window": "365d"}),
    "value range": ("/v1/value", {}),  # from/to filled in at run time
    "value by channel": ("/v1/value", {"window": "30d", "group_by": "channel"}),
}


async def seed_orders(url: str, orders: int) -> float:
    """Seed ``orders`` raw orders and refunds, the NPS history and monthly activity; then
    derive the revenue facts with the scorer's own rebuild code. Return the seconds taken."""
    from services.scorer import repository

    engine = create_async_engine(DatabaseSettings(url=url).sqlalchemy_url())
    started = time.perf_counter()
    try:
        async with engine.begin() as conn:
            step = 1_000_000
            for start in range(1, orders + 1, step):
                stop = min(orders, start + step - 1)
                await conn.execute(sa.text(_SEED_ORDERS), {"start": start, "stop": stop})
            await conn.execute(sa.text(_SEED_REFUNDS))
            await conn.execute(sa.text(_SEED_NPS))
            await conn.execute(sa.text(_SEED_ACTIVITY))
            await repository.derive_retention(conn)
            await repository.rebuild_orders(conn)
            await repository.derive_latest_nps(conn)
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in (
                "orders",
                "order_refunds",
                "customer_revenue",
                "customer_nps",
                "customer_latest_nps",
                "retention_counts",
            ):
                await conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
            await conn.execute(sa.text("VACUUM ANALYZE customer_activity"))
    finally:
        await engine.dispose()
    return time.perf_counter() - started


QUERIES = {
    "30d by channel": ("/v1/scores", {"metric": "nps", "window": "30d", "group_by": "channel"}),
    "90d by channel": ("/v1/scores", {"metric": "nps", "window": "90d", "group_by": "channel"}),
    "90d daily series": (
        "/v1/scores/timeseries",
        {"metric": "nps", "window": "90d", "interval": "day"},
    ),
}


async def seed(url: str, responses: int) -> tuple[float, int]:
    engine = create_async_engine(DatabaseSettings(url=url).sqlalchemy_url())
    started = time.perf_counter()
    try:
        async with engine.begin() as conn:
            step = 1_000_000
            for start in range(1, responses + 1, step):
                stop = min(responses, start + step - 1)
                await conn.execute(sa.text(_SEED_RESPONSES), {"start": start, "stop": stop})
            await conn.execute(sa.text(_SEED_BUCKETS))
            await conn.execute(sa.text(_SEED_DAYS))
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sa.text("VACUUM ANALYZE responses"))
            await conn.execute(sa.text("VACUUM ANALYZE score_buckets"))
            await conn.execute(sa.text("VACUUM ANALYZE score_days"))
            buckets = int(await conn.scalar(sa.text("SELECT count(*) FROM score_buckets")) or 0)
    finally:
        await engine.dispose()
    return time.perf_counter() - started, buckets


PAGES = {
    "dashboard 30d": ("/dashboard", {}),
    "dashboard 90d web": ("/dashboard", {"window": "90d", "channel": "web"}),
    "answers page": ("/dashboard/responses", {}),
    "live poll": ("/dashboard/live", {}),
}


async def sign_in(client: httpx.AsyncClient, url: str, api_key: str) -> None:
    """Give ``client`` the scorer's session cookie, as a browser gets it from a one-time link."""
    token = await sign_in_link_for(
        DatabaseSettings(url=url).sqlalchemy_url(),
        service="scorer",
        api_key=api_key,
        valid_for=timedelta(minutes=10),
    )
    answer = await client.get("/signin/link", params={"token": token})
    if answer.status_code != 303 or not client.cookies:
        raise RuntimeError(f"signing in failed: {answer.status_code}")


@dataclass
class Timed:
    """One request's latencies as the client saw them, and the server's parts of each
    (its ``Server-Timing`` header: a panel's service call, ``render``, ``total``)."""

    times: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)

    @property
    def p50(self) -> float:
        return percentile(self.times, 50) * 1000

    @property
    def p99(self) -> float:
        return percentile(self.times, 99) * 1000

    def table(self) -> list[str]:
        """One line per server part: p50 and p99 in ms, slowest p99 first."""
        rows = sorted(self.parts.items(), key=lambda kv: -percentile(kv[1], 99))
        return [
            f"    {name:<22} p50 {percentile(ms, 50):7.1f} ms  p99 {percentile(ms, 99):7.1f} ms"
            for name, ms in rows
        ]

    def summary(self) -> str:
        """The server's total and render, as a BENCHMARKS.md note."""
        said = [
            f"server {name} p50 {percentile(self.parts[name], 50):.1f} ms, "
            f"p99 {percentile(self.parts[name], 99):.1f} ms"
            for name in ("total", "render")
            if name in self.parts
        ]
        return "; ".join(said)


async def timed(
    client: httpx.AsyncClient,
    path: str,
    params: dict[str, Any],
    requests: int,
    bare: Callable[[], Awaitable[None]] | None = None,
    budget: float | None = None,
) -> Timed:
    """``requests`` GETs, one at a time, after a warm-up; each paired with ``bare`` (the same
    SQL run bare), if given, so that the two are measured interleaved, in an order drawn at
    random per pair (whichever runs second finds the buffers the first one warmed).

    With a ``budget`` (seconds), fewer when that time is spent, but at least ``AT_LEAST``:
    a row whose every request takes seconds must not hold up the run for an hour. The
    count taken is ``len(times)``, and the row's note says it."""
    warm_up = 10 if budget is None else 2
    for _ in range(warm_up):
        (await client.get(path, params=params)).raise_for_status()
        if bare is not None:
            await bare()
    out = Timed()
    order = random.Random(5)
    began = time.perf_counter()
    for _ in range(requests):
        spent = time.perf_counter() - began
        if budget is not None and len(out.times) >= AT_LEAST and spent > budget:
            break
        bare_first = bare is not None and order.random() < 0.5
        if bare is not None and bare_first:
            await bare()
        started = time.perf_counter()
        r = await client.get(path, params=params)
        out.times.append(time.perf_counter() - started)
        if bare is not None and not bare_first:
            await bare()
        r.raise_for_status()
        for name, ms in parse_header(r.headers.get("server-timing", "")).items():
            out.parts.setdefault(name, []).append(ms)
    return out


# The time one value or page row may take, and the requests it takes at least, however slow
# (its p99 then rests on few requests, and its note says so).
BUDGET = 90.0
AT_LEAST = 20


def _cut(taken: int, requests: int) -> str:
    if taken >= requests:
        return ""
    return f"; cut to {taken} of {requests} requests by the row's {BUDGET:.0f} s budget"


def result(
    name: str, p50: float, p99: float, requests: int, responses: int, buckets: int
) -> Result:
    print(f"  {name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
    return Result(
        f"Query p99, {name}",
        p99,
        "ms",
        target="p99 ≤ 50 ms",
        met=p99 <= 50,
        note=f"p50 {p50:.1f} ms over {requests} requests; {responses:,} "
        f"responses in {buckets:,} hourly buckets",
    )


Statement = tuple[str, tuple[Any, ...]]


async def scorer_statements(url: str) -> dict[str, list[Statement]]:
    """Return, for each of QUERIES, the exact statements and parameters the scorer runs for
    it: its own service code called here with the same arguments as its API passes, on an
    engine that records what reaches the driver (asyncpg's ``$n`` form)."""
    from services.scorer import service
    from services.scorer.schemas import Dimension, Interval, Window
    from shared.events import Metric

    engine = create_engine(DatabaseSettings(url=url))  # the scorer's own engine factory
    seen: list[Statement] = []

    def record(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, tuple(parameters or ())))

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    min_n = ScorerSettings().min_n
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "30d by channel": lambda: service.scores(
            engine, service.resolve_range(Window("30d"), None, None), {}, Metric.NPS, None,
            min_n, group_by=Dimension.CHANNEL,
        ),
        "90d by channel": lambda: service.scores(
            engine, service.resolve_range(Window("90d"), None, None), {}, Metric.NPS, None,
            min_n, group_by=Dimension.CHANNEL,
        ),
        "90d daily series": lambda: service.trend(
            engine, service.resolve_range(Window("90d"), None, None), {}, Metric.NPS, None,
            min_n, interval=Interval.DAY,
        ),
    }  # fmt: skip
    out: dict[str, list[Statement]] = {}
    try:
        for name, call in calls.items():
            seen.clear()
            await call()
            out[name] = list(seen)
    finally:
        await engine.dispose()
    return out


async def timed_bare(
    conn: asyncpg.Connection, statements: list[Statement], into: list[float]
) -> None:
    """Run ``statements`` as the scorer does for one request (in one transaction), over a
    bare asyncpg connection."""
    started = time.perf_counter()
    async with conn.transaction():
        for statement, parameters in statements:
            await conn.fetch(statement, *parameters)
    into.append(time.perf_counter() - started)


async def bare_connection(url: str) -> asyncpg.Connection:
    """A plain asyncpg connection with the session settings the scorer's engine sets."""
    return await asyncpg.connect(
        asyncpg_dsn(url), server_settings=session_settings(DatabaseSettings(url=url))
    )


@dataclass
class Steady:
    """Answers sent to the scorer's topic at a steady rate while the queries are timed."""

    sent: int = 0
    started: float = 0.0


async def send_steadily(kafka: KafkaSettings, rate: int, into: Steady, stop: asyncio.Event) -> None:
    """Produce ``rate`` answers a second (acks=all) until ``stop``, in tenths of a second."""
    rng, producer = random.Random(4), make_producer(kafka)
    await producer.start()
    try:
        topic = kafka.topic(Topic.RESPONSES)
        into.started = time.monotonic()
        while not stop.is_set():
            now = datetime.now(UTC)
            futures = []
            for _ in range(max(1, rate // 10)):
                e = answer(rng, into.sent, now, timedelta(minutes=5))
                futures.append(await producer.send(topic, encode(e), key=e.customer_id.encode()))
                into.sent += 1
            await asyncio.gather(*futures)
            due = into.started + into.sent / rate - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due))
    finally:
        await producer.stop()


async def applied(url: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM scorer_applied_events"))
    finally:
        await conn.close()


async def measure(
    srv: Servers,
    responses: int,
    requests: int,
    orders: int,
    rate: int = 200,
    *,
    ratio_requests: int | None = None,
) -> list[Result]:
    """Every query row. The database (tens of millions of rows in the full run) is dropped
    at the end, so that its checkpoints and autovacuum do not land on what runs next."""
    url = await srv.database()
    try:
        return await _measure(srv, url, responses, requests, orders, rate, ratio_requests)
    finally:
        await drop_database(srv.postgres, url)
        await checkpoint(srv.postgres)


async def _measure(
    srv: Servers,
    url: str,
    responses: int,
    requests: int,
    orders: int,
    rate: int,
    ratio_requests: int | None,
) -> list[Result]:
    ratio_requests = ratio_requests or requests
    seeded, buckets = await seed(url, responses)
    print(f"  seeded {responses:,} responses, {buckets:,} buckets in {seeded:.0f}s", flush=True)
    if orders:
        took = await seed_orders(url, orders)
        print(f"  seeded {orders:,} orders in {took:.0f}s", flush=True)
    results = []
    async with stack(srv, services=("scorer",), CXLOOP_DATABASE_URL=url) as s:
        steady, stop = Steady(), asyncio.Event()
        sender = asyncio.create_task(send_steadily(s.kafka, rate, steady, stop))
        before, since = await applied(url), time.monotonic()
        statements = await scorer_statements(url)
        bare_conn = await bare_connection(url)
        async with s.client("scorer") as client:
            for name, (path, params) in QUERIES.items():
                bare: list[float] = []
                got = await timed(
                    client, path, params, ratio_requests,
                    functools.partial(timed_bare, bare_conn, statements[name], bare),
                )  # fmt: skip
                bare = bare[10:]  # the warm-up's
                results.append(result(name, got.p50, got.p99, ratio_requests, responses, buckets))
                bare_p99 = percentile(bare, 99) * 1000
                r = results[-1]
                r.reference, r.reference_value = "the same SQL bare through asyncpg", bare_p99
                r.target = "≤ 1.3× bare and p99 ≤ 50 ms"
                r.met = got.p99 <= 1.3 * bare_p99 and got.p99 <= 50
                r.note += (
                    f"; bare p50 {percentile(bare, 50) * 1000:.1f} ms, "
                    f"{len(statements[name])} statement(s) per request, interleaved in an "
                    "order drawn at random per pair"
                )
                print(f"    bare SQL p99 {bare_p99:.1f} ms", flush=True)
            await bare_conn.close()
            if orders:
                now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
                span = {"from": (now - timedelta(days=45)).isoformat(),
                        "to": (now - timedelta(days=15)).isoformat()}  # fmt: skip
                for name, (path, params) in VALUE_QUERIES.items():
                    got = await timed(client, path, params or span, requests, budget=BUDGET)
                    taken = len(got.times)
                    results.append(result(name, got.p50, got.p99, taken, responses, buckets))
                    results[-1].note += f"; {orders:,} orders" + _cut(taken, requests)
        async with httpx.AsyncClient(base_url=s.urls["scorer"], timeout=30) as browser:
            await sign_in(browser, url, s.api_key)
            for name, (path, params) in PAGES.items():
                if path == "/dashboard/live":
                    # As dashboard.js polls: from the cursor of the call before.
                    first = await browser.get(path)
                    first.raise_for_status()
                    params = {"cursor": first.json()["cursor"]}
                got = await timed(browser, path, params, requests, budget=BUDGET)
                taken = len(got.times)
                results.append(result(name, got.p50, got.p99, taken, responses, buckets))
                print("\n".join(got.table()), flush=True)
                if got.parts:
                    results[-1].note += f"; {got.summary()}"
                results[-1].note += _cut(taken, requests)
        consumed = (await applied(url) - before) / (time.monotonic() - since)
        stop.set()
        await sender
        rss = s.peak_rss_mib()["scorer"]
    print(f"  the scorer consumed {consumed:,.0f} answers/s meanwhile", flush=True)
    for r in results:
        r.note += f"; measured while the scorer consumed {consumed:,.0f} answers/s ({rate}/s sent)"
    results[-1].note += f"; scorer peak RSS {rss:.0f} MiB"
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--responses", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--orders", type=int, default=1_000_000)
    args = parser.parse_args()
    async with servers() as srv:
        for r in await measure(srv, args.responses, args.requests, args.orders):
            print(f"{r.name}: {r.value:.1f} {r.unit} ({r.note})")


if __name__ == "__main__":
    asyncio.run(main())
