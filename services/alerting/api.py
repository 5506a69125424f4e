"""The alerting service's API: each route parses, calls ``service``, and answers."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import ValidationError

from services.alerting import service
from services.alerting.config import AlertingConfig
from services.alerting.rules import Severity
from services.alerting.schemas import (
    AckIn,
    Alert,
    AlertErasure,
    AlertList,
    AssignIn,
    CommentIn,
    History,
    Notifications,
    QueueCounts,
    QueueFilters,
    QueueSort,
    QueueStatus,
    ResolveIn,
    Silence,
    SilenceIn,
    SilenceList,
)
from shared.apikeys import Principal, Scope
from shared.errors import PermanentError
from shared.http import EngineDep, require
from shared.privacy import Hasher

T = TypeVar("T")

router = APIRouter(prefix="/v1", tags=["alerts"])
READ = [require(Scope.ALERTS_READ)]
_WRITE = require(Scope.ALERTS_WRITE)
# The key that calls a writing route: the actor recorded, whatever `by` the body names.
Writer = Annotated[Principal, _WRITE]
TRANSITION_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No alert has this id"},
    409: {"description": "The alert is resolved already"},
}


async def _answer(work: Awaitable[T]) -> T:
    """Await the service; its NotFound is 404 and its Conflict 409."""
    try:
        return await work
    except service.SilenceNotFound as exc:
        raise HTTPException(404, f"no silence {exc}") from None
    except service.NotFound as exc:
        raise HTTPException(404, f"no alert {exc}") from None
    except service.Conflict as exc:
        raise HTTPException(409, str(exc)) from None


def _routing(request: Request) -> AlertingConfig:
    config: AlertingConfig = request.app.state.routing
    return config


RoutingDep = Annotated[AlertingConfig, Depends(_routing)]


def _filters(
    status: Annotated[
        QueueStatus | None,
        Query(
            description="One status, `unresolved` (open or acknowledged), or `all` (the default)."
        ),
    ] = None,
    rule: str | None = None,
    severity: Severity | None = None,
    customer_id: str | None = None,
    channel: str | None = None,
    ticket_id: str | None = None,
    location: str | None = None,
    assignee: str | None = None,
    unassigned: Annotated[
        bool, Query(description="Only alerts nobody is assigned (not with `assignee`).")
    ] = False,
) -> QueueFilters:
    try:
        return QueueFilters(
            status=status or QueueStatus.ALL,
            rule=rule,
            severity=None if severity is None else severity.value,
            customer_id=customer_id,
            channel=channel,
            ticket_id=ticket_id,
            location=location,
            assignee=assignee,
            unassigned=unassigned,
        )
    except ValidationError:
        raise PermanentError(
            "give either assignee or unassigned, not both", field="unassigned"
        ) from None


FiltersDep = Annotated[QueueFilters, Depends(_filters)]


@router.get(
    "/alerts",
    response_model=AlertList,
    summary="List alerts, newest first or as the on-call queue",
    dependencies=READ,
)
async def list_alerts(
    engine: EngineDep,
    filters: FiltersDep,
    sort: Annotated[
        QueueSort,
        Query(
            description="`newest` (the default), `oldest`, or `severity`: critical, then "
            "warning, then info, each oldest first."
        ),
    ] = QueueSort.NEWEST,
    limit: Annotated[int, Query(ge=1, le=service.QUEUE_LIMIT)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=1000, description="`next_cursor` of the previous page.")
    ] = None,
) -> AlertList:
    """List alerts whose fields equal every filter given (every status unless `status`
    says), in `sort` order; `next_cursor` fetches the next page."""
    return await service.queue(engine, filters, sort, limit, cursor)


@router.get(
    "/alerts/counts",
    response_model=QueueCounts,
    summary="Count alerts per rule, channel, location, assignee and status",
    dependencies=READ,
)
async def count_alerts(engine: EngineDep, filters: FiltersDep) -> QueueCounts:
    """For each of rule, channel, location, assignee and status, how many alerts have each
    value under the other filters given (every status unless `status` says): what choosing
    that value would list. A null value counts the alerts without one (e.g. unassigned).
    Each lists its 50 most frequent values; `more` says whether there are others."""
    return await service.queue_counts(engine, filters)


@router.get(
    "/alerts/{alert_id}",
    response_model=Alert,
    summary="Get one alert",
    responses={404: {"description": "No alert has this id"}},
    dependencies=READ,
)
async def get_alert(engine: EngineDep, alert_id: UUID) -> Alert:
    """Return one alert by id."""
    return await _answer(service.get_alert(engine, alert_id))


@router.post(
    "/alerts/{alert_id}/ack",
    response_model=Alert,
    summary="Acknowledge an alert",
    responses=TRANSITION_ERRORS,
)
async def acknowledge(
    engine: EngineDep, routing: RoutingDep, principal: Writer, alert_id: UUID, body: AckIn
) -> Alert:
    """Take the alert: it stops escalating. The history records the key's name as the actor,
    and `by`, if given, as its display name.

    Acknowledging an acknowledged alert (someone else got there first, or a retry) changes
    nothing and answers 200 with the alert as it is, `acknowledged_by` naming who took it;
    a `note` given is then added to the history as a comment, so it is not lost."""
    actor = service.Actor.of(principal)
    done = await _answer(service.acknowledge(engine, routing, alert_id, actor, body))
    return done.alert


@router.post(
    "/alerts/{alert_id}/resolve",
    response_model=Alert,
    summary="Resolve an alert",
    responses=TRANSITION_ERRORS,
)
async def resolve(
    engine: EngineDep, routing: RoutingDep, principal: Writer, alert_id: UUID, body: ResolveIn
) -> Alert:
    """Close the loop, saying what was done. The history records the key's name as the
    actor, and `by`, if given, as its display name.

    Resolving a resolved alert (someone else got there first, or a retry) changes nothing
    and answers 200 with the alert as it is: its `note`, `resolved_by` and `resolved_at` are
    the first resolution's. The `note` given is then added to the history as a comment, so
    it is not lost (unless it is the resolution note already there: a retry)."""
    actor = service.Actor.of(principal)
    done = await _answer(service.resolve(engine, routing, alert_id, actor, body))
    return done.alert


@router.post(
    "/alerts/{alert_id}/assign",
    response_model=Alert,
    summary="Assign an alert",
    responses=TRANSITION_ERRORS,
)
async def assign(engine: EngineDep, principal: Writer, alert_id: UUID, body: AssignIn) -> Alert:
    """Give an unresolved alert to someone. The history records the key's name as the
    actor, and `by`, if given, as its display name."""
    return await _answer(service.assign(engine, alert_id, service.Actor.of(principal), body))


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
    return await _answer(service.comment(engine, alert_id, service.Actor.of(principal), body))


@router.get(
    "/alerts/{alert_id}/history",
    response_model=History,
    summary="An alert's history",
    responses=TRANSITION_ERRORS,
    dependencies=READ,
)
async def alert_history(engine: EngineDep, alert_id: UUID) -> History:
    """Everything that happened to the alert, oldest first: who (the key that acted, and
    the display name it gave), when, and their notes."""
    return await _answer(service.history(engine, alert_id))


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
    return await _answer(service.notifications(engine, alert_id))


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
    return await service.create_silence(engine, service.Actor.of(principal), body)


@router.get(
    "/silences",
    response_model=SilenceList,
    tags=["silences"],
    summary="List silences",
    dependencies=READ,
)
async def list_silences(engine: EngineDep, active: bool = True) -> SilenceList:
    """Active silences (or, with `active=false`, every silence), newest first: the newest
    500, `more` saying whether there are older ones."""
    return await service.list_silences(engine, active=active)


@router.delete(
    "/silences/{silence_id}",
    response_model=Silence,
    tags=["silences"],
    summary="End a silence now",
    responses={404: {"description": "No silence has this id"}},
)
async def expire_silence(engine: EngineDep, principal: Writer, silence_id: UUID) -> Silence:
    """End the silence; it stays listed with its end, the key that ended it and when. Ending
    an ended silence changes nothing and answers 200 with it as it is (`expired_by` names
    who ended it, if someone did)."""
    actor = service.Actor.of(principal)
    return (await _answer(service.expire_silence(engine, silence_id, actor))).silence


@router.delete(
    "/customers/{customer_id}",
    response_model=AlertErasure,
    tags=["customers"],
    summary="Erase a customer's personal data from alerts",
    dependencies=[require(Scope.CUSTOMERS_ERASE)],
)
async def erase_customer(request: Request, engine: EngineDep, customer_id: str) -> AlertErasure:
    """Remove the customer's comments, reasons and notes from their alerts and history, and
    replace their id in alerts, SLA deadlines and the matchers of silences with one
    pseudonym (such a silence's comment becomes `(erased)`). The alerts and their
    counts stay; a later event for the customer is stored under the pseudonym. This erases
    the alerting service alone: the collector's `DELETE /v1/customers/{id}` erases the
    customer from every service."""
    hasher: Hasher = request.app.state.hasher
    return await service.erase_customer(engine, hasher, customer_id)
