"""The scorer's query API."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from services.scorer import aggregates, repository
from services.scorer.schemas import CesScore, CsatScore, NpsScore, Window
from shared.apikeys import Scope
from shared.events import SCALES, Channel, Metric, SurveyType, utcnow
from shared.http import EngineDep, require

router = APIRouter(prefix="/v1", dependencies=[require(Scope.SCORES_READ)], tags=["scores"])

WINDOWS = {
    Window.HOUR: timedelta(hours=1),
    Window.DAY: timedelta(hours=24),
    Window.WEEK: timedelta(days=7),
    Window.MONTH: timedelta(days=30),
    Window.QUARTER: timedelta(days=90),
}


@router.get(
    "/scores",
    summary="A score over a rolling window, with its sample size",
    response_model=NpsScore | CsatScore | CesScore,
    response_model_by_alias=True,
)
async def get_score(
    engine: EngineDep,
    metric: Metric,
    window: Window = Window.MONTH,
    scale: Annotated[
        int | None, Query(description="Required for ces: 5 or 7 (the scales are never mixed).")
    ] = None,
    channel: Channel | None = None,
    survey_type: SurveyType | None = None,
    touchpoint: str | None = None,
    location: str | None = None,
    product: str | None = None,
    business_unit: str | None = None,
) -> NpsScore | CsatScore | CesScore:
    """Return the score of `metric` over `window`, counting responses by when they occurred.

    Buckets are hourly, so the window starts at the top of the hour `window` ago.
    """
    if metric is Metric.CES and scale is None:
        raise HTTPException(422, "scale is required for ces: 5 or 7")
    if scale is not None and scale not in SCALES[metric]:
        raise HTTPException(422, f"scale {scale} is not valid for {metric.value}")
    filters = {
        k: str(v)
        for k, v in {
            "channel": channel,
            "survey_type": survey_type,
            "touchpoint": touchpoint,
            "location": location,
            "product": product,
            "business_unit": business_unit,
        }.items()
        if v is not None
    }
    until = utcnow()
    since = aggregates.bucket_start(until - WINDOWS[window])
    async with engine.connect() as conn:
        c = await repository.sum_buckets(
            conn, metric=metric.value, since=since, until=until, scale=scale, filters=filters
        )
    common = {"window": window, "from": since, "to": until, "n": c.n, "filters": filters}
    if metric is Metric.NPS:
        return NpsScore(
            **common,
            score=aggregates.nps(c),
            promoters=c.promoters,
            passives=c.passives,
            detractors=c.detractors,
            promoter_share=aggregates.share(c.promoters, c.n),
            passive_share=aggregates.share(c.passives, c.n),
            detractor_share=aggregates.share(c.detractors, c.n),
            margin_of_error=aggregates.nps_margin_of_error(c),
        )
    if metric is Metric.CSAT:
        return CsatScore(
            **common,
            score=aggregates.share(c.satisfied, c.n),
            satisfied=c.satisfied,
            mean=aggregates.mean(c),
        )
    assert scale is not None
    return CesScore(
        **common,
        scale=scale,
        score=aggregates.mean(c),
        easy=c.easy,
        easy_share=aggregates.share(c.easy, c.n),
    )
