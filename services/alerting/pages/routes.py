"""The console's routes: each parses its query or form, calls
:mod:`services.alerting.service` (the functions ``/v1`` calls), and renders or redirects.

Pages read with an ``alerts:read`` session; every form posts back here with the session's
CSRF token, needs ``alerts:write`` too, and ends in a 303 to a page that says what changed
(``?done=``), so a reload never sends it twice. A refused form (an empty note) re-renders
its page with the error next to the field (422) and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

from babel.dates import format_datetime, format_timedelta
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError

from services.alerting import service
from services.alerting.config import AlertingConfig
from services.alerting.schemas import (
    NOTE_MAX_LENGTH,
    AckIn,
    AlertList,
    AssignIn,
    CommentIn,
    QueueCounts,
    QueueFilters,
    QueueSort,
    QueueStatus,
    ResolveIn,
    SilenceIn,
)
from services.alerting.value import format_money
from shared.apikeys import Scope
from shared.errors import PermanentError
from shared.events import Metric, NpsCategory, nps_category, utcnow
from shared.http import EngineDep, signed_in
from shared.web.pages import Pages
from shared.web.sessions import Session

PAGE_SIZE = 50
LIVE_INTERVAL_MS = 1000
LIVE_ANSWERS_KEPT = 256  # /console/live answers kept per process, one per queue URL
# The query parameters of the queue, in the order its URLs write them.
FILTERS = ("status", "rule", "channel", "location", "assignee", "unassigned", "sort")
_MAX_PARAM = 200
# Alert fields a silence made from an alert may match, in the order the form lists them;
# the first two are ticked to begin with (this customer's alerts of this rule).
SILENCE_FIELDS = (
    "rule",
    "customer_id",
    "severity",
    "channel",
    "location",
    "touchpoint",
    "metric",
    "product",
    "business_unit",
    "survey_type",
)
SILENCE_DEFAULT = ("rule", "customer_id")
SILENCE_MINUTES = (60, 240, 1440, 10080)
# A body's field that a form names otherwise.
FORM_FIELDS = {"matchers": "field"}
RECENTLY_ENDED = timedelta(days=7)
# What a ?done= may say; anything else is ignored.
DONE = frozenset(
    {
        "acknowledged",
        "assigned",
        "commented",
        "resolved",
        "silenced",
        "expired",
        "already_acknowledged",
        "already_resolved",
        "already_expired",
    }
)

Reader = Annotated[Session, signed_in(Scope.ALERTS_READ)]
Writer = Annotated[Session, signed_in(Scope.ALERTS_READ, Scope.ALERTS_WRITE)]


def _routing(request: Request) -> AlertingConfig:
    config: AlertingConfig = request.app.state.routing
    return config


def _bad(field: str, detail: str) -> HTTPException:
    """A 422 error page naming what in the link could not be used."""
    return HTTPException(422, f"{field}: {detail}")


def _param(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise _bad(name, "given more than once")
    value = values[0].strip() if values else ""
    if len(value) > _MAX_PARAM:
        raise _bad(name, f"longer than {_MAX_PARAM} characters")
    return value or None


def _queue_query(request: Request) -> tuple[QueueFilters, QueueSort, str | None]:
    """The queue's filters, order and cursor from the URL; an unusable one is a 422 page."""
    status = _param(request, "status") or QueueStatus.OPEN.value
    sort = _param(request, "sort") or QueueSort.SEVERITY.value
    try:
        chosen_status, chosen_sort = QueueStatus(status), QueueSort(sort)
    except ValueError:
        raise _bad("status" if status not in set(QueueStatus) else "sort", "unknown") from None
    unassigned = _param(request, "unassigned")
    if unassigned not in (None, "true"):
        raise _bad("unassigned", "only true")
    cursor = _param(request, "cursor")
    try:
        filters = QueueFilters(
            status=chosen_status,
            rule=_param(request, "rule"),
            channel=_param(request, "channel"),
            location=_param(request, "location"),
            assignee=_param(request, "assignee"),
            unassigned=unassigned == "true",
        )
    except ValidationError:
        raise _bad("unassigned", "give either assignee or unassigned, not both") from None
    return filters, chosen_sort, cursor


def _query_of(filters: QueueFilters, sort: QueueSort) -> dict[str, str]:
    """The URL parameters that say ``filters`` and ``sort`` (defaults left out)."""
    params: dict[str, str] = {}
    if filters.status is not QueueStatus.OPEN:
        params["status"] = filters.status.value
    for name in ("rule", "channel", "location", "assignee"):
        value = getattr(filters, name)
        if value is not None:
            params[name] = value
    if filters.unassigned:
        params["unassigned"] = "true"
    if sort is not QueueSort.SEVERITY:
        params["sort"] = sort.value
    return params


class QueueLinks:
    """URLs of the queue with one thing changed, for the facets, tabs and pager."""

    def __init__(self, filters: QueueFilters, sort: QueueSort, cursor: str | None) -> None:
        self.params = _query_of(filters, sort)
        self.cursor = cursor

    def url(self, path: str = "/console", *, keep_cursor: bool = False, **changes: Any) -> str:
        params = dict(self.params)
        if keep_cursor and self.cursor:
            params["cursor"] = self.cursor
        for key, value in changes.items():
            if value is None:
                params.pop(key, None)
            else:
                params[key] = str(value)
        if changes.get("assignee") is not None:
            params.pop("unassigned", None)
        if changes.get("unassigned") is not None:
            params.pop("assignee", None)
        ordered = {k: params[k] for k in (*FILTERS, "cursor") if k in params}
        query = urlencode(ordered)
        return path + ("?" + query if query else "")

    def __call__(self, **changes: Any) -> str:
        """The queue (its first page) with ``changes`` to its filters; None removes one."""
        return self.url(**changes)


def _signature(page: AlertList, counts: QueueCounts) -> str:
    """Changes whenever what the queue shows changes: every field of its rows (an erased
    customer's id and comment among them) and its counts."""
    rows = [a.model_dump(mode="json") for a in page.items]
    text = json.dumps([rows, counts.model_dump(), page.next_cursor], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _status_counts(counts: QueueCounts) -> dict[str, int]:
    """How many alerts each status tab holds under the other filters, from the status facet."""
    by_status = {str(v.value): v.count for v in counts.status.values}
    tabs = {s.value: by_status.get(s.value, 0) for s in QueueStatus}
    tabs[QueueStatus.UNRESOLVED.value] = tabs["open"] + tabs["acknowledged"]
    tabs[QueueStatus.ALL.value] = sum(by_status.values())
    return tabs


def customer_page(dashboard_url: str | None, customer_id: str) -> str | None:
    """The dashboard's page of a customer, ``<base>/dashboard/customers/<id>``, where
    ``<base>`` is the configured dashboard URL without its ``/dashboard``; None without one."""
    if not dashboard_url:
        return None
    parts = urlsplit(dashboard_url)
    path = parts.path.rstrip("/").removesuffix("/dashboard")
    return (
        f"{parts.scheme}://{parts.netloc}{path}/dashboard/customers/{quote(customer_id, safe='')}"
    )


def _first_line(text: str | None) -> str:
    """A comment's first non-blank line, whole (the page clips it, never the server)."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _formats(pages: Pages, request: Request) -> dict[str, Any]:
    """Helpers the templates use for times (the server's text until the browser's Intl
    rewrites it in the viewer's zone), labels and money."""
    lang = pages.language(request)
    now = utcnow()

    def when(moment: datetime) -> str:
        return format_datetime(moment.astimezone(UTC), "yyyy-MM-dd HH:mm 'UTC'", locale=lang)

    def age(moment: datetime) -> str:
        return format_timedelta(moment - now, add_direction=True, locale=lang)

    def label(prefix: str, value: str | None) -> str:
        """The catalogue's name for a rule, channel, action...; the value itself if none."""
        translator = pages.texts.translator(lang)
        key = f"value.{prefix}.{value}"
        return translator.t(key) if value is not None and translator.has(key) else value or ""

    def money(amount: str, currency: str) -> str:
        """A decimal amount of ``currency`` in the viewer's language (¥120,000, ￥120,000),
        with the amount's own (ISO's) decimals."""
        return format_money(Decimal(amount), currency, locale=lang)

    return {
        "when": when,
        "age": age,
        "label": label,
        "first_line": _first_line,
        "money": money,
        "detractor": _detractor,
    }


def _detractor(metric: str | None, score: int | None) -> bool:
    """Whether an answer is an NPS detractor, by the definition the scorer counts with."""
    return (
        metric == Metric.NPS.value
        and score is not None
        and (nps_category(score) is NpsCategory.DETRACTOR)
    )


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _alert_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise _bad("alert", "not an alert id") from None


def _done(request: Request) -> str | None:
    done = request.query_params.get("done")
    return done if done in DONE else None


def _field_error(exc: ValidationError, values: Mapping[str, str]) -> dict[str, str]:
    """The message key of each field a form's body refused: empty, or too long."""
    errors: dict[str, str] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "form"
        # A silence's matchers are the form's ticked fields.
        field = FORM_FIELDS.get(field, field)
        empty = not (values.get(field) or "").strip()
        errors[field] = "form.required" if empty else "console.error.too_long"
    return errors


def router(pages: Pages) -> APIRouter:
    """The console's pages."""
    routes = APIRouter(include_in_schema=False)

    def render(request: Request, template: str, **context: Any) -> HTMLResponse:
        return pages.render(request, template, **_formats(pages, request), **context)

    async def queue_view(request: Request, engine: Any) -> dict[str, Any]:
        filters, sort, cursor = _queue_query(request)
        try:
            page = await service.queue(engine, filters, sort, PAGE_SIZE, cursor)
        except PermanentError as exc:
            raise _bad(exc.field or "cursor", str(exc)) from None
        counts = await service.queue_counts(engine, filters)
        links = QueueLinks(filters, sort, cursor)
        tabs = _status_counts(counts)
        return {
            "filters": filters,
            "sort": sort,
            "cursor": cursor,
            "page": page,
            "counts": counts,
            "status_counts": tabs,
            "total": tabs[filters.status.value],
            "queue_url": links,
            "live_url": links.url("/console/live", keep_cursor=True),
            "fragment_url": links.url("/console/queue", keep_cursor=True),
            "signature": _signature(page, counts),
            "filtered": any(
                getattr(filters, n) is not None for n in ("rule", "channel", "location", "assignee")
            )
            or filters.unassigned,
            "sorts": list(QueueSort),
            "statuses": [
                QueueStatus.OPEN,
                QueueStatus.ACKNOWLEDGED,
                QueueStatus.UNRESOLVED,
                QueueStatus.RESOLVED,
                QueueStatus.ALL,
            ],
        }

    @routes.get("/console", dependencies=[signed_in(Scope.ALERTS_READ)])
    async def console(request: Request, engine: EngineDep) -> HTMLResponse:
        """The on-call queue: open alerts, most severe and then oldest first, filterable."""
        return render(request, "console.html", **await queue_view(request, engine))

    @routes.get("/console/queue", dependencies=[signed_in(Scope.ALERTS_READ)])
    async def queue_fragment(request: Request, engine: EngineDep) -> HTMLResponse:
        """The queue's region alone, for console.js to swap in when /console/live changed."""
        return render(request, "_queue.html", **await queue_view(request, engine))

    # /console/live's answers by URL, each with the alerts version it was computed at.
    live_answers: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()

    @routes.get("/console/live", dependencies=[signed_in(Scope.ALERTS_READ)])
    async def live(request: Request, engine: EngineDep) -> JSONResponse:
        """The queue's first page of ids and its counts, and a signature that changes with
        them: console.js polls it and fetches /console/queue when it changed. One small
        query while alerts stay as they were (their version, bumped at the commit of any
        change); the page and its counts are computed again only when it moved."""
        filters, sort, cursor = _queue_query(request)
        key = QueueLinks(filters, sort, cursor).url("/console/live", keep_cursor=True)
        version = await service.alerts_version(engine)
        known = live_answers.get(key)
        if known is not None and known[0] == version:
            live_answers.move_to_end(key)
            answer = known[1]
        else:
            view = await queue_view(request, engine)
            answer = {
                "signature": view["signature"],
                "ids": [str(a.id) for a in view["page"].items],
                "total": view["total"],
                "counts": view["counts"].model_dump(),
            }
            # Computed after reading the version: never older than the version it is kept for.
            live_answers[key] = (version, answer)
            live_answers.move_to_end(key)
            while len(live_answers) > LIVE_ANSWERS_KEPT:
                live_answers.popitem(last=False)
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    async def alert_page(
        request: Request,
        engine: Any,
        session: Session,
        alert_id: uuid.UUID,
        *,
        status: int = 200,
        errors: Mapping[str, str] | None = None,
        values: Mapping[str, str] | None = None,
        problem: str | None = None,
    ) -> HTMLResponse:
        routing = _routing(request)
        try:
            view = await service.alert_view(engine, alert_id, routing)
        except service.NotFound:
            raise HTTPException(404, "no such alert") from None
        alert = view.alert
        dashboard = pages.links.get("dashboard")
        return render(
            request,
            "alert.html",
            status=status,
            alert=alert,
            links_out=service.alert_links(routing, alert),
            touches=view.touches.items,
            other_alerts=view.others,
            history=view.history.items,
            notifications=view.notifications.items,
            customer_url=customer_page(dashboard, alert.customer_id),
            can_write=session.principal.may(Scope.ALERTS_WRITE),
            done=_done(request),
            errors=errors or {},
            values=values or {},
            problem=problem,
            silence_fields=[
                (name, getattr(alert, name))
                for name in SILENCE_FIELDS
                if getattr(alert, name) is not None
            ],
            silence_default=SILENCE_DEFAULT,
            silence_minutes=SILENCE_MINUTES,
            note_limit=NOTE_MAX_LENGTH,
        )

    @routes.get("/console/alerts/{alert_id}")
    async def alert(
        request: Request, engine: EngineDep, session: Reader, alert_id: str
    ) -> HTMLResponse:
        """One alert: what happened, the customer's recent answers and tickets, its
        history and notifications, and what on-call can do about it."""
        return await alert_page(request, engine, session, _alert_id(alert_id))

    async def act(
        request: Request,
        engine: Any,
        session: Session,
        alert_id: uuid.UUID,
        done: str,
        values: Mapping[str, str],
        work: Any,
    ) -> Response:
        """Run one action; 303 back to the alert, or its page again with what went wrong.
        ``work`` may return another ``done`` (the action had been done already)."""
        try:
            done = await work() or done
        except ValidationError as exc:
            errors = _field_error(exc, values)
            return await alert_page(
                request, engine, session, alert_id, status=422, errors=errors, values=values
            )
        except service.NotFound:
            raise HTTPException(404, "no such alert") from None
        except service.Conflict:
            return await alert_page(
                request, engine, session, alert_id, status=409, problem="console.conflict"
            )
        return _see_other(f"/console/alerts/{alert_id}?done={done}")

    @routes.post("/console/alerts/{alert_id}/ack")
    async def acknowledge(
        request: Request, engine: EngineDep, session: Writer, alert_id: str
    ) -> Response:
        """Take the alert: it stops escalating."""
        found = _alert_id(alert_id)
        actor = service.Actor.of(session.principal)

        async def work() -> str | None:
            taken = await service.acknowledge(engine, _routing(request), found, actor, AckIn())
            return None if taken.changed else "already_acknowledged"

        return await act(request, engine, session, found, "acknowledged", {}, work)

    @routes.post("/console/alerts/{alert_id}/assign")
    async def assign(
        request: Request,
        engine: EngineDep,
        session: Writer,
        alert_id: str,
        to: Annotated[str, Form()] = "",
        to_me: Annotated[str, Form()] = "",
    ) -> Response:
        """Give the alert to someone, or (``to_me``) to the signed-in key's name."""
        found = _alert_id(alert_id)
        actor = service.Actor.of(session.principal)
        person = actor.name if to_me else to

        async def work() -> None:
            await service.assign(engine, found, actor, AssignIn(to=person))

        return await act(request, engine, session, found, "assigned", {"to": person}, work)

    @routes.post("/console/alerts/{alert_id}/comment")
    async def comment(
        request: Request,
        engine: EngineDep,
        session: Writer,
        alert_id: str,
        text: Annotated[str, Form()] = "",
    ) -> Response:
        """Add a comment to the alert's history."""
        found = _alert_id(alert_id)
        actor = service.Actor.of(session.principal)

        async def work() -> None:
            await service.comment(engine, found, actor, CommentIn(text=_blank_is_empty(text)))

        return await act(request, engine, session, found, "commented", {"text": text}, work)

    @routes.post("/console/alerts/{alert_id}/resolve")
    async def resolve(
        request: Request,
        engine: EngineDep,
        session: Writer,
        alert_id: str,
        note: Annotated[str, Form()] = "",
    ) -> Response:
        """Close the loop with the follow-up note (required). Resolving a resolved alert
        (someone else was quicker) changes nothing and says who resolved it; the note is
        then added as a comment, so it is not lost."""
        found = _alert_id(alert_id)
        actor = service.Actor.of(session.principal)

        async def work() -> str | None:
            body = ResolveIn(note=_blank_is_empty(note))
            closed = await service.resolve(engine, _routing(request), found, actor, body)
            return None if closed.changed else "already_resolved"

        return await act(request, engine, session, found, "resolved", {"note": note}, work)

    @routes.post("/console/alerts/{alert_id}/silence")
    async def silence(
        request: Request,
        engine: EngineDep,
        session: Writer,
        alert_id: str,
        comment: Annotated[str, Form()] = "",
        minutes: Annotated[str, Form()] = "",
    ) -> Response:
        """Silence alerts whose chosen fields equal this alert's, for a while."""
        found = _alert_id(alert_id)
        form = await request.form()
        chosen = [str(f) for f in form.getlist("field") if f in SILENCE_FIELDS]
        values = {"comment": comment, "minutes": minutes, "fields": ",".join(chosen)}
        try:
            alert = await service.get_alert(engine, found)
        except service.NotFound:
            raise HTTPException(404, "no such alert") from None
        errors: dict[str, str] = {}
        matchers = {f: str(getattr(alert, f)) for f in chosen if getattr(alert, f) is not None}
        if not matchers:
            errors["field"] = "console.silence.pick_one"
        if minutes not in {str(m) for m in SILENCE_MINUTES}:
            errors["minutes"] = "form.required"
        if not comment.strip():
            errors["comment"] = "form.required"
        if errors:
            return await alert_page(
                request, engine, session, found, status=422, errors=errors, values=values
            )
        try:
            body = SilenceIn(matchers=matchers, duration_minutes=int(minutes), comment=comment)
        except ValidationError as exc:
            return await alert_page(
                request,
                engine,
                session,
                found,
                status=422,
                errors=_field_error(exc, values),
                values=values,
            )
        await service.create_silence(engine, service.Actor.of(session.principal), body)
        return _see_other("/console/silences?done=silenced")

    @routes.get("/console/silences")
    async def silences(request: Request, engine: EngineDep, session: Reader) -> HTMLResponse:
        """Silences in force, and those that ended in the last week."""
        since = utcnow() - RECENTLY_ENDED
        listed = await service.list_silences(engine, active=False, ended_since=since)
        return render(
            request,
            "silences.html",
            active=[s for s in listed.items if s.active],
            ended=[s for s in listed.items if not s.active],
            more=listed.more,
            listed_most=service.SILENCE_LIMIT,
            can_write=session.principal.may(Scope.ALERTS_WRITE),
            done=_done(request),
        )

    @routes.post("/console/silences/{silence_id}/expire")
    async def expire(
        request: Request, engine: EngineDep, session: Writer, silence_id: str
    ) -> Response:
        """End a silence now."""
        try:
            found = uuid.UUID(silence_id)
        except ValueError:
            raise _bad("silence", "not a silence id") from None
        try:
            ended = await service.expire_silence(engine, found, service.Actor.of(session.principal))
        except service.SilenceNotFound:
            raise HTTPException(404, "no such silence") from None
        return _see_other(
            f"/console/silences?done={'expired' if ended.changed else 'already_expired'}"
        )

    return routes


def _blank_is_empty(text: str) -> str:
    """A note of only spaces is no note: the service's minimum length then refuses it."""
    return text if text.strip() else ""
