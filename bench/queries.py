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

    python bench/queries.py --responses 10000000 --requests 200
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from common import Result, Servers, percentile, servers, stack
from sqlalchemy.ext.asyncio import create_async_engine

from shared.settings import DatabaseSettings
from shared.timing import parse_header
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
    client: httpx.AsyncClient, path: str, params: dict[str, Any], requests: int
) -> Timed:
    """``requests`` GETs, one at a time, after a warm-up."""
    for _ in range(10):
        (await client.get(path, params=params)).raise_for_status()
    out = Timed()
    for _ in range(requests):
        started = time.perf_counter()
        r = await client.get(path, params=params)
        out.times.append(time.perf_counter() - started)
        r.raise_for_status()
        for name, ms in parse_header(r.headers.get("server-timing", "")).items():
            out.parts.setdefault(name, []).append(ms)
    return out


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


async def measure(srv: Servers, responses: int, requests: int) -> list[Result]:
    url = await srv.database()
    seeded, buckets = await seed(url, responses)
    print(f"  seeded {responses:,} responses, {buckets:,} buckets in {seeded:.0f}s", flush=True)
    results = []
    async with stack(srv, services=("scorer",), CXLOOP_DATABASE_URL=url) as s:
        async with s.client("scorer") as client:
            for name, (path, params) in QUERIES.items():
                got = await timed(client, path, params, requests)
                results.append(result(name, got.p50, got.p99, requests, responses, buckets))
        async with httpx.AsyncClient(base_url=s.urls["scorer"], timeout=30) as browser:
            await sign_in(browser, url, s.api_key)
            for name, (path, params) in PAGES.items():
                if path == "/dashboard/live":
                    # As dashboard.js polls: from the cursor of the call before.
                    first = await browser.get(path)
                    first.raise_for_status()
                    params = {"cursor": first.json()["cursor"]}
                got = await timed(browser, path, params, requests)
                results.append(result(name, got.p50, got.p99, requests, responses, buckets))
                print("\n".join(got.table()), flush=True)
                if got.parts:
                    results[-1].note += f"; {got.summary()}"
        rss = s.peak_rss_mib()["scorer"]
    results[-1].note += f"; scorer peak RSS {rss:.0f} MiB"
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--responses", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    async with servers() as srv:
        for r in await measure(srv, args.responses, args.requests):
            print(f"{r.name}: {r.value:.1f} {r.unit} ({r.note})")


if __name__ == "__main__":
    asyncio.run(main())
