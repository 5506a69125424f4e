"""The alerting outbox's HTTP client: CPU per webhook, aiohttp against httpx, side by side.

Both post the same signed-size webhook (about 1 KiB of Japanese comment) to
hook_receiver.py in a process of its own, 16 at a time (a receiver's default
``max_in_flight``), with a pool of 16 kept-alive connections, reading and dropping each
answer as the outbox does; the aiohttp side is the outbox's own session
(``client_session``). Each client runs --rounds times, alternating, and the CPU-seconds
of this process alone are counted: the receiver's are not.

    python bench/http_clients.py --requests 3000 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx
from common import hook_receiver

from services.alerting.config import AlertingConfig
from services.alerting.outbox import client_session

BODY = (
    '{"type":"alert.opened","data":{"alert":{"customer_id":"c1","rule":"detractor",'
    '"score":2,"comment":"' + "配送が遅い" * 60 + '"}}}'
).encode()
HEADERS = {"Content-Type": "application/json", "webhook-id": "msg_1", "webhook-signature": "v1,x"}
AT_ONCE = 16


async def with_httpx(url: str, n: int) -> None:
    # As the outbox used it until a2eb3af: one pool, streamed answers, a 1 s keep-alive.
    limits = httpx.Limits(
        max_connections=AT_ONCE, max_keepalive_connections=AT_ONCE, keepalive_expiry=1.0
    )
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        gate = asyncio.Semaphore(AT_ONCE)

        async def one() -> None:
            async with gate, client.stream("POST", url, content=BODY, headers=HEADERS) as r:
                async for _ in r.aiter_raw():
                    pass

        await asyncio.gather(*(one() for _ in range(n)))


async def with_aiohttp(url: str, n: int) -> None:
    # The outbox's own session: its pool, TLS context, headers and settings.
    config = AlertingConfig.model_validate(
        {"receivers": [{"name": "r", "type": "webhook", "url": url}]}
    )
    async with client_session(config) as session:
        gate = asyncio.Semaphore(AT_ONCE)

        async def one() -> None:
            async with (
                gate,
                session.post(url, data=BODY, headers=HEADERS, allow_redirects=False) as r,
            ):
                async for _ in r.content.iter_any():
                    pass

        await asyncio.gather(*(one() for _ in range(n)))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    async with hook_receiver() as receiver:
        url = str(receiver.base_url.join("/hook"))
        clients: dict[str, Callable[[str, int], Awaitable[None]]] = {
            "httpx": with_httpx,
            "aiohttp": with_aiohttp,
        }
        cpu: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, send in clients.items():
                await send(url, 200)  # connections made, code paths warm
                started = time.process_time()
                await send(url, args.requests)
                cpu[name].append((time.process_time() - started) / args.requests * 1e6)
        for name, values in cpu.items():
            print(f"{name}: {statistics.median(values):,.0f} µs CPU per webhook ({values})")
        ratio = statistics.median(cpu["httpx"]) / statistics.median(cpu["aiohttp"])
        print(f"httpx / aiohttp: {ratio:.1f}x the CPU per webhook")


if __name__ == "__main__":
    asyncio.run(main())
