"""Collector ingest, single and batched, against the limits of HTTP and of Kafka.

Side by side, in one run, on the same machine:
  single   wrk POSTs one answer per request (a fresh event_id each, as clients send them) to
           the collector, then to bare_app.py: FastAPI parsing the same body with the same
           pydantic model and answering 202 without Kafka. One uvicorn worker each.
           The collector runs with one worker, then with two (CXLOOP_COLLECTOR_WORKERS=2,
           the same wrk), with its CPU-seconds and the machine's idle CPU during each.
  batch    four clients POST batches of 500 answers to the collector, against a raw aiokafka
           producer (acks=all) sending the same encoded records from four concurrent
           senders, 500 at a time, each awaiting its acks: the Kafka limit.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from common import (
    CpuMeter,
    Result,
    Servers,
    ServiceExited,
    cpu_times,
    idle_cpu_fraction,
    ratio,
    servers,
    skipped,
    stack,
    until,
)

from services.servers import ServerProcess, free_port
from shared.events import ResponseSubmitted
from shared.kafka import encode, make_producer
from shared.topics import Topic

# What every wrk script here shares: a seed per thread and a random UUID per request.
WRK_PRELUDE = r"""
setup = function(thread) thread:set("seed", math.random(1, 1000000)) end
init = function() math.randomseed(os.time() + seed) end
local function uuid4()
  return string.format("%06x%02x-%04x-4%03x-%04x-%06x%06x",
    math.random(0, 0xffffff), math.random(0, 0xff), math.random(0, 0xffff),
    math.random(0, 0xfff), 0x8000 + math.random(0, 0x3fff),
    math.random(0, 0xffffff), math.random(0, 0xffffff))
end
"""

_WRK_SCRIPT = (
    r"""
local key = os.getenv("BENCH_KEY")
local body = '{"event_id":"%s","metric":"nps","score":%d,"channel":"web",'
  .. '"survey_type":"transactional","touchpoint":"checkout","customer_id":"c%d",'
  .. '"comment":"配送が遅い","reasons":["wait_time"],"segments":{"location":"tokyo"}}'
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}
"""
    + WRK_PRELUDE
    + r"""
request = function()
  local b = string.format(body, uuid4(), math.random(0, 10), math.random(1, 100000))
  return wrk.format("POST", "/v1/responses", headers, b)
end
"""
)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(url: str, key: str, seconds: int, connections: int) -> tuple[float, int, int]:
    """Return (2xx requests/s, requests, non-2xx) of one wrk run: wrk's own Requests/sec
    counts failed requests too, so the rate is the answered ones over wrk's duration."""
    out = wrk_output(
        ["-t1", f"-c{connections}", f"-d{seconds}s"], _WRK_SCRIPT, url, {"BENCH_KEY": key}
    )
    total, took = wrk_totals(out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non_2xx = int(bad.group(1)) if bad else 0
    errors = re.search(r"Socket errors: .*", out)
    if errors:
        print(f"  wrk: {errors.group(0)}", flush=True)
    return (total - non_2xx) / took if took else 0.0, total, non_2xx


def wrk_output(options: list[str], script: str, url: str, env: dict[str, str]) -> str:
    """Run wrk with ``script``; return what it printed. The script file is removed whatever
    happens; a failing wrk raises RuntimeError with its last words."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    try:
        done = subprocess.run(
            ["wrk", *options, "-s", file.name, url],
            capture_output=True,
            text=True,
            env={**env, "PATH": "/usr/bin:/bin"},
        )
    finally:
        Path(file.name).unlink(missing_ok=True)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"wrk exited {done.returncode}: {last[0]}")
    return done.stdout


def wrk_totals(out: str) -> tuple[int, float]:
    """(requests, seconds) from wrk's "N requests in 15.00s" line."""
    found = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    if found is None:
        raise RuntimeError(f"wrk printed no request count:\n{out}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[found.group(3)]
    return int(found.group(1)), float(found.group(2)) * scale


@dataclass
class Run:
    """One measured run of a collector: its rate and what it cost the machine."""

    rate: float
    total: int
    bad: int
    cpu_seconds: float  # the collector's over all its processes, and its Postgres backends
    idle: float  # the machine's idle share during the run
    processes: int
    rss_mib: float  # the largest peak resident set of one of its processes
    seconds: float

    @property
    def per_cpu_second(self) -> float:
        return self.rate * self.seconds / self.cpu_seconds if self.cpu_seconds else 0.0


async def bare_rate(seconds: int, connections: int) -> tuple[float, int]:
    """wrk against bare_app.py: (requests/s, non-2xx)."""
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
        # A warm-up, then the measured run.
        await asyncio.to_thread(run_wrk, f"http://127.0.0.1:{port}", "x", 2, connections)
        rate, _, bad = await asyncio.to_thread(
            run_wrk, f"http://127.0.0.1:{port}", "x", seconds, connections
        )
        return rate, bad
    finally:
        await bare.stop()


async def collector_run(srv: Servers, seconds: int, connections: int, workers: int) -> Run:
    """wrk against a collector of ``workers`` processes (``CXLOOP_COLLECTOR_WORKERS``; left
    unset for one, the default)."""
    env = {"CXLOOP_COLLECTOR_WORKERS": str(workers)} if workers != 1 else {}
    async with stack(srv, services=("collector",), **env) as s:
        url = s.urls["collector"]
        await asyncio.to_thread(run_wrk, url, s.api_key, 2, connections)
        pids = s.pids("collector")
        meter = CpuMeter(srv.postgres, s.database, lambda: pids)
        await meter.start()
        machine = cpu_times()
        started = time.monotonic()
        rate, total, bad = await asyncio.to_thread(run_wrk, url, s.api_key, seconds, connections)
        took = time.monotonic() - started
        cost = await meter.stop()
        run = Run(
            rate,
            total,
            bad,
            cost.server,
            idle_cpu_fraction(machine, cpu_times()),
            len(pids),
            s.peak_rss_mib()["collector"],
            took,
        )
    print(
        f"  single, {workers} worker(s): {rate:,.0f}/s ({bad} non-2xx of {total:,}), "
        f"{run.processes} process(es), {run.per_cpu_second:,.0f} per CPU-second, "
        f"idle {run.idle:.0%}",
        flush=True,
    )
    return run


async def single(srv: Servers, seconds: int, connections: int) -> list[Result]:
    """Single events: the collector against bare FastAPI, and 2 workers against 1."""
    bare, bare_bad = await bare_rate(seconds, connections)
    one = await collector_run(srv, seconds, connections, workers=1)
    try:
        two: Run | None = await collector_run(srv, seconds, connections, workers=2)
    except ServiceExited as exc:
        print(f"  single, 2 workers: skipped, {exc}", flush=True)
        two = None
    print(f"  single: bare {bare:,.0f}/s", flush=True)
    wrk = f"wrk, {connections} connections, {seconds}s each"
    results = [
        Result(
            "Single-event ingest vs bare FastAPI",
            one.rate,
            "requests/s",
            "FastAPI + the same pydantic model, no Kafka",
            bare,
            "≥ 0.4",
            (ratio(one.rate, bare) or 0) >= 0.4 and one.bad == 0 and bare_bad == 0,
            f"{wrk}; one collector worker; {one.bad} non-2xx; "
            f"{one.per_cpu_second:,.0f} requests per server CPU-second (the collector's "
            "processes and its database's Postgres backends)",
        ),
    ]
    if two is None:
        results.append(
            skipped(
                "Single-event ingest, 2 collector workers vs 1",
                "requests/s",
                "report the factor",
                "1 worker",
                note="skipped: this collector does not accept CXLOOP_COLLECTOR_WORKERS",
            )
        )
    else:
        results.append(scale_out(one, two, wrk))
    rss = max(one.rss_mib, two.rss_mib if two else 0)
    with_two = f", {two.rss_mib:.0f} MiB with 2" if two else ""
    results.append(
        Result(
            "Peak RSS of the collector under the single-event load",
            rss,
            "MiB",
            target="≤ 150 MiB per process",
            met=rss <= 150,
            note=f"largest process: {one.rss_mib:.0f} MiB with 1 worker{with_two}",
        )
    )
    return results


def scale_out(one: Run, two: Run, wrk: str) -> Result:
    return Result(
        "Single-event ingest, 2 collector workers vs 1",
        two.rate,
        "requests/s",
        "1 worker",
        one.rate,
        "report the factor",
        None,
        f"{wrk}; CXLOOP_COLLECTOR_WORKERS=2 ran {two.processes} process(es) "
        f"(1 would mean the build ignores it); machine idle {two.idle:.0%} with 2 "
        f"workers, {one.idle:.0%} with 1; {two.bad} non-2xx; "
        f"{two.per_cpu_second:,.0f} against {one.per_cpu_second:,.0f} requests "
        "per server CPU-second (collector and its Postgres backends)",
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


def raw_records(rng: random.Random, n: int) -> list[tuple[bytes, bytes]]:
    """``n`` records as the collector would produce them: (encoded event, key)."""
    now = datetime.now(UTC)
    records = []
    for item in json.loads(batch_body(rng, n))["items"]:
        event = ResponseSubmitted.model_validate(
            {**item, "scale": 10, "occurred_at": now, "received_at": now, "source": "api"}
        )
        records.append((encode(event), event.customer_id.encode()))
    return records


async def raw_producer(srv: Servers, records: list[tuple[bytes, bytes]], senders: int) -> float:
    """The Kafka limit: one aiokafka producer (acks=all) and ``senders`` concurrent loops,
    each sending 500 records and awaiting their acks before the next 500, as the collector's
    clients send batches. Return events/s."""
    kafka = await srv.topics()
    producer = make_producer(kafka)
    await producer.start()
    try:
        topic = kafka.topic(Topic.RESPONSES)
        chunks = iter(range(0, len(records), 500))

        async def sender() -> None:
            for i in chunks:
                futures = [await producer.send(topic, v, key=k) for v, k in records[i : i + 500]]
                await asyncio.gather(*futures)

        started = time.monotonic()
        await asyncio.gather(*(sender() for _ in range(senders)))
        return len(records) / (time.monotonic() - started)
    finally:
        await producer.stop()


async def batches(srv: Servers, seconds: int, clients: int) -> list[Result]:
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

        pids = s.pids("collector")
        meter = CpuMeter(srv.postgres, s.database, lambda: pids)
        await meter.start()
        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        rate = accepted / (time.monotonic() - started)
        cost = await meter.stop()
        per_cpu = accepted / max(1e-9, cost.server)
        rss = s.peak_rss_mib()["collector"]

    # The same number of records as the collector took, at least 20,000, made ahead.
    records = raw_records(rng, max(20_000, accepted))
    raw = await raw_producer(srv, records, clients)
    print(
        f"  batch: collector {rate:,.0f} events/s ({failed} failed requests), "
        f"{per_cpu:,.0f} per server CPU-second; raw producer, {clients} senders, {raw:,.0f}/s",
        flush=True,
    )
    return [
        Result(
            "Batch ingest vs raw producer",
            rate,
            "events/s",
            f"aiokafka producer, acks=all, same records, {clients} senders × 500 at a time",
            raw,
            "≥ 0.5",
            rate / raw >= 0.5 and failed == 0,
            f"{clients} clients × batches of 500, {seconds}s; {failed} failed requests; "
            f"{per_cpu:,.0f} events per server CPU-second ({cost.describe()})",
        ),
        Result(
            "Peak RSS of the collector under the batch load",
            rss,
            "MiB",
            target="≤ 150 MiB per process",
            met=rss <= 150,
            note=f"one collector worker, {clients} clients × batches of 500",
        ),
    ]


async def measure(srv: Servers, seconds: int) -> list[Result]:
    results = []
    if wrk_available():
        results += await single(srv, seconds, connections=64)
    else:
        note = "skipped: wrk is not installed (apt-get install wrk)"
        print(f"  single: {note}", flush=True)
        results += [
            skipped("Single-event ingest vs bare FastAPI", "requests/s", "≥ 0.4",
                    "FastAPI + the same pydantic model, no Kafka", note=note),
            skipped("Single-event ingest, 2 collector workers vs 1", "requests/s",
                    "report the factor", "1 worker", note=note),
            skipped("Peak RSS of the collector under the single-event load", "MiB",
                    "≤ 150 MiB per process", note=note),
        ]  # fmt: skip
    results += await batches(srv, seconds, clients=4)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    async with servers() as srv:
        for r in await measure(srv, args.seconds):
            ratio = f" = {r.ratio:.2f}" if r.ratio is not None else ""
            print(f"{r.name}: {r.value:,.0f} {r.unit}{ratio} ({r.note})")


if __name__ == "__main__":
    asyncio.run(main())
