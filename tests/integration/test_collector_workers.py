"""CXLOOP_COLLECTOR_WORKERS: several collector processes on one port, seen as one service."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import struct
import sys
from pathlib import Path

import sqlalchemy as sa
from prometheus_client.mmap_dict import MmapedDict

from shared.db import create_engine
from shared.settings import DatabaseSettings
from tests.builders import response_payload
from tests.helpers import eventually
from tests.processes import Service

ROUTE = "/v1/responses"


def workers_of(parent: int) -> list[int]:
    """The worker processes uvicorn spawned under ``parent``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent and b"multiprocessing.spawn" in cmdline:
            found.append(int(stat.parent.name))
    return found


def metrics_dir(worker: int) -> Path:
    environ = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    (value,) = [v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
    return Path(value.partition(b"=")[2].decode())


def accepted_by(directory: Path, worker: int) -> float:
    """The 202s to ROUTE that one worker counted, from its own metrics file."""
    path = directory / f"counter_{worker}.db"
    if not path.exists():
        return 0
    total = 0.0
    for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):  # type: ignore[no-untyped-call]
        _name, sample, labels, _ = json.loads(key)
        if sample == "cxloop_http_requests_total" and labels.get("route") == ROUTE:
            total += value if labels.get("status") == "202" else 0
    return total


def scraped_total(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        counted = line.startswith("cxloop_http_requests_total{") and f'route="{ROUTE}"' in line
        if counted and 'status="202"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def ready_in(directory: Path, worker: int) -> bool:
    """Whether ``worker`` has finished its start-up: its lifespan then sets its ready gauge,
    in a metrics file of its own (not ready while that file is missing or still being made)."""
    path = directory / f"gauge_livemin_{worker}.db"
    try:
        values = MmapedDict.read_all_values_from_file(str(path))  # type: ignore[no-untyped-call]
        return any(
            json.loads(key)[1] == "cxloop_service_ready" and value == 1
            for key, value, _, _ in values
        )
    except (OSError, ValueError, struct.error):
        return False


async def two_workers(collector: Service) -> tuple[int, list[int]]:
    """The started collector's parent process and its two workers, once both have finished
    their start-up (the service answers as soon as one has)."""
    assert collector.process is not None
    assert collector.process.proc is not None
    parent = collector.process.proc.pid

    async def ready() -> dict[int, bool]:
        workers = await _workers(parent)
        try:
            directory = metrics_dir(workers[0]) if workers else None
        except (OSError, ValueError):  # that worker exited meanwhile
            return dict.fromkeys(workers, False)
        return {w: directory is not None and ready_in(directory, w) for w in workers}

    # A failure shows each worker's pid and whether it was ready.
    found = await eventually(
        ready, lambda found: len(found) == 2 and all(found.values()), timeout=60
    )
    return parent, list(found)


class TestTwoWorkers:
    async def test_one_port_summed_metrics_and_sigterm_stops_all(
        self, stack_env: dict[str, str], api_key: str
    ) -> None:
        collector = Service("collector", stack_env | {"CXLOOP_COLLECTOR_WORKERS": "2"}, api_key)
        await collector.start()
        try:
            _, workers = await two_workers(collector)
            directory = metrics_dir(workers[0])
            sent = 0

            async def one() -> None:
                # A fresh connection each, so either worker may accept it.
                async with collector.client() as client:
                    r = await client.post(ROUTE, json=response_payload())
                    assert r.status_code == 202, r.text

            async def round_of_requests() -> list[float]:
                nonlocal sent
                await asyncio.gather(*(one() for _ in range(16)))
                sent += 16
                return [accepted_by(directory, w) for w in workers]

            # Until both workers have served some (each accepts as it is free to).
            per_worker = await eventually(
                round_of_requests, lambda counts: all(counts), timeout=60, interval=0
            )
            assert sum(per_worker) == sent
            # Whichever worker answers the scrape, it reports the sum over both.
            async with collector.client() as client:
                for _ in range(6):
                    scraped = (await client.get("/metrics")).text
                    assert scraped_total(scraped) == sent
                    # Each worker refreshes its gauge on its own, whether or not it was probed.
                    assert 'cxloop_service_ready{service="collector"} 1.0' in scraped
        finally:
            await collector.stop()
        assert collector.process is not None
        assert collector.process.proc is not None
        assert collector.process.proc.returncode == 0
        assert [w for w in workers if _alive(w)] == []
        assert not directory.exists()

    async def test_a_killed_worker_is_replaced(
        self, stack_env: dict[str, str], api_key: str
    ) -> None:
        collector = Service("collector", stack_env | {"CXLOOP_COLLECTOR_WORKERS": "2"}, api_key)
        await collector.start()
        try:
            parent, workers = await two_workers(collector)
            os.kill(workers[0], signal.SIGKILL)
            replaced = await eventually(
                lambda: _workers(parent),
                lambda w: len(w) == 2 and workers[0] not in w,
                timeout=60,
            )
            assert workers[1] in replaced

            async def served() -> int:
                async with collector.client() as client:
                    return (await client.post(ROUTE, json=response_payload())).status_code

            await eventually(served, lambda status: status == 202, timeout=60)
        finally:
            await collector.stop()


class TestReplacement:
    async def test_replacements_that_fail_to_start_leave_the_others_serving(
        self, stack_env: dict[str, str], api_key: str, database_url: str
    ) -> None:
        collector = Service("collector", stack_env | {"CXLOOP_COLLECTOR_WORKERS": "2"}, api_key)
        await collector.start()
        try:
            # Both have started: a worker of the first start that fails stops the service.
            parent, workers = await two_workers(collector)
            # From now on a new worker's start-up fails (as during a database outage).
            original = await _set_key_check(database_url, b"another key's check value")
            os.kill(workers[0], signal.SIGKILL)
            # (A failure shows what the parent said about its workers.)
            said = await eventually(
                lambda: _supervisor_lines(collector.log),
                lambda said: len(_delays(said)) >= 3,
                timeout=60,
            )
            # The replacements wait longer and longer, and the other worker keeps serving.
            assert _delays(said)[:3] == [0.5, 1.0, 2.0]
            assert collector.process is not None
            assert collector.process.alive
            async with collector.client() as client:
                r = await client.post(ROUTE, json=response_payload())
                assert r.status_code == 202

            await _set_key_check(database_url, original)
            await eventually(
                lambda: _workers(parent),
                lambda w: len(w) == 2 and workers[0] not in w,
                timeout=60,
            )
        finally:
            await collector.stop()
        assert collector.process is not None
        assert collector.process.proc is not None
        assert collector.process.proc.returncode == 0


class TestDraining:
    async def test_a_request_in_flight_at_sigterm_is_answered(
        self, stack_env: dict[str, str], api_key: str
    ) -> None:
        # --workers wins over a CXLOOP_COLLECTOR_WORKERS that does not parse, in every worker.
        env = stack_env | {"CXLOOP_COLLECTOR_WORKERS": "many"}
        argv = ("-m", "services.cli", "collector", "--workers", "2")
        collector = Service("collector", env, api_key, argv=argv)
        await collector.start()
        try:
            assert collector.process is not None
            assert collector.process.proc is not None
            body = json.dumps(response_payload()).encode()
            reader, writer = await asyncio.open_connection("127.0.0.1", collector.port)
            head = (
                f"POST {ROUTE} HTTP/1.1\r\nHost: collector\r\n"
                f"Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            writer.write(head.encode() + body[:10])
            await writer.drain()
            port = writer.get_extra_info("sockname")[1]
            await eventually(lambda: _accepted(collector.port, port), bool)
            # Then the service is told to stop, with the body still arriving.
            collector.process.proc.send_signal(signal.SIGTERM)
            writer.write(body[10:])
            await writer.drain()
            answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
            assert await collector.process.proc.wait() == 0
        finally:
            await collector.stop()


class TestWorkersSetting:
    async def test_out_of_range_is_refused_naming_the_variable(
        self, stack_env: dict[str, str], api_key: str
    ) -> None:
        env = stack_env | {"CXLOOP_COLLECTOR_WORKERS": "0"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "collector", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode == 2
        assert "CXLOOP_COLLECTOR_WORKERS" in err.decode()

    async def test_out_of_range_flag_is_refused_naming_the_flag(
        self, stack_env: dict[str, str]
    ) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "collector", "--workers", "0", env=stack_env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode == 2
        assert "--workers: must be between 1 and" in err.decode()
        assert "CXLOOP_COLLECTOR_WORKERS" not in err.decode()


class TestFirstStart:
    async def test_workers_that_fail_to_start_stop_the_service_with_exit_3(
        self, stack_env: dict[str, str], database_url: str
    ) -> None:
        # The database was written under another privacy key: every worker's start-up refuses.
        engine = create_engine(DatabaseSettings(url=database_url))
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("UPDATE privacy_key_check SET check_value = :v"),
                {"v": b"another key's check value"},
            )
        await engine.dispose()
        env = stack_env | {"CXLOOP_COLLECTOR_WORKERS": "2"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "collector", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 3, err.decode()[-2000:]
        assert "CXLOOP_PRIVACY_HASH_KEY" in err.decode()


async def _set_key_check(database_url: str, value: bytes) -> bytes:
    """Store ``value`` as the privacy key's check value; return the one it replaced."""
    engine = create_engine(DatabaseSettings(url=database_url))
    try:
        async with engine.begin() as conn:
            before = await conn.scalar(sa.text("SELECT check_value FROM privacy_key_check"))
            await conn.execute(
                sa.text("UPDATE privacy_key_check SET check_value = :v"), {"v": value}
            )
    finally:
        await engine.dispose()
    return bytes(before)


async def _supervisor_lines(log: list[str]) -> list[str]:
    """What the parent logged about its workers, in order."""
    return [line for line in log if re.search(r"worker \d+ (exited|failed)", line)]


def _delays(lines: list[str]) -> list[float]:
    """The delays the parent announced before replacing a worker, in order."""
    return [float(d) for d in re.findall(r"replacing it in ([0-9.]+) s", "\n".join(lines))]


async def _accepted(server_port: int, client_port: int) -> bool:
    return accepted(server_port, client_port)


def accepted(server_port: int, client_port: int) -> bool:
    """Whether a worker has accepted the connection from ``client_port`` (a socket of its
    own, inode set, rather than one waiting in the listen queue)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if (
            int(local.rpartition(":")[2], 16) == server_port
            and int(remote.rpartition(":")[2], 16) == client_port
        ):
            return inode != "0"
    return False


async def _workers(parent: int) -> list[int]:
    return workers_of(parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"
