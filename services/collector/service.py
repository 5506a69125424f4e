"""Turning accepted HTTP payloads into wire events, and producing them."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from uuid import UUID, uuid4

from aiokafka.errors import KafkaError
from fastapi.responses import JSONResponse

from services.collector import metrics
from services.collector.schemas import ResponseIn
from shared.errors import BrokerUnavailableError
from shared.events import ResponseSubmitted, Segments, resolve_scale
from shared.http import error_body
from shared.kafka import HEADER_SCHEMA, HEADER_TYPE, encode
from shared.runtime import ProducerHandle
from shared.topics import Topic, partition_key


def response_event(payload: ResponseIn, *, received_at: datetime, source: str) -> ResponseSubmitted:
    """Build the wire event for an accepted response."""
    return ResponseSubmitted(
        event_id=payload.event_id or uuid4(),
        occurred_at=payload.occurred_at or received_at,
        received_at=received_at,
        source=source,
        channel=payload.channel,
        customer_id=payload.customer_id,
        metric=payload.metric,
        scale=resolve_scale(payload.metric, payload.scale),
        score=payload.score,
        survey_type=payload.survey_type,
        touchpoint=payload.touchpoint,
        submission_id=payload.submission_id,
        ticket_id=payload.ticket_id,
        comment=payload.comment,
        reasons=tuple(payload.reasons),
        segments=Segments.model_validate(payload.segments.model_dump()),
        locale=payload.locale,
    )


async def publish(handle: ProducerHandle, event: ResponseSubmitted, *, source: str) -> None:
    """Produce ``event`` and wait for the broker's ack; raise ``BrokerUnavailableError`` if none."""
    producer = handle.producer
    started = time.perf_counter()
    try:
        async with asyncio.timeout(handle.settings.produce_timeout_seconds):
            await producer.send_and_wait(
                handle.settings.topic(Topic.RESPONSES),
                value=encode(event),
                key=partition_key(event.customer_id),
                headers=[
                    (HEADER_TYPE, event.type.encode()),
                    (HEADER_SCHEMA, str(event.schema_version).encode()),
                ],
            )
    except (KafkaError, TimeoutError) as exc:
        raise BrokerUnavailableError(
            f"the broker did not acknowledge: {type(exc).__name__}"
        ) from exc
    metrics.PRODUCE_SECONDS.observe(time.perf_counter() - started)
    metrics.ACCEPTED.labels(source=source, kind=event.type).inc()


def unavailable(detail: str, event_id: UUID) -> JSONResponse:
    """Return the 503 that tells a caller to retry later with the same event id."""
    metrics.UNAVAILABLE.inc()
    return JSONResponse(
        error_body(503, detail + "; retry with the same event_id", event_id=str(event_id)),
        status_code=503,
        headers={"Retry-After": "2"},
    )
