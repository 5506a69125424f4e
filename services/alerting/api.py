"""The alerting service's API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.alerting import lifecycle, repository
from services.alerting.rules import Severity
from services.alerting.schemas import (
    AckIn,
    Alert,
    AlertErasure,
    AlertList,
    AlertStatus,
    AssignIn,
    CommentIn,
    History,
    HistoryEntry,
    NotificationOut,
    Notifications,
    ResolveIn,
    Silence,
    SilenceIn,
    SilenceList,
)
from shared import erasure
from shared.apikeys import Principal, Scope
from shared.events import utcnow
from shared.http import EngineDep, require
from shared.privacy import Hasher

T = TypeVar("T")

router = APIRouter(prefix="/v1", tags=["alerts"])
READ = [require(Scope.ALERTS_READ)]


@router.get(
    "/alerts", response_model=AlertList, summary="List alerts, newest first", dependencies=READ
)
async def list_alerts(
    engine: EngineDep,
    status: AlertStatus | None = None,
    rule: str | None = None,
    severity: Severity | None = None,
    customer_id: str | None = None,
    channel: str | None = None,
    ticket_id: str | None = None,
    location: str | None = None,
    assignee: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AlertList:
    """List alerts, newest first, filtered by any of the fields given."""
    given = {
        "status": status,
        "rule": rule,
        "severity": severity,
        "customer_id": customer_id,
        "channel": channel,
        "ticket_id": ticket_id,
        "location": location,
        "assignee": assignee,
    }
    filters = {
        k: str(v.value if hasattr(v, "value") else v) for k, v in given.items() if v is not None
    }
    async with engine.connect() as conn:
        rows = await repository.list_alerts(conn, filters=filters, limit=limit)
    return AlertList(items=[Alert.model_validate(r) for r in rows])


@router.get(
    "/alerts/{alert_id}",
    response_model=Alert,
    summary="Get one alert",
    responses={404: {"description": "No alert has this id"}},
    dependencies=READ,
)
async def get_alert(engine: EngineDep, alert_id: UUID) -> Alert:
    """Return one alert by id."""
    async with engine.connect() as conn:
        row = await repository.get_alert(conn, alert_id)
    if row is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return Alert.model_validate(row)


_WRITE = require(Scope.ALERTS_WRITE)
# The key that calls a writing route: the actor recorded, whatever `by` the body names.
Writer = Annotated[Principal, _WRITE]
TRANSITION_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No alert has this id"},
    409: {"description": "The alert is resolved already"},
}


async def _transition(engine: AsyncEngine, step: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    try:
        async with engine.begin() as conn:
            return await step(conn)
    except lifecycle.NotFound as exc:
        raise HTTPException(404, f"no alert {exc}") from None
    except lifecycle.Conflict as exc:
        raise HTTPException(409, str(exc)) from None


@router.post(
    "/alerts/{alert_id}/ack",
    response_model=Alert,
    summary="Acknowledge an alert",
    responses=TRANSITION_ERRORS,
)
async def acknowledge(
    request: Request, engine: EngineDep, principal: Writer, alert_id: UUID, body: AckIn
) -> Alert:
    """Take the alert: it stops escalating. Acknowledging twice changes nothing. The history
    records the key's name as the actor, and `by`, if given, as its display name."""
    row = await _transition(
        engine,
        lambda c: lifecycle.acknowledge(
            c,
            alert_id,
            principal.name,
            body.note,
            request.app.state.routing,
            display_name=body.by,
            actor_id=principal.caller,
        ),
    )
    return Alert.model_validate(row)


@router.post(
    "/alerts/{alert_id}/resolve",
    response_model=Alert,
    summary="Resolve an alert",
    responses=TRANSITION_ERRORS,
)
async def resolve(
    request: Request, engine: EngineDep, principal: Writer, alert_id: UUID, body: ResolveIn
) -> Alert:
    """Close the loop, saying what was done. Resolving twice changes nothing. The history
    records the key's name as the actor, and `by`, if given, as its display name."""
    row = await _transition(
        engine,
        lambda c: lifecycle.resolve(
            c,
            alert_id,
            principal.name,
            body.note,
            config=request.app.state.routing,
            display_name=body.by,
            actor_id=principal.caller,
        ),
    )
    return Alert.model_validate(row)


@router.post(
    "/alerts/{alert_id}/assign",
    response_model=Alert,
    summary="Assign an alert",
    responses=TRANSITION_ERRORS,
)
async def assign(engine: EngineDep, principal: Writer, alert_id: UUID, body: AssignIn) -> Alert:
    """Give an unresolved alert to someone. The history records the key's name as the
    actor, and `by`, if given, as its display name."""
    row = await _transition(
        engine,
        lambda c: lifecycle.assign(
            c, alert_id, body.to, principal.name, display_name=body.by, actor_id=principal.caller
        ),
    )
    return Alert.model_validate(row)


@router.post(
    "/alerts/{alert_id}/comments",
    status_code=201,
    response_model=History,
    summary="Comment on an alert",
    responses=TRANSITION_ERRORS,
)
async def add_comment(
    engine: EngineDep, principal: Writer, alert_id: UUID, body: CommentIn
) -> History:
    """Add a comment, by the key's name and `by` as its display name if given; answers with
    the alert's whole history."""

    async def step(conn: AsyncConnection) -> list[dict[str, Any]]:
        await lifecycle.comment(
            conn,
            alert_id,
            principal.name,
            body.text,
            display_name=body.by,
            actor_id=principal.caller,
        )
        return await lifecycle.entries(conn, alert_id)

    return History(items=[HistoryEntry.model_validate(e) for e in await _transition(engine, step)])


@router.get(
    "/alerts/{alert_id}/history",
    response_model=History,
    summary="An alert's history",
    responses=TRANSITION_ERRORS,
    dependencies=[require(Scope.ALERTS_READ)],
)
async def alert_history(engine: EngineDep, alert_id: UUID) -> History:
    """Everything that happened to the alert, oldest first: who (the key that acted, and
    the display name it gave), when, and their notes."""
    rows = await _transition(engine, lambda c: lifecycle.entries(c, alert_id))
    return History(items=[HistoryEntry.model_validate(e) for e in rows])


@router.get(
    "/alerts/{alert_id}/notifications",
    response_model=Notifications,
    summary="Where an alert was announced, and how delivery went",
    responses=TRANSITION_ERRORS,
    dependencies=READ,
)
async def alert_notifications(engine: EngineDep, alert_id: UUID) -> Notifications:
    """Each notification of the alert: receiver, action, status (pending, delivered or
    failed), attempts and the last error. A failed one is not retried: fix the receiver."""
    rows = await _transition(engine, lambda c: repository.notifications_of(c, alert_id))
    return Notifications(items=[NotificationOut.model_validate(r) for r in rows])


@router.post(
    "/silences",
    status_code=201,
    response_model=Silence,
    tags=["silences"],
    summary="Silence matching alerts for a while",
)
async def create_silence(engine: EngineDep, principal: Writer, body: SilenceIn) -> Silence:
    """Alerts whose fields all equal `matchers` are still opened and listed, but announced
    to no receiver until the silence ends. The silence records the key's name as its actor,
    and `created_by` (the key's name if not given) as its display name."""
    ends_at = body.ends_at or utcnow() + timedelta(minutes=body.duration_minutes or 0)
    async with engine.begin() as conn:
        row = await repository.create_silence(
            conn,
            body.matchers,
            ends_at,
            principal.name,
            body.created_by or principal.name,
            body.comment,
            actor_id=principal.caller,
        )
    return Silence.model_validate(row)


@router.get(
    "/silences",
    response_model=SilenceList,
    tags=["silences"],
    summary="List silences",
    dependencies=READ,
)
async def list_silences(engine: EngineDep, active: bool = True) -> SilenceList:
    """Active silences (or, with `active=false`, every silence), newest first."""
    async with engine.connect() as conn:
        rows = await repository.list_silences(conn, active_only=active)
    return SilenceList(items=[Silence.model_validate(r) for r in rows])


@router.delete(
    "/silences/{silence_id}",
    response_model=Silence,
    tags=["silences"],
    summary="End a silence now",
    responses={404: {"description": "No silence has this id"}},
)
async def expire_silence(engine: EngineDep, principal: Writer, silence_id: UUID) -> Silence:
    """End the silence; it stays listed with its end, the key that ended it and when. Ending
    an ended silence changes nothing."""
    async with engine.begin() as conn:
        row = await repository.expire_silence(
            conn, silence_id, principal.name, actor_id=principal.caller
        )
    if row is None:
        raise HTTPException(404, f"no silence {silence_id}")
    return Silence.model_validate(row)


@router.delete(
    "/customers/{customer_id}",
    response_model=AlertErasure,
    tags=["customers"],
    summary="Erase a customer's personal data from alerts",
    dependencies=[require(Scope.CUSTOMERS_ERASE)],
)
async def erase_customer(request: Request, engine: EngineDep, customer_id: str) -> AlertErasure:
    """Remove the customer's comments, reasons and notes from their alerts and history, and
    replace their id in alerts and SLA deadlines with one pseudonym. The alerts and their
    counts stay; a later event for the customer is stored under the pseudonym. This erases
    the alerting service alone: the collector's `DELETE /v1/customers/{id}` erases the
    customer from every service."""
    hasher: Hasher = request.app.state.hasher
    async with engine.begin() as conn:
        await erasure.lock(conn, "alerting", exclusive=True)
        pseudonym = await erasure.pseudonym_for(conn, hasher, "alerting", customer_id)
        erased = await repository.erase_customer(conn, customer_id, pseudonym)
    return AlertErasure(alerts_pseudonymised=erased)
