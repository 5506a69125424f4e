"""End-to-end latency at a steady rate, and each service's peak memory under it.

The three services run as processes (as ``cxloop up`` runs them) with default settings.
An open-loop generator sends single answers at --rate per second for --seconds. Twice a
second one of them is a probe: a detractor with a location of its own, so that
  score     the time from its 202 to /v1/scores counting it (polled every 10 ms), and
  webhook   the time from its 202 to its alert arriving at a webhook receiver
are measured for that one answer. Peak RSS is each process's VmHWM at the end.

    python bench/latency.py --rate 500 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from common import LoadClient, Result, Servers, percentile, servers, stack
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.servers import free_port
from tests.helpers import http_server


class Receiver:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}

    async def hook(self, request: Request) -> JSONResponse:
        body: dict[str, Any] = await request.json()
        self.arrived.setdefault(body["data"]["alert"]["customer_id"], time.monotonic())
        return JSONResponse({"ok": True})


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


async def measure(srv: Servers, rate: int, seconds: int) -> list[Result]:
    receiver = Receiver()
    hook_app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    rng = random.Random(3)
    async with http_server(hook_app, free_port()) as hook_url:
        config = Path(tempfile.mkdtemp()) / "alerting.yaml"
        config.write_text(
            f"receivers:\n  - name: bench\n    type: webhook\n    url: {hook_url}/hook\n"
            "routes:\n  - receiver: bench\n"
        )
        async with stack(srv, CXLOOP_ALERTING_CONFIG_PATH=str(config)) as s:
            collector = LoadClient(s.urls["collector"], s.api_key, connections=64)
            async with s.client("scorer") as scorer:
                sent, failed = 0, 0
                accepted_at: dict[str, float] = {}
                to_score: list[float] = []
                tasks: set[asyncio.Task[None]] = set()

                async def send(body: dict[str, Any], probe: bool) -> None:
                    nonlocal sent, failed
                    status, _ = await collector.post("/v1/responses", json.dumps(body).encode())
                    if status != 202:
                        failed += 1
                        return
                    sent += 1
                    if probe:
                        at = accepted_at[body["customer_id"]] = time.monotonic()
                        location = body["segments"]["location"]
                        while True:
                            got = await scorer.get(
                                "/v1/scores",
                                params={"metric": "nps", "window": "1h", "location": location},
                            )
                            if got.status_code == 200 and got.json()["n"] >= 1:
                                to_score.append(time.monotonic() - at)
                                return
                            await asyncio.sleep(0.01)

                started = time.monotonic()
                total = rate * seconds
                for i in range(total):
                    # Open loop: each answer leaves on schedule whether or not others are done.
                    delay = started + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    probe = i % (rate // 2) == 0
                    body = (
                        answer(rng, f"probe-{i}", 2, f"probe-{i}")
                        if probe
                        else answer(rng, f"c{rng.randint(1, 50_000)}", _score(rng), "tokyo")
                    )
                    task = asyncio.create_task(send(body, probe))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                achieved = total / (time.monotonic() - started)
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
                deadline = time.monotonic() + 30
                while len(receiver.arrived.keys() & accepted_at.keys()) < len(accepted_at):
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.1)
                await collector.close()
                to_hook = [
                    receiver.arrived[c] - t for c, t in accepted_at.items() if c in receiver.arrived
                ]
                rss = s.peak_rss_mib()
    print(
        f"  {sent:,} accepted ({failed} failed) at {achieved:,.0f}/s; "
        f"{len(to_score)} score probes, {len(to_hook)}/{len(accepted_at)} webhooks",
        flush=True,
    )
    setup = f"{rate}/s for {seconds}s ({achieved:,.0f}/s achieved), {failed} failed requests"
    results = []
    for name, values, missing in (
        ("202 → counted in /v1/scores", to_score, 0),
        ("detractor's 202 → webhook received", to_hook, len(accepted_at) - len(to_hook)),
    ):
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
                + (f"; {missing} webhooks never arrived" if missing else ""),
            )
        )
    results.append(
        Result(
            "Peak RSS under that load",
            max(rss.values()),
            "MiB",
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
    args = parser.parse_args()
    async with servers() as srv:
        for r in await measure(srv, args.rate, args.seconds):
            print(f"{r.name}: {r.value:,.0f} {r.unit} ({r.note})")


if __name__ == "__main__":
    asyncio.run(main())
