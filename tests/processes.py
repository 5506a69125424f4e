"""The services as real processes that a test can SIGKILL and restart, a steady load, and
the totals a test checks against what the collector accepted."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from services.servers import ServerProcess, free_port
from tests.builders import response_payload

# The keyed-hash secret of every service the tests run (tests/conftest.py sets it too).
TEST_HASH_KEY = "test-privacy-hash-key-0123456789"


def service_env(
    *, bootstrap: str, prefix: str, database_url: str, api_key: str, **extra: str
) -> dict[str, str]:
    """The environment of one stack: its broker, topics, database and fast group settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
    return env | {
        "CXLOOP_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CXLOOP_KAFKA_TOPIC_PREFIX": prefix,
        "CXLOOP_DATABASE_URL": database_url,
        "CXLOOP_API_KEY": api_key,
        "CXLOOP_PRIVACY_HASH_KEY": TEST_HASH_KEY,
        "CXLOOP_SCORER_GROUP_ID": f"scorer-{prefix}",
        "CXLOOP_ALERTING_GROUP_ID": f"alerting-{prefix}",
        "CXLOOP_SCORER_SESSION_TIMEOUT_MS": "6000",
        "CXLOOP_ALERTING_SESSION_TIMEOUT_MS": "6000",
        "CXLOOP_SCORER_HEARTBEAT_INTERVAL_MS": "500",
        "CXLOOP_ALERTING_HEARTBEAT_INTERVAL_MS": "500",
        **extra,
    }


@dataclass
class Service:
    """One cxloop service process; ``log`` keeps every line it printed, across restarts."""

    name: str
    env: dict[str, str]
    api_key: str
    argv: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    log: list[str] = field(default_factory=list)
    process: ServerProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=timeout
        )

    async def start(self, *, ready: bool = True) -> None:
        """Start the process and wait until it answers (``/readyz`` 200 when ``ready``)."""
        self.process = ServerProcess(self.name, sink=self.log.append)
        env = self.env | {f"CXLOOP_{self.name.upper()}_PORT": str(self.port)}
        argv = self.argv or ("-m", "services.cli", self.name)
        await self.process.spawn(sys.executable, *argv, env=env)
        deadline = time.monotonic() + 90
        async with self.client(timeout=5) as client:
            while True:
                try:
                    r = await client.get("/readyz" if ready else "/healthz")
                    if r.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if not self.process.alive:
                    raise RuntimeError(f"{self.name} exited:\n" + "\n".join(self.log[-30:]))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not ready:\n" + "\n".join(self.log[-30:]))
                await asyncio.sleep(0.2)

    async def kill(self) -> None:
        """SIGKILL: no shutdown hook, no final commit."""
        assert self.process is not None
        await self.process.stop(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop()

    def rss_kib(self) -> int:
        assert self.process is not None
        assert self.process.proc is not None
        for line in Path(f"/proc/{self.process.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def errors(self, since: int = 0) -> list[str]:
        """The ERROR lines and tracebacks it logged, from line ``since`` on."""
        return [line for line in self.log[since:] if " ERROR " in line or "Traceback" in line]


@dataclass
class Load:
    """A steady stream of single answers with fresh event ids; records every outcome."""

    client: httpx.AsyncClient
    rate: float
    detractor_every: int = 0
    outcomes: list[tuple[float, float, str, int]] = field(default_factory=list)
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        i = 0
        while not self._stop.is_set():
            delay = started + i / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            detractor = bool(self.detractor_every) and i % self.detractor_every == 0
            payload = response_payload(
                event_id=str(uuid.uuid4()),
                score=2 if detractor else 9,
                customer_id=f"cust-{i}",
                comment="配送が遅い" if detractor else None,
            )
            self.payloads[payload["event_id"]] = payload
            task = asyncio.create_task(self._send(payload))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)

    async def _send(self, payload: dict[str, Any]) -> None:
        sent = time.monotonic()
        try:
            r = await self.client.post("/v1/responses", json=payload)
            status = r.status_code
        except httpx.TransportError:
            status = 0
        self.outcomes.append((sent, time.monotonic(), payload["event_id"], status))

    def stop(self) -> None:
        self._stop.set()

    def accepted(self) -> set[str]:
        return {event_id for _, _, event_id, status in self.outcomes if status == 202}

    def refused(self) -> set[str]:
        return {event_id for _, _, event_id, status in self.outcomes if status != 202} - (
            self.accepted()
        )

    async def retry_refused(self, timeout: float = 60) -> None:
        """Resend every refused answer with its event id until it is 202, as the 503 says."""
        deadline = time.monotonic() + timeout
        for event_id in sorted(self.refused()):
            while True:
                await self._send(self.payloads[event_id])
                if self.outcomes[-1][3] == 202:
                    break
                assert time.monotonic() < deadline, f"{event_id} still refused after {timeout}s"
                await asyncio.sleep(0.5)


async def scalar(database_url: str, sql: str, **params: Any) -> Any:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return await conn.scalar(sa.text(sql), params)
    finally:
        await engine.dispose()


async def wait_for(
    probe: Callable[[], Any], until: Callable[[Any], bool], *, timeout: float, every: float = 0.5
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await probe()
        except Exception as exc:  # the database may be restarting
            value = exc
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s; last value: {value!r}")
        await asyncio.sleep(every)
