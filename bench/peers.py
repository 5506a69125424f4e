"""cxloop against what a user would pick instead, side by side on the same Kafka and Postgres.

  bridge   the Strimzi Kafka Bridge 1.0.0 (HTTP -> Kafka, Java) against the collector: single
           events (wrk, 64 connections, one record per request) and batches of 500 (four
           clients); each side's topic is counted against what was acknowledged (exactly for
           batches; for wrk, up to its 64 requests abandoned in flight at its deadline more)
  quix     Quix Streams 3.28.1 against the scorer: a pre-filled topic of NPS answers to hourly
           promoter/passive/detractor counts per channel in Postgres, the counts checked equal
  bare     a confluent-kafka loop that only counts the same topic's records, for context

The bridge comes from a folder holding its jar and install.sh (--bridge DIR, or
CXLOOP_BENCH_BRIDGE); it needs Java 21 or newer, and its dependencies are fetched once by mvn
into ~/.cache/cxloop/peers/. Quix runs in its own venv there (pip), never in cxloop's. A peer
that cannot run is reported as a skipped row with the reason.

    python bench/peers.py --bridge ../shared/peers/strimzi-kafka-bridge-1.0.0 [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from common import (
    Cpu,
    CpuMeter,
    GroupProgress,
    LoadClient,
    Result,
    Servers,
    cache_dir,
    checkpoint,
    child_environment,
    content_check,
    failure,
    process_tree,
    ratio,
    servers,
    skipped,
    stack,
    until,
    vm_hwm_kib,
    wait_done,
)
from ingest import _WRK_SCRIPT, WRK_PRELUDE, batch_body, wrk_available, wrk_output, wrk_totals
from scorer_throughput import consume_timeout, fill, run_scorer
from sqlalchemy.engine import make_url

from services.servers import ServerProcess, free_port
from shared.settings import KafkaSettings
from shared.topics import TOPIC_SPECS, Topic

HERE = Path(__file__).resolve().parent
CACHE = cache_dir() / "peers"
QUIX_COMMIT_INTERVAL = 1.0
QUIX = "quixstreams[postgresql]==3.28.1"
BRIDGE_ENV = "CXLOOP_BENCH_BRIDGE"
CONNECTIONS = 64
CLIENTS = 4
BATCH = 500
SPREAD_HOURS = 24.0

BRIDGE_DOES = (
    "Strimzi Kafka Bridge 1.0.0, POST /topics/{topic}, acks=all; "
    "no authentication, deduplication or enrichment"
)
QUIX_DOES = (
    "Quix Streams 3.28.1: group_by channel, 1 h tumbling window, PostgreSQLSink upsert; "
    "stores only the counts (the scorer also keeps the ledger, raw rows, roll-ups, reasons "
    "and activity)"
)

# The collector's single-event body from bench/ingest.py, as one record of the bridge's API,
# keyed by the customer as the collector keys it.
_BRIDGE_WRK_SCRIPT = (
    r"""
local topic = os.getenv("BENCH_TOPIC")
local body = '{"records":[{"key":"c%d","value":{"event_id":"%s","metric":"nps","score":%d,'
  .. '"channel":"web","survey_type":"transactional","touchpoint":"checkout","customer_id":"c%d",'
  .. '"comment":"配送が遅い","reasons":["wait_time"],"segments":{"location":"tokyo"}}}]}'
local headers = {["Content-Type"] = "application/vnd.kafka.json.v2+json"}
"""
    + WRK_PRELUDE
    + r"""
request = function()
  local customer = math.random(1, 100000)
  local b = string.format(body, customer, uuid4(), math.random(0, 10), customer)
  return wrk.format("POST", "/topics/" .. topic, headers, b)
end
"""
)


class PeerUnavailable(Exception):
    """A peer cannot run here; the message says why, for the skipped row's note."""


# --- processes ----------------------------------------------------------------------------


def pid_of(process: ServerProcess) -> int:
    assert process.proc is not None
    return process.proc.pid


# --- load -----------------------------------------------------------------------------------


@dataclass
class WrkRun:
    rate: float
    acked: int
    non_2xx: int
    errors: int
    p99_ms: float


def run_wrk_latency(url: str, script: str, env: dict[str, str], seconds: int) -> WrkRun:
    """bench/ingest.py's run_wrk with --latency: the 2xx rate, p99 and socket errors."""
    out = wrk_output(["-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"], script, url, env)
    total, took = wrk_totals(out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non_2xx = int(bad.group(1)) if bad else 0
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(g) for g in socket.groups()) if socket else 0
    value, unit = re.search(
        r"\s99%\s+([\d.]+)(us|ms|s)", _need(r"\s99%\s+[\d.]+(?:us|ms|s)", out)
    ).groups()  # type: ignore[union-attr]
    p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    acked = total - non_2xx
    return WrkRun(acked / took if took else 0.0, acked, non_2xx, errors, p99_ms)


def _need(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise RuntimeError(f"wrk printed no {pattern!r}:\n{text}")
    return found.group(0)


def _match(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise RuntimeError(f"wrk printed no {pattern!r}:\n{text}")
    return found.group(1)


@dataclass
class BatchRun:
    rate: float
    acked: int
    failed: int
    sent: list[str] = field(default_factory=list)  # event ids of the acknowledged bodies


async def batch_load(
    client: LoadClient,
    path: str,
    wrap: Callable[[list[dict[str, object]]], bytes],
    acked_in: Callable[[bytes], int],
    seconds: int,
    seed: int,
) -> BatchRun:
    """Four clients POST batches of 500 answers (bench/ingest.py's batch_body) for ``seconds``;
    each side gets the same answers for the same ``seed``."""
    rng = random.Random(seed)
    acked = failed = 0
    sent: list[str] = []
    deadline = time.monotonic() + seconds

    async def one() -> None:
        nonlocal acked, failed
        while time.monotonic() < deadline:
            items = json.loads(batch_body(rng, BATCH))["items"]
            status, payload = await client.post(path, wrap(items))
            if status == 200:
                acked += acked_in(payload)
                sent.extend(str(item["event_id"]) for item in items)
            else:
                failed += 1

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(CLIENTS)))
    return BatchRun(acked / (time.monotonic() - started), acked, failed, sent)


def _collector_batch(items: list[dict[str, object]]) -> bytes:
    return json.dumps({"items": items}, ensure_ascii=False).encode()


def _bridge_batch(items: list[dict[str, object]]) -> bytes:
    records = [{"key": item["customer_id"], "value": item} for item in items]
    return json.dumps({"records": records}, ensure_ascii=False).encode()


def _collector_acked(payload: bytes) -> int:
    return int(json.loads(payload)["accepted"])


def _bridge_acked(payload: bytes) -> int:
    return sum("error_code" not in o for o in json.loads(payload)["offsets"])


async def topic_size(kafka: KafkaSettings) -> int:
    """Return the records the responses topic holds: the sum of its partitions' end offsets."""
    (spec,) = [s for s in TOPIC_SPECS if s.topic is Topic.RESPONSES]
    topic = kafka.topic(Topic.RESPONSES)
    consumer = AIOKafkaConsumer(**kafka.to_aiokafka_params())
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(spec.partitions)]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()


# --- the bridge -----------------------------------------------------------------------------


def java_major(java: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=60
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def find_java(minimum: int = 21) -> Path | None:
    """JAVA_HOME's java if it is new enough, else the newest enough one on PATH or in
    /usr/lib/jvm (Debian's JVM directory, where a JDK beside the default is not on PATH)."""
    candidates = []
    if home := os.environ.get("JAVA_HOME"):
        candidates.append(Path(home) / "bin" / "java")
    if on_path := shutil.which("java"):
        candidates.append(Path(on_path))
    candidates += sorted(Path("/usr/lib/jvm").glob("*/bin/java"), reverse=True)
    for java in candidates:
        if java.is_file() and (java_major(java) or 0) >= minimum:
            return java
    return None


def install_bridge(folder: Path) -> Path:
    """Run the folder's install.sh once into the cache; return the libs directory."""
    if not (folder / "install.sh").is_file():
        raise PeerUnavailable(f"skipped: {folder} holds no install.sh of the bridge")
    digest = hashlib.sha256()
    for jar in sorted(folder.glob("*.jar")):
        digest.update(jar.read_bytes())
    dest = CACHE / f"{folder.name}-{digest.hexdigest()[:16]}"
    done = subprocess.run(
        ["bash", str(folder / "install.sh"), str(dest)],
        capture_output=True,
        text=True,
        env=child_environment(),
    )
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise PeerUnavailable(f"skipped: the bridge's install.sh failed ({last[0]})")
    return dest / "libs"


@dataclass
class Bridge:
    url: str
    process: ServerProcess


@asynccontextmanager
async def bridge_running(folder: Path, java: Path, bootstrap: str) -> AsyncIterator[Bridge]:
    libs = await asyncio.to_thread(install_bridge, folder)
    port, management = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="cxloop-bridge-") as tmp:
        config = Path(tmp) / "application.properties"
        config.write_text(
            "bridge.id=cxloop-bench\n"
            f"http.host=127.0.0.1\nhttp.port={port}\nhttp.management.port={management}\n"
            f"kafka.bootstrap.servers={bootstrap}\nkafka.producer.acks=all\n"
        )
        argv = [str(java), "-Xmx1g"]
        if (folder / "log4j2.properties").is_file():
            argv.append(f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}")
        argv += ["-cp", f"{libs}/*", "io.strimzi.kafka.bridge.Application"]
        argv.append(f"--config-file={config}")
        process = ServerProcess("bridge", sink=None)
        await process.spawn(*argv, env=child_environment(), cwd=Path(tmp))
        try:
            async with httpx.AsyncClient() as client:

                async def ready() -> bool:
                    if not process.alive:
                        raise PeerUnavailable("bridge exited: " + " | ".join(process.tail[-3:]))
                    try:
                        url = f"http://127.0.0.1:{management}/ready"
                        return (await client.get(url)).status_code == 200
                    except httpx.TransportError:
                        return False

                try:
                    await until(ready, timeout=90, every=0.3)
                except TimeoutError:
                    tail = " | ".join(process.tail[-3:])
                    raise PeerUnavailable(
                        f"failed: the bridge was not ready in 90 s ({tail})"
                    ) from None
            yield Bridge(f"http://127.0.0.1:{port}", process)
        finally:
            await process.stop()


@dataclass
class Side:
    """One server's figures under one load."""

    rate: float
    acked: int
    failed: int
    cpu: Cpu
    rss_mib: float
    landed: int
    errors: int = 0
    p99_ms: float = 0.0
    content_ok: bool = True
    content: str = ""

    @property
    def per_cpu_second(self) -> float:
        """Acknowledged per server CPU-second: the server's processes and the Postgres
        backends of its database (the collector claims an idempotency key per request)."""
        return self.acked / self.cpu.server if self.cpu.server else 0.0

    def landed_ok(self, slack: int) -> bool:
        """Whether the topic holds the acknowledged records, and at most ``slack`` more: the
        requests wrk abandoned in flight at its deadline were never counted, but may land."""
        return self.acked <= self.landed <= self.acked + slack

    def check(self, slack: int) -> str:
        return f"{self._count(slack)}; {self.content}"

    def _count(self, slack: int) -> str:
        if self.landed == self.acked:
            return f"topic holds exactly the {self.acked:,} acknowledged records"
        verdict = "within" if self.landed_ok(slack) else "MISMATCH: outside"
        return (
            f"topic holds {self.landed:,} records for {self.acked:,} acknowledged ({verdict} "
            f"the {slack} requests wrk left in flight or timed out)"
        )


def warm_up_seconds(seconds: int) -> int:
    """A third of the measure, at least 5 s: the JVM compiles its hot paths in the first few
    seconds (after 2 s the bridge ran at a fifth of its warm rate)."""
    return max(5, seconds // 3)


async def _measured_wrk(
    url: str, script: str, env: dict[str, str], process: ServerProcess, kafka: KafkaSettings,
    seconds: int, meter: CpuMeter,
) -> Side:  # fmt: skip
    """Warm up, then measure; the topic is counted from after the warm-up settled."""
    await asyncio.to_thread(run_wrk_latency, url, script, env, warm_up_seconds(seconds))
    await asyncio.sleep(1)
    base = await topic_size(kafka)
    await meter.start()
    run = await asyncio.to_thread(run_wrk_latency, url, script, env, seconds)
    cpu = await meter.stop()
    await asyncio.sleep(1)
    landed = await topic_size(kafka) - base
    # wrk's Lua makes the event ids, so only repeats can be checked here.
    ok, content = await content_check(kafka, kafka.topic(Topic.RESPONSES))
    return Side(
        run.rate, run.acked, run.non_2xx, cpu, _rss(process), landed, run.errors, run.p99_ms,
        ok, content,
    )  # fmt: skip


async def _measured_batches(
    client: LoadClient,
    path: str,
    wrap: Callable[[list[dict[str, object]]], bytes],
    acked_in: Callable[[bytes], int],
    process: ServerProcess,
    kafka: KafkaSettings,
    seconds: int,
    meter: CpuMeter,
) -> Side:
    """Warm up, then measure; the topic is counted from after the warm-up."""
    try:
        await batch_load(client, path, wrap, acked_in, warm_up_seconds(seconds), seed=1)
        base = await topic_size(kafka)
        await meter.start()
        run = await batch_load(client, path, wrap, acked_in, seconds, seed=2)
        cpu = await meter.stop()
    finally:
        await client.close()
    landed = await topic_size(kafka) - base
    ok, content = await content_check(kafka, kafka.topic(Topic.RESPONSES), run.sent)
    return Side(
        run.rate, run.acked, run.failed, cpu, _rss(process), landed,
        content_ok=ok, content=content,
    )  # fmt: skip


async def bridge_sides(
    srv: Servers, folder: Path, java: Path, seconds: int
) -> tuple[tuple[Side, Side] | None, tuple[Side, Side]]:
    """Return ((bridge, collector) single events or None without wrk, (bridge, collector)
    batches), each measured on its own fresh topic."""
    singles = await srv.topics()
    batches = await srv.topics()
    single_topic, batch_topic = singles.topic(Topic.RESPONSES), batches.topic(Topic.RESPONSES)
    single: list[Side] = []
    async with bridge_running(folder, java, srv.kafka.bootstrap_servers) as bridge:
        if wrk_available():
            env = {"BENCH_TOPIC": single_topic}
            side = await _measured_wrk(
                bridge.url, _BRIDGE_WRK_SCRIPT, env, bridge.process, singles, seconds,
                _meter(srv, None, bridge.process),
            )  # fmt: skip
            single.append(side)
            print(f"  bridge single: {side.rate:,.0f} req/s, p99 {side.p99_ms:.0f} ms", flush=True)
        headers = {"Content-Type": "application/vnd.kafka.json.v2+json"}
        client = LoadClient(bridge.url, None, CLIENTS, headers)
        bridge_batch = await _measured_batches(
            client, f"/topics/{batch_topic}", _bridge_batch, _bridge_acked, bridge.process,
            batches, seconds, _meter(srv, None, bridge.process),
        )  # fmt: skip
        print(f"  bridge batches: {bridge_batch.rate:,.0f} events/s", flush=True)

    collector_single = await _collector_single(srv, seconds) if single else None
    collector_batch = await _collector_batches(srv, seconds)
    pair = (single[0], collector_single) if single and collector_single else None
    return pair, (bridge_batch, collector_batch)


def _meter(srv: Servers, database: str | None, process: ServerProcess) -> CpuMeter:
    return CpuMeter(srv.postgres, database, lambda: process_tree(pid_of(process)))


def _rss(process: ServerProcess) -> float:
    return sum(vm_hwm_kib(pid) for pid in process_tree(pid_of(process))) / 1024


async def _collector_single(srv: Servers, seconds: int) -> Side:
    kafka = await srv.topics()
    async with stack(
        srv, services=("collector",), CXLOOP_KAFKA_TOPIC_PREFIX=kafka.topic_prefix
    ) as s:
        env = {"BENCH_KEY": s.api_key}
        process, url = s.processes["collector"], s.urls["collector"]
        meter = _meter(srv, s.database, process)
        side = await _measured_wrk(url, _WRK_SCRIPT, env, process, kafka, seconds, meter)
        print(f"  collector single: {side.rate:,.0f} req/s, p99 {side.p99_ms:.0f} ms", flush=True)
        return side


async def _collector_batches(srv: Servers, seconds: int) -> Side:
    kafka = await srv.topics()
    async with stack(
        srv, services=("collector",), CXLOOP_KAFKA_TOPIC_PREFIX=kafka.topic_prefix
    ) as s:
        client = LoadClient(s.urls["collector"], s.api_key, CLIENTS)
        side = await _measured_batches(
            client, "/v1/responses/batch", _collector_batch, _collector_acked,
            s.processes["collector"], kafka, seconds,
            _meter(srv, s.database, s.processes["collector"]),
        )  # fmt: skip
        print(f"  collector batches: {side.rate:,.0f} events/s", flush=True)
        return side


def _figures(cx: Side, peer: Side, unit: str) -> str:
    cx_rate, peer_rate = cx.per_cpu_second, peer.per_cpu_second
    ratio = f"{cx_rate / peer_rate:.2f}" if peer_rate else "—"
    return (
        f"cxloop {cx.cpu.describe()}, bridge {peer.cpu.describe()}; "
        f"{unit} per server CPU-second cxloop {cx_rate:,.0f}, bridge {peer_rate:,.0f} "
        f"(ratio {ratio}); peak RSS cxloop {cx.rss_mib:.0f} MiB, bridge {peer.rss_mib:.0f} MiB"
    )


async def measure_bridge(srv: Servers, bridge: Path | None, seconds: int) -> list[Result]:
    names = ("Single-event ingest vs the Strimzi Kafka Bridge", "requests/s", "≥ 1.3")
    batch_names = ("Batch ingest vs the Strimzi Kafka Bridge", "events/s", "≥ 1.2")
    try:
        if bridge is None:
            raise PeerUnavailable(f"skipped: no bridge given (--bridge DIR or {BRIDGE_ENV})")
        java = await asyncio.to_thread(find_java)
        if java is None:
            raise PeerUnavailable(
                "skipped: the bridge needs Java 21 or newer; none in JAVA_HOME, on PATH "
                "or in /usr/lib/jvm"
            )
        single, batch = await bridge_sides(srv, bridge, java, seconds)
    except Exception as exc:  # a peer that cannot run is a row saying why
        note = str(exc) if isinstance(exc, PeerUnavailable) else failure(exc)
        print(f"  bridge: {note}", flush=True)
        return [_skipped(*n, BRIDGE_DOES, note) for n in (names, batch_names)]

    results = []
    if single is None:
        note = "skipped: wrk is not installed (apt-get install wrk)"
        results.append(_skipped(*names, BRIDGE_DOES, note))
    else:
        peer, cx = single
        slack = CONNECTIONS + peer.errors
        cx_slack = CONNECTIONS + cx.errors
        checked = (
            peer.landed_ok(slack) and cx.landed_ok(cx_slack) and peer.content_ok and cx.content_ok
        )
        results.append(
            Result(
                names[0],
                cx.rate,
                names[1],
                BRIDGE_DOES,
                peer.rate,
                names[2],
                (ratio(cx.rate, peer.rate) or 0) >= 1.3
                and checked
                and cx.failed == peer.failed == 0,
                f"wrk, {CONNECTIONS} connections, one record per request, {seconds}s each after "
                f"a {warm_up_seconds(seconds)} s warm-up; p99 cxloop {cx.p99_ms:.0f} ms, "
                f"bridge {peer.p99_ms:.0f} ms; "
                f"non-2xx cxloop {cx.failed}, bridge {peer.failed}; socket errors cxloop "
                f"{cx.errors}, bridge {peer.errors}; {_figures(cx, peer, 'requests')}; "
                f"cxloop: {cx.check(cx_slack)}; bridge: {peer.check(slack)}",
            )
        )
    peer, cx = batch
    exact = (
        peer.landed == peer.acked and cx.landed == cx.acked and peer.content_ok and cx.content_ok
    )
    results.append(
        Result(
            batch_names[0],
            cx.rate,
            batch_names[1],
            BRIDGE_DOES,
            peer.rate,
            batch_names[2],
            (ratio(cx.rate, peer.rate) or 0) >= 1.2 and exact and cx.failed == peer.failed == 0,
            f"{CLIENTS} clients × batches of {BATCH}, {seconds}s each after a "
            f"{warm_up_seconds(seconds)} s warm-up; failed requests cxloop "
            f"{cx.failed}, bridge {peer.failed}; {_figures(cx, peer, 'events')}; "
            f"cxloop: {cx.check(0)}; bridge: {peer.check(0)}",
        )
    )
    return results


def _skipped(name: str, unit: str, target: str, reference: str, note: str) -> Result:
    return skipped(name, unit, target, reference, note=note)


# --- Quix Streams and the bare loop ---------------------------------------------------------


def quix_python() -> Path:
    """Quix's own venv under the cache, made and filled by pip once."""
    venv = CACHE / "quix-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".cxloop-installed"
    if stamp.is_file() and stamp.read_text() == QUIX:
        return python
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "-q", QUIX],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, env=child_environment())
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise PeerUnavailable(f"skipped: could not install {QUIX} ({last[0]})")
    stamp.write_text(QUIX)
    return python


HOURLY_CXLOOP = """
SELECT channel, (extract(epoch FROM bucket_start) * 1000)::bigint AS hour_ms,
       sum(promoters)::bigint, sum(passives)::bigint, sum(detractors)::bigint
FROM score_buckets WHERE metric = 'nps' GROUP BY 1, 2
"""
HOURLY_QUIX = "SELECT channel, hour_ms, promoters, passives, detractors FROM quix_hourly"
Hourly = dict[tuple[str, int], tuple[int, int, int]]


async def hourly(url: str, query: str) -> Hourly:
    conn = await asyncpg.connect(_dsn(url))
    try:
        return {
            (r[0], int(r[1])): (int(r[2]), int(r[3]), int(r[4])) for r in await conn.fetch(query)
        }
    finally:
        await conn.close()


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class Run:
    rate: float
    cpu: Cpu


async def _first_at(path: Path, process: ServerProcess, timeout: float) -> float:
    """Wait for a peer to write when it consumed its first record (``time.time()``)."""
    deadline = time.monotonic() + timeout
    while not _text(path):
        if not process.alive:
            raise PeerUnavailable(
                f"failed: {process.name} exited: " + " | ".join(process.tail[-5:])
            )
        if time.monotonic() > deadline:
            raise PeerUnavailable(f"failed: {process.name} consumed nothing in {timeout:.0f} s")
        await asyncio.sleep(0.05)
    return float(_text(path))


def _text(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


async def run_quix(python: Path, srv: Servers, kafka: KafkaSettings, url: str, n: int) -> Run:
    """Start the Quix app; time it from its first record consumed until its group has
    committed all ``n`` answers (and its repartition topic), which it does only after its
    sink's flush to Postgres: the scorer's rule."""
    db = make_url(url)
    group = f"quix-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="cxloop-quix-") as state:
        first_file = Path(state) / "first"
        config = {
            "bootstrap": kafka.bootstrap_servers,
            "topic": kafka.topic(Topic.RESPONSES),
            "group": group,
            "state_dir": state,
            "first_file": str(first_file),
            "commit_interval": QUIX_COMMIT_INTERVAL,
            "host": db.host,
            "port": db.port,
            "dbname": db.database,
            "user": db.username,
            "password": db.password or "",
            "table": "quix_hourly",
            "spread_hours": SPREAD_HOURS,
        }
        # The configuration (with the database password) goes through a file only we can
        # read, never the command line.
        config_file = Path(state) / "config.json"
        config_file.touch(mode=0o600)
        config_file.write_text(json.dumps(config))
        process = ServerProcess("quix", sink=None)
        async with GroupProgress(kafka, group, kafka.topic(Topic.RESPONSES)) as progress:
            try:
                await process.spawn(
                    str(python), str(HERE / "peers_quix_app.py"), str(config_file),
                    env=child_environment(),
                )  # fmt: skip
                first = await _first_at(first_file, process, 120)
                meter = CpuMeter(srv.postgres, url, lambda: process_tree(pid_of(process)))
                await meter.start()

                def alive() -> None:
                    if not process.alive:
                        raise PeerUnavailable(
                            "failed: Quix exited: " + " | ".join(process.tail[-5:])
                        )

                try:
                    ended = await wait_done(progress, n, timeout=consume_timeout(n), alive=alive)
                except TimeoutError as exc:
                    raise PeerUnavailable(f"failed: Quix: {exc}") from None
                cpu = await meter.stop()
            finally:
                await process.stop()
    return Run(n / max(1e-9, ended - first), cpu)


async def run_bare(python: Path, kafka: KafkaSettings, n: int) -> Run:
    """The bare loop, timed from its first record to its n-th, as it reports them."""
    process = ServerProcess("bare", sink=None)
    await process.spawn(
        str(python), str(HERE / "peers_bare_loop.py"), kafka.bootstrap_servers,
        kafka.topic(Topic.RESPONSES), f"bare-{uuid.uuid4().hex[:6]}", str(n),
        env=child_environment(),
    )  # fmt: skip
    try:
        code = await asyncio.wait_for(process.wait(), timeout=consume_timeout(n))
    except TimeoutError:
        raise PeerUnavailable(f"failed: the bare loop had not read {n:,} in time") from None
    finally:
        await process.stop()
    if code != 0 or not process.tail:
        raise PeerUnavailable("failed: the bare loop: " + " | ".join(process.tail[-5:]))
    said = json.loads(process.tail[-1])
    took = max(1e-9, float(said["done"]) - float(said["first"]))
    return Run(n / took, Cpu(float(said["cpu_seconds"]), 0.0, 0.0))


async def measure_quix(srv: Servers, n: int) -> list[Result]:
    names = ("Scorer vs Quix Streams (topic → hourly NPS counts)", "events/s", "≥ 2.0")
    bare_names = ("Scorer vs a bare confluent-kafka loop", "events/s", "none (context)")
    bare_does = "confluent-kafka consume loop that only counts the records"
    try:
        python = await asyncio.to_thread(quix_python)
    except Exception as exc:  # a peer that cannot run is a row saying why
        note = str(exc) if isinstance(exc, PeerUnavailable) else failure(exc)
        print(f"  quix: {note}", flush=True)
        return [
            skipped(*names[:2], names[2], QUIX_DOES, note=note),
            skipped(*bare_names[:2], bare_names[2], bare_does, note=note),
        ]

    kafka = await srv.topics()
    filled = await fill(kafka, n, timedelta(hours=SPREAD_HOURS))
    print(f"  filled {n:,} answers over {SPREAD_HOURS:g} h in {filled:.1f}s", flush=True)

    scorer_db = await srv.database()
    await checkpoint(srv.postgres)
    consumed = await run_scorer(kafka, scorer_db, n, srv.postgres)
    assert consumed.cpu is not None
    scorer = Run(n / consumed.seconds, consumed.cpu)
    print(f"  scorer {scorer.rate:,.0f}/s", flush=True)

    quix_db = await srv.database()
    setup = (
        f"{n:,} NPS answers over {SPREAD_HOURS:g} h, from one pre-filled topic; each side "
        "timed from its first record consumed until its group's commit of every record "
        "(the same broker-side check for both, polled every 0.2 s; a group commits only what "
        f"it has stored), after a CHECKPOINT; Quix commits every {QUIX_COMMIT_INTERVAL:g} s "
        "(its default is 5 s)"
    )
    per_cpu = (
        f"events per server CPU-second scorer {_per(n, scorer.cpu.server)} "
        f"({scorer.cpu.describe()}; own = the bench process it runs in)"
    )
    results = []
    try:
        await checkpoint(srv.postgres)
        quix = await run_quix(python, srv, kafka, quix_db, n)
        print(f"  quix   {quix.rate:,.0f}/s", flush=True)
        theirs, ours = await hourly(quix_db, HOURLY_QUIX), await hourly(scorer_db, HOURLY_CXLOOP)
    except Exception as exc:
        note = str(exc) if isinstance(exc, PeerUnavailable) else failure(exc)
        print(f"  quix: {note}", flush=True)
        results.append(skipped(*names[:2], names[2], QUIX_DOES, note=note))
    else:
        differ = sum(ours.get(k) != theirs.get(k) for k in ours.keys() | theirs.keys())
        if differ:
            check = f"MISMATCH: hourly counts differ in {differ} of {len(ours)} buckets"
        else:
            check = f"hourly counts equal in all {len(ours)} (channel, hour) buckets"
        quotient = ratio(scorer.rate, quix.rate)
        results.append(
            Result(
                names[0],
                scorer.rate,
                names[1],
                QUIX_DOES,
                quix.rate,
                names[2],
                quotient is not None and quotient >= 2.0 and not differ,
                f"{setup}; {check}; {per_cpu}, Quix {_per(n, quix.cpu.server)} "
                f"({quix.cpu.describe()})",
            )
        )
    try:
        await checkpoint(srv.postgres)
        bare = await run_bare(python, kafka, n)
    except Exception as exc:
        note = str(exc) if isinstance(exc, PeerUnavailable) else failure(exc)
        print(f"  bare: {note}", flush=True)
        results.append(skipped(*bare_names[:2], bare_names[2], bare_does, note=note))
    else:
        print(f"  bare   {bare.rate:,.0f}/s", flush=True)
        results.append(
            Result(
                bare_names[0],
                scorer.rate,
                bare_names[1],
                bare_does,
                bare.rate,
                bare_names[2],
                None,
                f"{setup}; the bare loop stores nothing, so it times itself from its first "
                f"record to its {n:,}th; {per_cpu}, bare loop {_per(n, bare.cpu.own)} "
                f"({bare.cpu.own:.1f} CPU-s over the same span)",
            )
        )
    return results


def _per(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "—"


async def measure(
    srv: Servers, *, ingest_seconds: int, scorer_events: int, bridge: Path | None
) -> list[Result]:
    """Every peer row: the bridge's two, then Quix's and the bare loop's."""
    return [
        *await measure_bridge(srv, bridge, ingest_seconds),
        *await measure_quix(srv, scorer_events),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bridge",
        type=Path,
        default=os.environ.get(BRIDGE_ENV) or None,
        help=f"folder of the Strimzi Kafka Bridge (its jar and install.sh); default ${BRIDGE_ENV}",
    )
    parser.add_argument("--seconds", type=int, default=15, help="per ingest measure")
    parser.add_argument("--events", type=int, default=300_000, help="answers for the scorer")
    parser.add_argument("--quick", action="store_true", help="3 s per measure, 20,000 answers")
    args = parser.parse_args()
    seconds, events = (3, 20_000) if args.quick else (args.seconds, args.events)
    async with servers() as srv:
        results = await measure(
            srv, ingest_seconds=seconds, scorer_events=events, bridge=args.bridge
        )
    for r in results:
        quotient = f"{r.ratio:.2f}" if r.ratio is not None else "—"
        value = "—" if r.value is None else f"{r.value:,.0f}"
        reference = "—" if r.reference_value is None else f"{r.reference_value:,.0f}"
        print(f"{r.name}: {value} / {reference} {r.unit} = {quotient} "
              f"(target {r.target}, met {r.met})\n    {r.note}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
