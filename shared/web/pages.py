"""Server-rendered pages: Jinja2 templates, languages, sign-in, static files, error pages.

A service with pages builds one :class:`Pages` and calls :func:`install` on its app. Its
page routes declare :func:`shared.http.signed_in` (the auth gate resolves the session before
the body is read) and render with :meth:`Pages.render`, calling the same service functions
as the JSON API. Every template extends ``base.html`` (``shared/web/templates``), which
draws the header, the language switch, the sign-out form and the scripts; all text comes
from the message catalogues (``t("key")``).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import apikeys
from shared.apikeys import Scope
from shared.db import DATABASE_ERRORS, database_unavailable
from shared.http.auth import CSRF_REFUSED, public
from shared.http.errors import database_error as json_database
from shared.http.middleware import JSON_ONLY, BodyPolicy
from shared.web import i18n
from shared.web.security import HTML_HEADERS, SecurityHeadersMiddleware
from shared.web.sessions import (
    SESSION_SCOPE,
    Session,
    SessionStore,
    check_csrf,
    is_https,
    same_origin,
)

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent
STATIC_DIR = WEB_DIR / "static"
FORM = frozenset({"application/x-www-form-urlencoded"})
# A page's form is a few fields; a service whose forms take long notes gives its own limit.
FORM_LIMIT = 16 * 1024
# The body limit's refusals, which it answers as JSON before the app runs.
_REFUSED_BODIES = {413: "the form is too large to send; nothing was saved", 415: "not a form"}
LANG_COOKIE = "cxloop-lang"
_MAX_NEXT = 2048


@dataclass
class Pages:
    """One service's pages: where its templates and messages are, and its sign-in."""

    service: str
    home: str  # where a signed-in browser lands, e.g. "/dashboard"
    scopes: tuple[Scope, ...]  # what a key needs to sign in here
    sessions: SessionStore
    templates: Path
    messages: Path
    static: Path | None = None
    links: Mapping[str, str | None] = field(default_factory=dict)  # nav: key -> URL
    prefixes: tuple[str, ...] = ()  # the paths its pages live under
    form_limit: int = FORM_LIMIT  # the largest urlencoded form its pages take, in bytes
    env: jinja2.Environment = field(init=False)

    def __post_init__(self) -> None:
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(
                [
                    jinja2.FileSystemLoader(self.templates),
                    jinja2.FileSystemLoader(WEB_DIR / "templates"),
                ]
            ),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.texts = i18n.load_messages(self.messages)

    def language(self, request: Request) -> i18n.Lang:
        """The page's language: ``?lang=``, then the language cookie, then Accept-Language."""
        chosen = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE)
        return i18n.negotiate(request.headers.get("accept-language"), chosen)

    def static_url(self, path: str) -> str:
        """The URL of a static file, with its content hash so a new version is fetched."""
        if path.startswith("page/"):
            assert self.static is not None
            file, base = self.static / path.removeprefix("page/"), f"/static/{self.service}/"
            return base + path.removeprefix("page/") + "?v=" + _hash_of(file)
        return "/static/web/" + path + "?v=" + _hash_of(STATIC_DIR / path)

    def render(
        self,
        request: Request,
        template: str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> HTMLResponse:
        """Render ``template`` in the viewer's language for the request's session."""
        lang = self.language(request)
        session = request.scope.get(SESSION_SCOPE)
        translator = self.texts.translator(lang)

        def here(**changes: Any) -> str:
            """This page's URL with query parameters changed (None removes one)."""
            params = dict(request.query_params)
            for key, value in changes.items():
                if value is None:
                    params.pop(key, None)
                else:
                    params[key] = str(value)
            query = urlencode(params)
            return quote(request.url.path) + ("?" + query if query else "")

        body = self.env.get_template(template).render(
            request=request,
            lang=lang,
            languages=i18n.LANGUAGES,
            t=translator.t,
            fmt=translator,
            session=session if isinstance(session, Session) else None,
            actor=session.principal.name if isinstance(session, Session) else None,
            csrf_token=session.csrf_token if isinstance(session, Session) else "",
            service=self.service,
            home=self.home,
            links=self.links,
            static=self.static_url,
            here=here,
            **context,
        )
        response = HTMLResponse(
            body, status_code=status, headers={**HTML_HEADERS, **(headers or {})}
        )
        picked = request.query_params.get("lang")
        if picked in i18n.LANGUAGES:
            response.set_cookie(
                LANG_COOKIE,
                picked,
                max_age=365 * 86400,
                httponly=True,
                samesite="strict",
                secure=is_https(request.scope),
            )
        return response

    def error(self, request: Request, status: int, message_key: str, detail: str = "") -> Response:
        """An error page: what went wrong and what to do, in the viewer's language."""
        return self.render(
            request, "error.html", status=status, message_key=message_key, detail=detail
        )

    def set_session_cookie(self, request: Request, response: Response, token: str) -> None:
        secure = is_https(request.scope)
        response.set_cookie(
            self.sessions.cookie_name(secure),
            token,
            max_age=int(self.sessions.lifetime.total_seconds()),
            httponly=True,
            samesite="strict",
            secure=secure,
            path="/",
        )

    def body_policy(self, json_limit: int) -> BodyPolicy:
        """Forms (small, urlencoded) on the pages' paths; JSON elsewhere."""
        prefixes = (*self.prefixes, "/signin", "/signout")

        def policy(path: str) -> tuple[int, frozenset[str]]:
            if path.startswith(prefixes):
                return self.form_limit, FORM
            return json_limit, JSON_ONLY

        return policy


@cache
def _hash_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def safe_next(value: str | None, default: str) -> str:
    """Where to go after signing in: a path on this host only (never ``//host`` or a URL)."""
    if (
        not value
        or len(value) > _MAX_NEXT
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x20 for c in value)
    ):
        return default
    return value


def _presession_cookie(pages: Pages, request: Request) -> tuple[str, str]:
    """The sign-in form's double-submit cookie: its name and path.

    Over https it is ``__Host-`` prefixed (Secure, whole host, no Domain), so a sibling
    subdomain or another port cannot plant one; over http it is per service.
    """
    if is_https(request.scope):
        return f"__Host-cxloop-{pages.service}-signin", "/"
    return f"cxloop-{pages.service}-signin", "/signin"


def _presession(pages: Pages, request: Request) -> str | None:
    name, _ = _presession_cookie(pages, request)
    return request.cookies.get(name)


def _form_field(form: Any, name: str, limit: int) -> str:
    value = form.get(name)
    return value if isinstance(value, str) and len(value) <= limit else ""


def sign_in_router(pages: Pages) -> APIRouter:
    """``/signin`` (form and one-time link) and ``/signout`` for ``pages``."""
    router = APIRouter(include_in_schema=False)
    open_form = public("the sign-in form: a key is what it asks for")

    @router.get("/signin", dependencies=[open_form], response_class=HTMLResponse)
    async def sign_in_form(request: Request, next: str | None = None) -> Response:
        """The sign-in form: paste an API key with the scopes this page needs."""
        return _form(pages, request, next, status=200)

    @router.post("/signin", dependencies=[open_form])
    async def sign_in(request: Request) -> Response:
        """Exchange an API key for a session cookie."""
        form = await request.form()
        api_key = _form_field(form, "api_key", 512).strip()
        next = _form_field(form, "next", _MAX_NEXT)
        expected = _presession(pages, request)
        # A sign-in from another site (login CSRF) is refused twice over: by the browser's
        # own Sec-Fetch-Site/Origin, and by the double-submit token it cannot read.
        if (
            not same_origin(request.scope)
            or not expected
            or not check_csrf(expected, _form_field(form, "csrf_token", 128))
        ):
            return _form(pages, request, next, status=403, problem="signin.csrf")
        principal = await pages.sessions.keystore.authenticate(api_key) if api_key else None
        if principal is None:
            return _form(pages, request, next, status=401, problem="signin.invalid_key")
        if not _admitted(pages, principal):
            return _form(pages, request, next, status=403, problem="signin.missing_scope")
        token, _ = await pages.sessions.open(apikeys.hash_key(api_key))
        response = RedirectResponse(safe_next(next, pages.home), status_code=303)
        pages.set_session_cookie(request, response, token)
        name, path = _presession_cookie(pages, request)
        response.delete_cookie(name, path=path, secure=is_https(request.scope))
        return response

    @router.api_route(
        "/signin/link",
        methods=["GET", "HEAD"],
        dependencies=[public("a one-time sign-in link is its own key")],
    )
    async def sign_in_link(request: Request, token: str = "") -> Response:
        """Use a one-time link printed by ``cxloop up``: it signs in once, then expires."""
        if request.method == "HEAD" or _prefetch(request):
            # A link preview or a prefetch must not use the link up (nor get the session).
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        key_hash = await pages.sessions.redeem_link(token)
        if key_hash is None:
            return _form(pages, request, None, status=400, problem="signin.link_used")
        principal = await pages.sessions.keystore.authenticate_digest(key_hash)
        if principal is None:
            return _form(pages, request, None, status=401, problem="signin.invalid_key")
        if not _admitted(pages, principal):
            return _form(pages, request, None, status=403, problem="signin.missing_scope")
        session_token, _ = await pages.sessions.open(key_hash)
        response = RedirectResponse(pages.home, status_code=303)
        pages.set_session_cookie(request, response, session_token)
        return response

    @router.post(
        "/signout",
        dependencies=[public("signing out needs no session: it ends the one there is, if any")],
    )
    async def sign_out(request: Request) -> Response:
        """End this browser's session (and forget its cookie even when it had expired)."""
        form = await request.form()
        session = await pages.sessions.resolve(request.scope)
        if session is not None:
            presented = _form_field(form, "csrf_token", 128)
            if not same_origin(request.scope) or not check_csrf(session.csrf_token, presented):
                # Being signed out by another site is a nuisance worth refusing.
                return pages.error(request, 403, "error.forbidden", CSRF_REFUSED)
            await pages.sessions.end(session)
        response = RedirectResponse("/signin", status_code=303)
        secure = is_https(request.scope)
        response.delete_cookie(
            pages.sessions.cookie_name(secure),
            path="/",
            secure=secure,
            httponly=True,
            samesite="strict",
        )
        return response

    return router


def _admitted(pages: Pages, principal: apikeys.Principal) -> bool:
    """A key may open these pages: a secret or operator key with every scope they need."""
    return principal.kind is not apikeys.KeyKind.PUBLISHABLE and all(
        principal.may(s) for s in pages.scopes
    )


def _prefetch(request: Request) -> bool:
    purpose = (request.headers.get("sec-purpose") or request.headers.get("purpose") or "").lower()
    return "prefetch" in purpose or "prerender" in purpose


def _form(
    pages: Pages, request: Request, next: str | None, *, status: int, problem: str | None = None
) -> Response:
    token = _presession(pages, request)
    if not token or len(token) > 128:
        token = secrets.token_urlsafe(32)
    response = pages.render(
        request,
        "signin.html",
        status=status,
        next=safe_next(next, pages.home),
        problem=problem,
        signin_token=token,
        scopes=[s.value for s in pages.scopes],
    )
    name, path = _presession_cookie(pages, request)
    response.set_cookie(
        name,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=is_https(request.scope),
        path=path,
    )
    return response


def install(app: FastAPI, pages: Pages) -> None:
    """Give ``app`` its pages' sessions, static files, HTML error pages and headers.

    The app must have been built (:func:`shared.http.build_app`) with the page routers and
    :func:`sign_in_router` among its routers, so the auth gate guards them.
    """
    app.state.sessions = pages.sessions
    app.state.pages = pages
    app.mount("/static/web", StaticFiles(directory=STATIC_DIR), name="web-static")
    if pages.static is not None:
        app.mount(
            f"/static/{pages.service}",
            StaticFiles(directory=pages.static),
            name=f"{pages.service}-static",
        )
    json_http = app.exception_handlers[StarletteHTTPException]
    json_any = app.exception_handlers[Exception]

    def on_page(request: Request) -> bool:
        return request.url.path.startswith((*pages.prefixes, "/signin", "/signout"))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if not on_page(request):
            return await _call(json_http, request, exc)
        key = {403: "error.forbidden", 404: "error.not_found"}.get(exc.status_code, "error.bad")
        return pages.error(request, exc.status_code, key, str(exc.detail))

    async def database_error(request: Request, exc: Exception) -> Response:
        # Registered for the database's own errors, so it runs inside the app (with the
        # headers) and the error is not re-raised to the server as an unhandled one.
        if not on_page(request):
            return await json_database(request, exc)
        if database_unavailable(exc):
            log.warning("a page of %s found the database unavailable", pages.service)
            return pages.error(request, 503, "error.database")
        return await any_error(request, exc)

    async def any_error(request: Request, exc: Exception) -> Response:
        if not on_page(request):
            return await _call(json_any, request, exc)
        log.error("unhandled error on a page of %s", pages.service, exc_info=exc)
        return pages.error(request, 500, "error.internal")

    app.add_exception_handler(StarletteHTTPException, http_error)
    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, database_error)
    app.add_exception_handler(Exception, any_error)
    app.add_middleware(_PageBodyRefusals, pages=pages, on_page=on_page)
    app.add_middleware(SecurityHeadersMiddleware)


class _PageBodyRefusals:
    """On a page path, the body limit's 413 or 415 (JSON, sent before the app ran) becomes
    the error page, so a browser that posted too long a note is told so in its language."""

    def __init__(self, app: Any, *, pages: Pages, on_page: Callable[[Request], bool]) -> None:
        self.app = app
        self.pages = pages
        self.on_page = on_page

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.on_page(Request(scope)):
            await self.app(scope, receive, send)
            return
        refused: int | None = None

        async def page_send(message: Any) -> None:
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] in _REFUSED_BODIES:
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(b"application/json"):
                    refused = message["status"]
                    return
            if refused is None:
                await send(message)
            elif not message.get("more_body", False):
                page = self.pages.error(
                    Request(scope), refused, "error.bad", _REFUSED_BODIES[refused]
                )
                await page(scope, receive, send)

        await self.app(scope, receive, page_send)


async def _call(handler: Callable[..., Any], request: Request, exc: Exception) -> Response:
    response: Response = await handler(request, exc)
    return response


__all__: Sequence[str] = (
    "FORM",
    "Pages",
    "install",
    "safe_next",
    "sign_in_router",
)
