"""Dependencies shared by the collector's routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request
from pydantic import BaseModel, Field

from services.collector.service import Ingest
from shared.http import FieldErrors
from shared.privacy import Hasher


async def get_ingest(request: Request) -> Ingest:
    ingest: Ingest = request.app.state.ingest
    return ingest


IngestDep = Annotated[Ingest, Depends(get_ingest)]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key"},
    403: {"description": "The key may not use this route or source"},
    413: {"description": "Body larger than the configured limit"},
    415: {"description": "Body of a media type the route does not take"},
    422: {"description": "A field is invalid; every bad field is named"},
    503: {
        "description": "Nothing was stored: the broker did not acknowledge, the order "
        "ledger (Postgres) was unreachable or busy, or Postgres was unreachable to look up "
        "a source's key, as the detail says; retry with the same event_id (Retry-After)"
    },
}

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Makes a retry harmless: a repeat of the same body within the window is "
        "answered `duplicate` and not produced again; the same key with a different body is "
        "409. Keys belong to the API key that sends them: another caller's equal key is "
        "another event. In a batch, each item is matched by its content, in any order.",
    ),
]


class BatchIn(BaseModel):
    """Up to CXLOOP_COLLECTOR_MAX_BATCH_ITEMS items (500), each validated on its own."""

    items: list[dict[str, Any]] = Field(min_length=1)


def check_batch_size(body: BatchIn, ingest: Ingest) -> None:
    """Refuse a batch with more items than configured."""
    limit = ingest.settings.max_batch_items
    if len(body.items) > limit:
        raise FieldErrors(
            [
                {
                    "field": "items",
                    "detail": f"{len(body.items)} items; a batch holds at most {limit}",
                }
            ]
        )


async def get_hasher(request: Request) -> Hasher:
    hasher: Hasher = request.app.state.hasher
    return hasher


HasherDep = Annotated[Hasher, Depends(get_hasher)]
