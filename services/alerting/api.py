"""The alerting service's API."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query

from services.alerting import repository
from services.alerting.schemas import Alert, AlertList, AlertStatus
from shared.apikeys import Scope
from shared.http import EngineDep, require

router = APIRouter(prefix="/v1", dependencies=[require(Scope.ALERTS_READ)], tags=["alerts"])


@router.get("/alerts", response_model=AlertList, summary="List alerts, newest first")
async def list_alerts(
    engine: EngineDep,
    status: AlertStatus | None = None,
    rule: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AlertList:
    """List alerts, optionally only those with `status` or from `rule`."""
    async with engine.connect() as conn:
        rows = await repository.list_alerts(
            conn, status=status.value if status else None, rule=rule, limit=limit
        )
    return AlertList(items=[Alert.model_validate(r) for r in rows])


@router.get(
    "/alerts/{alert_id}",
    response_model=Alert,
    summary="Get one alert",
    responses={404: {"description": "No alert has this id"}},
)
async def get_alert(engine: EngineDep, alert_id: UUID) -> Alert:
    """Return one alert by id."""
    async with engine.connect() as conn:
        row = await repository.get_alert(conn, alert_id)
    if row is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return Alert.model_validate(row)
