"""What `cxloop up`, `cxloop keys` and `cxloop topics` print: no secret and no row value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import asyncpg
import pytest
from sqlalchemy.exc import IntegrityError

from services.servers import free_port
from services.stack import Stack

SECRET = "cust-4f1e-planted"


def bare_stack(api_key: str, generated: bool) -> Stack:
    """A Stack with what its banner and run() read, and no servers."""
    stack = Stack.__new__(Stack)
    stack.api_key, stack.generated_key = api_key, generated
    stack.ports = {"collector": 1, "scorer": 2, "alerting": 3}
    stack.broker = SimpleNamespace(bootstrap_servers="127.0.0.1:4", name="Tansu")  # type: ignore[assignment]
    stack.postgres = SimpleNamespace(url=lambda db: f"postgresql+asyncpg://h/{db}")  # type: ignore[assignment]
    stack.sign_in_links = {
        "scorer": "http://127.0.0.1:2/signin/link?token=t1",
        "alerting": "http://127.0.0.1:3/signin/link?token=t2",
    }
    return stack


@pytest.mark.parametrize("generated", [False, True])
def test_the_banner_prints_the_api_key_only_when_it_generated_it(
    generated: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    bare_stack(SECRET, generated)._banner()
    out = capsys.readouterr().out
    assert (SECRET in out) is generated
    assert "API key" in out
    # The pages, and a one-click way in to each.
    assert "http://127.0.0.1:2/dashboard" in out
    assert "http://127.0.0.1:3/console" in out
    assert "signin/link?token=t1" in out
    assert "signin/link?token=t2" in out


async def test_a_failed_start_up_is_described_without_row_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import asyncio

    stack = bare_stack("k", False)
    stack.ports = {}
    stack.stopping = asyncio.Event()

    async def start() -> None:
        driver = asyncpg.UniqueViolationError.new(
            {"C": "23505", "M": "duplicate key", "D": f"Key (name)=({SECRET}) already exists.",
             "n": "api_keys_pkey", "t": "api_keys"}
        )  # fmt: skip
        raise IntegrityError("INSERT INTO api_keys VALUES ($1)", (SECRET,), driver)

    async def stop() -> None:
        pass

    stack._start = start  # type: ignore[method-assign]
    stack._stop = stop  # type: ignore[method-assign]
    assert await stack.run() == 1
    out = capsys.readouterr().out
    assert "start-up failed" in out
    assert "api_keys_pkey" in out
    assert SECRET not in out


@pytest.mark.parametrize("argv", [["keys", "list"], ["topics"]])
def test_an_uncaught_error_of_a_command_goes_through_the_log_format(argv: list[str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXLOOP_")} | {
        "CXLOOP_LOG_FORMAT": "json",
        "CXLOOP_DATABASE_URL": f"postgresql+asyncpg://postgres@{dead}/postgres",
        "CXLOOP_KAFKA_BOOTSTRAP_SERVERS": dead,
        "CXLOOP_KAFKA_REQUEST_TIMEOUT_MS": "2000",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines, done.stderr
    entries = [json.loads(line) for line in lines]  # not a bare Python traceback
    assert any(e["level"] == "CRITICAL" for e in entries)
