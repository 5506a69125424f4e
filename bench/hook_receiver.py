"""The latency bench's webhook receiver, in a process of its own.

Run as ``python bench/hook_receiver.py PORT``. It stamps each alert's arrival with
``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process on the machine) as its
request arrives, and answers ``GET /arrivals`` with every customer id's first arrival. In the
generator's own event loop, arrivals waited behind the generator's sends and were stamped
late by as much as the generator fell behind.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

arrived: dict[str, float] = {}


async def hook(request: Request) -> Response:
    at = time.monotonic()
    body: dict[str, Any] = orjson.loads(await request.body())
    arrived.setdefault(body["data"]["alert"]["customer_id"], at)
    return Response(b'{"ok":true}', media_type="application/json")


async def arrivals(request: Request) -> Response:
    return Response(orjson.dumps(arrived), media_type="application/json")


app = Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/arrivals", arrivals)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
