"""`cxloop up` as a new user runs it: Tansu and embedded Postgres, whatever the harness chose."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.servers import ServerProcess, free_port
from tests.builders import response_payload
from tests.harness.backends import scratch_dir
from tests.helpers import eventually

pytestmark = pytest.mark.smoke


def _stray_processes(markers: list[str]) -> list[str]:
    """Return the processes whose command line or environment names one of ``markers``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if any(marker.encode() in blob for marker in markers):
            found.append(f"{proc.name}: {(proc / 'cmdline').read_bytes()!r}")
    return found


class TestCxloopUp:
    async def _simulate(
        self, env: dict[str, str], client: httpx.AsyncClient, ports: dict[str, int]
    ) -> None:
        """`cxloop simulate` against the running stack moves scores, times and alerts."""
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "services.cli", "simulate", "--rate", "20", "--duration", "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "widget 202" in result.stdout
        assert "api 202" in result.stdout
        statuses = [line.split()[1] for line in result.stdout.splitlines() if line.strip()]
        assert all(s.startswith("2") for s in statuses), result.stdout  # nothing refused
        scorer, alerting = (f"http://127.0.0.1:{ports[s]}/v1" for s in ("scorer", "alerting"))
        await eventually(
            lambda: client.get(f"{scorer}/scores", params={"metric": "nps"}),
            lambda r: r.json()["n"] > 10,
            timeout=30,
        )
        times = await eventually(
            lambda: client.get(f"{scorer}/service-times"),
            lambda r: bool(r.json()["groups"]),
            timeout=30,
        )
        assert times.json()["groups"][0]["tickets"] > 0
        await eventually(
            lambda: client.get(f"{alerting}/alerts", params={"status": "open"}),
            lambda r: len(r.json()["items"]) > 1,
            timeout=30,
        )

    async def test_up_serves_stops_cleanly_and_keeps_postgres_data(self) -> None:
        data_dir = scratch_dir()
        ports = {name: free_port() for name in ("collector", "scorer", "alerting")}
        key = "up-test-key-0123456789"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")}
        env |= {
            "XDG_RUNTIME_DIR": str(data_dir),
            "CXLOOP_STACK_DATA_DIR": str(data_dir),
            "CXLOOP_STACK_POSTGRES_PORT": str(free_port()),
            "CXLOOP_STACK_KAFKA_PORT": str(free_port()),
            "CXLOOP_API_KEY": key,
            **{f"CXLOOP_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        }
        headers = {"Authorization": f"Bearer {key}"}
        markers = [str(data_dir), f"CXLOOP_COLLECTOR_PORT={ports['collector']}"]

        async with httpx.AsyncClient(headers=headers, timeout=10) as client:
            lines = await self._run_once(env, client, ports, post=True)
            assert any("memory only" in line for line in lines), "Tansu's limit must be said"
            assert any(line.startswith("collector") for line in lines)
            assert any(line.startswith("scorer") for line in lines)
            assert not await asyncio.to_thread(_stray_processes, markers)

            await self._run_once(env, client, ports, post=False, simulate=True)
            assert not await asyncio.to_thread(_stray_processes, markers)

    async def _sign_in_by_link(self, lines: list[str], ports: dict[str, int]) -> None:
        """The printed one-time links sign a browser in to the dashboard and the console."""
        for service, page in (("scorer", "/dashboard"), ("alerting", "/console")):
            base = f"http://127.0.0.1:{ports[service]}"
            link = next(
                word
                for line in lines
                for word in line.split()
                if word.startswith(f"{base}/signin/link?token=")
            )
            assert any(line.split()[-1] == base + page for line in lines if line.split())
            async with httpx.AsyncClient(timeout=10) as browser:
                assert (await browser.get(base + page)).status_code == 303
                signed = await browser.get(link)
                assert signed.status_code == 303, signed.text
                assert (await browser.get(base + page)).status_code == 200
            async with httpx.AsyncClient(timeout=10) as other:
                assert (await other.get(link)).status_code == 400, "a link works once"

    async def _run_once(
        self,
        env: dict[str, str],
        client: httpx.AsyncClient,
        ports: dict[str, int],
        *,
        post: bool,
        simulate: bool = False,
    ) -> list[str]:
        lines: list[str] = []
        up = ServerProcess("up", sink=lines.append)
        await up.spawn(sys.executable, "-m", "services.cli", "up", env=env)
        try:
            await eventually(
                lambda: asyncio.sleep(0, any("cxloop is up." in line for line in lines)),
                lambda ok: ok or not up.alive,
                timeout=120,
            )
            assert up.alive, "\n".join(lines[-30:])
            # The key it was given is not echoed: the console may be kept as a log.
            assert any("API key    from CXLOOP_API_KEY" in line for line in lines)
            assert not any("up-test-key-0123456789" in line for line in lines)
            await self._sign_in_by_link(lines, ports)
            scorer = f"http://127.0.0.1:{ports['scorer']}/v1/scores"
            if post:
                for score in (10, 9, 0):
                    r = await client.post(
                        f"http://127.0.0.1:{ports['collector']}/v1/responses",
                        json=response_payload(score=score),
                    )
                    assert r.status_code == 202, r.text
            # Postgres keeps the scores across restarts of the stack.
            body = await eventually(
                lambda: client.get(scorer, params={"metric": "nps"}),
                lambda r: r.json().get("n") == 3,
                timeout=30,
            )
            assert body.json()["detractors"] == 1
            if simulate:
                await self._simulate(env, client, ports)
        finally:
            await up.stop(signal.SIGTERM, timeout=60)
        assert up.proc is not None
        assert up.proc.returncode == 0, "\n".join(lines[-30:])
        assert lines[-1].endswith("stopped")
        return lines
