"""Collector ingest, single and batched, against the limits of HTTP and of Kafka.

Side by side, in one run, on the same machine:
  single   wrk POSTs one answer per request (a fresh event_id each, as clients send them) to
           the collector, then to bare_app.py: FastAPI parsing the same body with the same
           pydantic model and answering 202 without Kafka. One uvicorn worker each.
  batch    four clients POST batches of 500 answers to the collector, against a raw aiokafka
           producer (acks=all) sending the same encoded records: the Kafka limit.

    python bench/ingest.py --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from common import Result, Servers, servers, stack, until

from services.servers import ServerProcess, free_port
from shared.events import ResponseSubmitted
from shared.kafka import encode, make_producer
from shared.topics import Topic

_WRK_SCRIPT = r"""
local key = os.getenv("BENCH_KEY")
local body = '{"event_id":"%s","metric":"nps","score":%d,"channel":"web",'
  .. '"survey_type":"transactional","touchpoint":"checkout","customer_id":"c%d",'
  .. '"comment":"配送が遅い","reasons":["wait_time"],"segments":{"location":"tokyo"}}'
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}
setup = function(thread) thread:set("seed", math.random(1, 1000000)) end
init = function() math.randomseed(os.time() + seed) end
local function uuid4()
  return string.format("%06x%02x-%04x-4%03x-%04x-%06x%06x",
    math.random(0, 0xffffff), math.random(0, 0xff), math.random(0, 0xffff),
    math.random(0, 0xfff), 0x8000 + math.random(0, 0x3fff),
    math.random(0, 0xffffff), math.random(0, 0xffffff))
end
request = function()
  local b = string.format(body, uuid4(), math.random(0, 10), math.random(1, 100000))
  return wrk.format("POST", "/v1/responses", headers, b)
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, key: str, seconds: int, connections: int) -> tuple[float, int, int]:
    """Return (requests/s, requests, non-2xx) of one wrk run."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
        env={"BENCH_KEY": key, "PATH": "/usr/bin:/bin"},
    ).stdout
    Path(script.name).unlink()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    if errors:
        print(f"  wrk: {errors.group(0)}", flush=True)
    return rate, total, int(bad.group(1)) if bad else 0


async def single(srv: Servers, seconds: int, connections: int) -> Result:
    port = free_port()
    bare = ServerProcess("bare", sink=None)
    await bare.spawn(sys.executable, str(Path(__file__).with_name("bare_app.py")), str(port))
    try:
        async with httpx.AsyncClient() as client:

            async def up() -> bool:
                try:
                    await client.get(f"http://127.0.0.1:{port}/docs")
                    return True
                except httpx.TransportError:
                    return False

            await until(up, timeout=30)
        # A warm-up, then the measured run, for both.
        await asyncio.to_thread(run_wrk, f"http://127.0.0.1:{port}", "x", 2, connections)
        bare_rate, _, bare_bad = await asyncio.to_thread(
            run_wrk, f"http://127.0.0.1:{port}", "x", seconds, connections
        )
    finally:
        await bare.stop()
    async with stack(srv, services=("collector",)) as s:
        url = s.urls["collector"]
        await asyncio.to_thread(run_wrk, url, s.api_key, 2, connections)
        rate, total, bad = await asyncio.to_thread(run_wrk, url, s.api_key, seconds, connections)
        rss = s.peak_rss_mib()["collector"]
    print(
        f"  single: collector {rate:,.0f}/s ({bad} non-2xx of {total:,}), bare {bare_rate:,.0f}/s"
    )
    return Result(
        "Single-event ingest vs bare FastAPI",
        rate,
        "requests/s",
        "FastAPI + the same pydantic model, no Kafka",
        bare_rate,
        "≥ 0.8",
        rate / bare_rate >= 0.8 and bad == 0 and bare_bad == 0,
        f"wrk, {connections} connections, {seconds}s each; collector answered "
        f"{bad} non-2xx; collector peak RSS {rss:.0f} MiB",
    )


def batch_body(rng: random.Random, size: int) -> bytes:
    items = [
        {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "metric": "nps",
            "score": rng.randint(0, 10),
            "channel": "web",
            "survey_type": "transactional",
            "touchpoint": "checkout",
            "customer_id": f"c{rng.randint(1, 100_000)}",
            "comment": "配送が遅い",
            "reasons": ["wait_time"],
            "segments": {"location": "tokyo"},
        }
        for _ in range(size)
    ]
    return json.dumps({"items": items}, ensure_ascii=False).encode()


async def batches(srv: Servers, seconds: int, clients: int) -> Result:
    rng = random.Random(2)
    async with stack(srv, services=("collector",)) as s:
        accepted = 0
        failed = 0
        deadline = time.monotonic() + seconds

        async def client() -> None:
            nonlocal accepted, failed
            async with s.client("collector") as http:
                while time.monotonic() < deadline:
                    body = batch_body(rng, 500)
                    r = await http.post(
                        "/v1/responses/batch",
                        content=body,
                        headers={"Content-Type": "application/json"},
                    )
                    if r.status_code == 200:
                        accepted += r.json()["accepted"]
                    else:
                        failed += 1

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        rate = accepted / (time.monotonic() - started)
        rss = s.peak_rss_mib()["collector"]

    kafka = await srv.topics()
    now = datetime.now(UTC)
    records = []
    for item in json.loads(batch_body(rng, 20_000))["items"] * 5:
        event = ResponseSubmitted.model_validate(
            {
                **item,
                "event_id": uuid.uuid4(),
                "scale": 10,
                "occurred_at": now,
                "received_at": now,
                "source": "api",
            }
        )
        records.append((encode(event), event.customer_id.encode()))
    producer = make_producer(kafka)
    await producer.start()
    try:
        topic = kafka.topic(Topic.RESPONSES)
        started = time.monotonic()
        for i in range(0, len(records), 500):
            futures = [await producer.send(topic, v, key=k) for v, k in records[i : i + 500]]
            await asyncio.gather(*futures)
        raw = len(records) / (time.monotonic() - started)
    finally:
        await producer.stop()
    print(f"  batch: collector {rate:,.0f} events/s ({failed} failed requests), raw {raw:,.0f}/s")
    return Result(
        "Batch ingest vs raw producer",
        rate,
        "events/s",
        "aiokafka producer, acks=all, same records, 500 at a time",
        raw,
        "≥ 0.7",
        rate / raw >= 0.7 and failed == 0,
        f"{clients} clients × batches of 500, {seconds}s; {failed} failed requests; "
        f"collector peak RSS {rss:.0f} MiB",
    )


async def measure(srv: Servers, seconds: int) -> list[Result]:
    results = []
    if wrk_available():
        results.append(await single(srv, seconds, connections=64))
    else:
        print("  single: skipped, wrk is not installed (apt-get install wrk)", flush=True)
    results.append(await batches(srv, seconds, clients=4))
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    async with servers() as srv:
        for r in await measure(srv, args.seconds):
            print(f"{r.name}: {r.value:,.0f} {r.unit} / {r.reference_value:,.0f} = {r.ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
