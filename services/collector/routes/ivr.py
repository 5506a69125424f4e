"""Post-call IVR surveys: Amazon Connect contact-flow events and generic IVR JSON."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from services.collector import metrics
from services.collector.deps import ERRORS, IngestDep
from services.collector.schemas import BatchResult, ItemResult
from services.collector.service import Ingest, Item, batch_response, summarise
from services.collector.sources import ivr
from shared.apikeys import Scope
from shared.events import (
    Channel,
    Metric,
    ResponseSubmitted,
    SurveyType,
    check_score,
    resolve_scale,
    utcnow,
)
from shared.http import FieldErrors, load_json, require
from shared.settings import IvrQuestion

router = APIRouter(prefix="/v1/sources", tags=["sources"])

CALL_RESPONSES = {
    **ERRORS,
    200: {"description": "Each configured question's result"},
    503: {"description": "The broker missed an answer: resend the call (stored answers dedupe)"},
}


async def submit_call(
    ingest: Ingest, call: ivr.IvrCall, surveys: dict[str, dict[str, IvrQuestion]], *, source: str
) -> BatchResult:
    """Turn each configured question of a call into a response, sharing one submission id."""
    questions = surveys.get(call.survey)
    if questions is None:
        raise FieldErrors(
            [
                {
                    "field": "survey",
                    "detail": f"survey {call.survey!r} is not configured "
                    "(CXLOOP_SOURCES_IVR_SURVEYS)",
                }
            ]
        )
    received_at = utcnow()
    results: list[ItemResult | None] = []
    items: list[Item] = []
    positions: list[int] = []
    for index, (question, spec) in enumerate(questions.items()):
        raw = call.answers.get(question)
        problem: str | None = None
        if raw is None:
            problem = "no answer (the caller may have hung up)"
        else:
            score = ivr.digits(raw)
            scale = resolve_scale(Metric(spec.metric), spec.scale)
            try:
                if score is None:
                    raise ValueError(f"{raw!r} is not a number keyed in")
                check_score(Metric(spec.metric), scale, score)
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            metrics.REJECTED.labels(source=source, reason="validation").inc()
            results.append(
                ItemResult(
                    index=index,
                    question=question,
                    status="rejected",
                    errors=[{"field": question, "detail": problem}],
                )
            )
            continue
        assert score is not None
        event_id, key = ingest.resolve_event_id(source, None, f"{call.call_id}:{question}")
        items.append(
            Item(
                ResponseSubmitted(
                    event_id=event_id,
                    occurred_at=call.occurred_at or received_at,
                    received_at=received_at,
                    source=source,
                    channel=Channel.CALL_CENTER,
                    customer_id=call.customer_id,
                    metric=Metric(spec.metric),
                    scale=scale,
                    score=score,
                    survey_type=SurveyType.TRANSACTIONAL,
                    touchpoint=call.touchpoint,
                    submission_id=call.submission_id,
                    ticket_id=call.ticket_id,
                    locale=call.locale,
                ),
                key,
            )
        )
        positions.append(index)
        results.append(None)
    names = list(questions)
    for index, outcome in zip(positions, await ingest.submit(items, source=source), strict=True):
        results[index] = ItemResult(
            index=index,
            question=names[index],
            status=outcome.status.value,
            event_id=outcome.event_id,
        )
    return summarise([r for r in results if r is not None])


@router.post(
    "/amazon-connect",
    response_model=BatchResult,
    summary="Amazon Connect post-call survey (contact-flow event)",
    responses=CALL_RESPONSES,
    dependencies=[require(Scope.RESPONSES_WRITE, "amazon_connect")],
)
async def amazon_connect(request: Request, ingest: IngestDep) -> BatchResult | JSONResponse:
    """Record a post-call survey from an Amazon Connect contact flow (via a Lambda).

    Send the ContactFlowEvent as Amazon Connect gives it. The contact attribute `surveyId`
    picks the survey (else `default`); each configured question (e.g. `survey_result_1`)
    becomes one response, all sharing a submission id. `customerId` names the customer;
    without it the caller's number is kept only as a keyed hash. Retrying a call is
    harmless: the contact id and question name each answer.
    """
    body = load_json(await request.body())
    call = ivr.from_amazon_connect(body if isinstance(body, dict) else {}, request.app.state.hasher)
    surveys = request.app.state.sources.ivr_surveys
    return batch_response(await submit_call(ingest, call, surveys, source="amazon_connect"))


@router.post(
    "/ivr",
    response_model=BatchResult,
    summary="Generic IVR post-call survey",
    responses=CALL_RESPONSES,
    dependencies=[require(Scope.RESPONSES_WRITE, "ivr")],
)
async def generic_ivr(
    payload: ivr.GenericIvrCall, request: Request, ingest: IngestDep
) -> BatchResult | JSONResponse:
    """Record a post-call survey from any IVR: call id, customer, queue and digits per question.

    Questions map to metrics as configured for `survey` (CXLOOP_SOURCES_IVR_SURVEYS).
    """
    call = payload.to_call(request.app.state.hasher)
    surveys = request.app.state.sources.ivr_surveys
    return batch_response(await submit_call(ingest, call, surveys, source="ivr"))
