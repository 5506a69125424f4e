"""The HTTP limit of our stack: FastAPI parsing the collector's body model, without Kafka.

Run as ``python bench/bare_app.py PORT``; uvicorn is started exactly as the collector's.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn
from fastapi import FastAPI

from services.collector.schemas import ResponseIn, Submitted
from shared.http.app import NO_NATIVE_TELEMETRY

# FastAPI's native telemetry off, as in the services: the reference pays no per-request cost
# they do not. (The import loads the services' HTTP modules; only start-up pays for that.)
app = FastAPI(**NO_NATIVE_TELEMETRY)


@app.post("/v1/responses", status_code=202)
async def submit(payload: ResponseIn) -> Submitted:
    return Submitted(event_id=payload.event_id or uuid.uuid4(), status="accepted")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
