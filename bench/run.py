"""Run every benchmark on one set of servers and write BENCHMARKS.md (``make bench``).

python bench/run.py                  # the sizes the targets are stated for
python bench/run.py --quick          # small sizes, to check the scripts work
python bench/run.py --bridge DIR     # also the Strimzi Kafka Bridge installed in DIR
                                     # (default: $CXLOOP_BENCH_BRIDGE; none: that row skipped)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import ingest
import latency
import queries
import scorer_throughput
from common import ROOT, Result, Servers, failure, servers, skipped


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    cpu = models[0] if models else "unknown CPU"
    meminfo = Path("/proc/meminfo").read_text(encoding="utf-8")
    mem_kib = int(meminfo.splitlines()[0].split()[1])
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kib / 1024**2:.0f} GiB, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    )
    return out.stdout.strip() or "unknown"


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
    return f"{text} {unit}".strip()


async def section(
    name: str, started: float, measure: Callable[[], Awaitable[list[Result]]]
) -> list[Result]:
    """Run one section; any exception becomes a row saying so, and the run goes on."""
    print(f"{name} (at {(time.monotonic() - started) / 60:.1f} min)", flush=True)
    try:
        return await measure()
    except Exception as exc:  # one section must not lose the others
        print(f"  {name}: {failure(exc)}", flush=True)
        return [skipped(name[0].upper() + name[1:], note=failure(exc))]


def table(results: list[Result]) -> str:
    lines = [
        "| measure | cxloop | reference | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        reference = f"{_fmt(r.reference_value, r.unit)} ({r.reference})" if r.reference else "—"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "—"
        met = {True: "yes", False: "**no**", None: "—"}[r.met]
        lines.append(
            f"| {r.name} | {_fmt(r.value, r.unit)} | {reference} | {ratio} | "
            f"{r.target or '—'} | {met} |"
        )
    lines.append("")
    lines += [f"- **{r.name}:** {r.note}" for r in results if r.note]
    return "\n".join(lines)


async def measure_peers(srv: Servers, sizes: dict[str, int], bridge: Path | None) -> list[Result]:
    """The peers a user might pick instead (bench/peers.py), when that script is present."""
    try:
        peers = importlib.import_module("peers")
    except ModuleNotFoundError as exc:
        if exc.name != "peers":
            raise
        print("peers: skipped, bench/peers.py is not in this checkout", flush=True)
        return []
    print("peers", flush=True)
    results: list[Result] = await peers.measure(
        srv,
        ingest_seconds=sizes["ingest seconds"],
        scorer_events=sizes["peer scorer events"],
        bridge=bridge,
    )
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    bridge = os.environ.get("CXLOOP_BENCH_BRIDGE")
    parser.add_argument(
        "--bridge",
        type=Path,
        default=Path(bridge) if bridge else None,
        metavar="DIR",
        help="the Strimzi Kafka Bridge's installation (default: $CXLOOP_BENCH_BRIDGE)",
    )
    args = parser.parse_args()
    q = args.quick
    sizes = {
        "scorer events": 20_000 if q else 1_000_000,
        "naive events": 300 if q else 5_000,
        "ingest seconds": 3 if q else 15,
        "latency seconds": 10 if q else 60,
        "responses": 100_000 if q else 10_000_000,
        "orders": 50_000 if q else 1_000_000,
        "requests": 20 if q else 200,
        # A ratio row's p99 from 1,000 requests rests on its 10 slowest, not on 2 of 200.
        "ratio requests": 100 if q else 1_000,
        "peer scorer events": 20_000 if q else 300_000,
    }
    started = time.monotonic()
    results: list[Result] = []
    out = Path(args.out)
    async with servers() as srv:
        print(f"servers: {srv.describe()}", flush=True)
        steps: list[tuple[str, Callable[[], Awaitable[list[Result]]]]] = [
            ("ingest", lambda: ingest.measure(srv, sizes["ingest seconds"])),
            (
                "scorer throughput",
                lambda: scorer_throughput.measure(
                    srv, sizes["scorer events"], sizes["naive events"], spread_hours=24
                ),
            ),
            ("end-to-end latency", lambda: latency.measure(srv, 500, sizes["latency seconds"])),
            (
                "query latency",
                lambda: queries.measure(
                    srv,
                    sizes["responses"],
                    sizes["requests"],
                    sizes["orders"],
                    ratio_requests=sizes["ratio requests"],
                ),
            ),
            ("peers", lambda: measure_peers(srv, sizes, args.bridge)),
        ]
        for name, step in steps:
            results += await section(name, started, step)
            # Written after every section, so that a run cut short keeps what it measured.
            await write(out, report(srv, results, sizes, q, started, done=False))
        text = report(srv, results, sizes, q, started, done=True)
    await write(out, text)
    print(text)


async def write(out: Path, text: str) -> None:
    await asyncio.to_thread(out.write_text, text, encoding="utf-8")


def report(
    srv: Servers, results: list[Result], sizes: dict[str, int], q: bool, started: float,
    *, done: bool,
) -> str:  # fmt: skip
    took = time.monotonic() - started
    state = "" if done else "\n**Incomplete: the run was still going (or was cut short).**\n"
    text = f"""# Benchmarks

Written by `make bench` (`python bench/run.py{" --quick" if q else ""}`) on
{datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit `{commit()}`, in {took / 60:.0f} minutes.
Each line compares cxloop with its reference measured in the same run on the same
machine, so that machine noise mostly cancels out in the ratio.
{state}
- **Machine:** {machine()}
- **Servers:** {srv.kafka.backend} Kafka, {srv.postgres.backend} Postgres, started by the
  benchmark itself (as the tests start them, but Postgres on its durable defaults); as the
  server reports it: {srv.durability}
- **Sizes:** {", ".join(f"{k} {v:,}" for k, v in sizes.items())}
- **Single scripts:** `python bench/ingest.py`, `bench/scorer_throughput.py`,
  `bench/latency.py`, `bench/queries.py`, `bench/peers.py` (each takes `--help`)

{table(results)}
"""
    notes = Path(__file__).with_name("notes.md")
    if notes.exists():
        text += "\n" + notes.read_text(encoding="utf-8")
    return text


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
