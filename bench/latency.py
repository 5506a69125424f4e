"""End-to-end latency at a steady rate, and each service's peak memory under it.

The three services run as processes (as ``cxloop up`` runs them) with default settings.
An open-loop generator sends single answers at --rate per second for --seconds. Every Nth
of them (about --probes in all) is a probe: a detractor with a location of its own, so that
  score     the time from sending its request to /v1/scores counting it (one request grouped
            by location every 10 ms covers every probe still waiting), and
  webhook   the time from sending its request to its alert arriving at a webhook receiver
            (hook_receiver.py, a process of its own, so that its arrivals are not stamped
            late by the generator's own loop)
are measured for that one answer. A request is timed from when it is due to leave, before
it waits for a free connection (started + i/rate, even when the generator itself fell
behind; its largest lag is reported). The achieved rate counts requests completed with a 202.
Peak RSS is each process's VmHWM at the end.

    python bench/latency.py --rate 500 --seconds 60 --probes 1000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from common import (
    LoadClient,
    Result,
    Servers,
    hook_receiver,
    percentile,
    servers,
    skipped,
    stack,
)


@contextlib.asynccontextmanager
async def _scratch() -> AsyncIterator[str]:
    with tempfile.TemporaryDirectory(prefix="cxloop-latency-") as tmp:
        yield tmp


async def arrivals(client: httpx.AsyncClient) -> dict[str, float]:
    """Each customer id's first alert arrival at the receiver (time.monotonic())."""
    got: dict[str, float] = (await client.get("/arrivals")).json()
    return got


def answer(rng: random.Random, customer: str, score: int, location: str) -> dict[str, Any]:
    return {
        "metric": "nps",
        "score": score,
        "channel": rng.choice(["web", "sms", "call_center"]),
        "survey_type": "transactional",
        "touchpoint": "checkout",
        "customer_id": customer,
        "comment": "配送が遅い" if score < 7 else None,
        "segments": {"location": location},
    }


def _score(rng: random.Random) -> int:
    # A typical spread: about a quarter detractors, a third promoters.
    return rng.choices(range(11), weights=[2, 1, 1, 2, 2, 3, 4, 10, 15, 20, 15])[0]


async def measure(srv: Servers, rate: int, seconds: int, probes: int = 1000) -> list[Result]:
    rng = random.Random(3)
    total = rate * seconds
    every = max(1, total // probes)
    async with (
        hook_receiver() as hook,
        _scratch() as tmp,
    ):
        config = Path(tmp) / "alerting.yaml"
        hook_url = hook.base_url.join("/hook")
        config.write_text(
            f"receivers:\n  - name: bench\n    type: webhook\n    url: {hook_url}\n"
            "routes:\n  - receiver: bench\n"
        )
        async with stack(srv, CXLOOP_ALERTING_CONFIG_PATH=str(config)) as s:
            collector = LoadClient(s.urls["collector"], s.api_key, connections=64)
            async with s.client("scorer") as scorer:
                accepted, failed = 0, 0
                last_done = 0.0
                sent_at: dict[str, float] = {}  # probe location -> when its request left
                waiting: dict[str, float] = {}  # accepted probes not yet counted
                to_score: list[float] = []
                tasks: set[asyncio.Task[None]] = set()
                sending = True

                async def send(body: dict[str, Any], probe: bool, at: float) -> None:
                    # ``at`` is when the request was due to leave, not when this task first
                    # ran: a generator that fell behind does not hide its slip.
                    nonlocal accepted, failed, last_done
                    status, _ = await collector.post("/v1/responses", json.dumps(body).encode())
                    last_done = time.monotonic()
                    if status != 202:
                        failed += 1
                        return
                    accepted += 1
                    if probe:
                        location = body["segments"]["location"]
                        sent_at[location] = waiting[location] = at

                async def poll() -> None:
                    # One request per round for every probe still waiting, so that polling
                    # does not load the scorer more as probes grow more numerous.
                    while sending or waiting:
                        got = await scorer.get(
                            "/v1/scores",
                            params={"metric": "nps", "window": "1h", "group_by": "location"},
                        )
                        now = time.monotonic()
                        if got.status_code == 200:
                            for group in got.json()["groups"] or []:
                                if group["n"] >= 1 and group["group"] in waiting:
                                    to_score.append(now - waiting.pop(group["group"]))
                        await asyncio.sleep(0.01)

                poller = asyncio.create_task(poll())
                started = time.monotonic()
                max_lag = 0.0
                for i in range(total):
                    # Open loop: each answer leaves on schedule whether or not others are done.
                    due = started + i / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        max_lag = max(max_lag, -delay)
                    probe = i % every == 0
                    body = (
                        answer(rng, f"probe-{i}", 2, f"probe-{i}")
                        if probe
                        else answer(rng, f"c{rng.randint(1, 50_000)}", _score(rng), "tokyo")
                    )
                    task = asyncio.create_task(send(body, probe, due))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
                achieved = accepted / max(1e-9, last_done - started)
                sending = False
                with contextlib.suppress(TimeoutError):  # any still waiting count as missing
                    await asyncio.wait_for(poller, timeout=30)
                deadline = time.monotonic() + 30
                arrived = await arrivals(hook)
                while len(arrived.keys() & sent_at.keys()) < len(sent_at):
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
                    arrived = await arrivals(hook)
                await collector.close()
                to_hook = [arrived[c] - t for c, t in sent_at.items() if c in arrived]
                rss = s.peak_rss_mib()
    print(
        f"  {accepted:,} accepted ({failed} failed) at {achieved:,.0f}/s; "
        f"{len(to_score)}/{len(sent_at)} score probes, {len(to_hook)}/{len(sent_at)} webhooks",
        flush=True,
    )
    setup = (
        f"{rate}/s scheduled for {seconds}s, {achieved:,.0f}/s completed with a 202; "
        f"{failed} failed requests; every {every}th answer a probe, timed from when its "
        f"request was due to leave; the generator fell behind its schedule by at most "
        f"{max_lag * 1000:.0f} ms (counted in the latencies)"
    )
    results = []
    for name, values in (
        ("request → counted in /v1/scores", to_score),
        ("detractor's request → webhook received", to_hook),
    ):
        missing = len(sent_at) - len(values)
        if not values:
            note = f"failed: none of {len(sent_at)} probes arrived; {setup}"
            results.append(skipped(f"Latency p99, {name}", "ms", "p99 ≤ 1,000 ms", note=note))
            results[-1].met = False
            continue
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"  {name}: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms", flush=True)
        results.append(
            Result(
                f"Latency p99, {name}",
                p99 * 1000,
                "ms",
                target="p99 ≤ 1,000 ms",
                met=p99 <= 1.0 and failed == 0 and missing == 0,
                note=f"p50 {p50 * 1000:.0f} ms over {len(values)} probes; {setup}"
                + (f"; {missing} probes never arrived" if missing else ""),
            )
        )
    results.append(
        Result(
            "Peak RSS under that load",
            max(rss.values()),
            "MiB",
            target="≤ 150 MiB per process",
            met=max(rss.values()) <= 150,
            note=", ".join(f"{k} {v:.0f} MiB" for k, v in rss.items()),
        )
    )
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--probes", type=int, default=1000)
    args = parser.parse_args()
    async with servers() as srv:
        for r in await measure(srv, args.rate, args.seconds, args.probes):
            print(f"{r.name}: {r.value:,.0f} {r.unit} ({r.note})")


if __name__ == "__main__":
    asyncio.run(main())
