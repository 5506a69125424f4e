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
import hmac
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import apikeys
from shared.apikeys import Scope
from shared.db import is_transient
from shared.http.auth import public, signed_in
from shared.http.middleware import JSON_ONLY, BodyPolicy
from shared.web import i18n
from shared.web.security import SecurityHeadersMiddleware
from shared.web.sessions import SESSION_SCOPE, Session, SessionStore, is_https

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent
STATIC_DIR = WEB_DIR / "static"
FORM = frozenset({"application/x-www-form-urlencoded"})
# A page's form is a few fields; nothing a person types comes near this.
FORM_LIMIT = 16 * 1024
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
            return request.url.path + ("?" + query if query else "")

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
        response = HTMLResponse(body, status_code=status, headers=dict(headers or {}))
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
                return FORM_LIMIT, FORM
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


def _presession(request: Request) -> str | None:
    return request.cookies.get("cxloop-signin")


def sign_in_router(pages: Pages) -> APIRouter:
    """``/signin`` (form and one-time link) and ``/signout`` for ``pages``."""
    router = APIRouter(include_in_schema=False)
    open_form = public("the sign-in form: a key is what it asks for")

    @router.get("/signin", dependencies=[open_form], response_class=HTMLResponse)
    async def sign_in_form(
        request: Request, next: Annotated[str | None, Query(max_length=_MAX_NEXT)] = None
    ) -> Response:
        """The sign-in form: paste an API key with the scopes this page needs."""
        return _form(pages, request, next, status=200)

    @router.post("/signin", dependencies=[open_form])
    async def sign_in(
        request: Request,
        api_key: Annotated[str, Form(max_length=512)] = "",
        csrf_token: Annotated[str, Form(max_length=128)] = "",
        next: Annotated[str, Form(max_length=_MAX_NEXT)] = "",
    ) -> Response:
        """Exchange an API key for a session cookie."""
        expected = _presession(request)
        if not expected or not _equal(expected, csrf_token):
            return _form(pages, request, next, status=403, problem="signin.csrf")
        principal = await pages.sessions.keystore.authenticate(api_key.strip())
        if principal is None:
            return _form(pages, request, next, status=401, problem="signin.invalid_key")
        if principal.kind is apikeys.KeyKind.PUBLISHABLE or not all(
            principal.may(s) for s in pages.scopes
        ):
            return _form(pages, request, next, status=403, problem="signin.missing_scope")
        token, _ = await pages.sessions.open(apikeys.hash_key(api_key.strip()))
        response = RedirectResponse(safe_next(next, pages.home), status_code=303)
        pages.set_session_cookie(request, response, token)
        response.delete_cookie("cxloop-signin", path="/signin")
        return response

    @router.get("/signin/link", dependencies=[public("a one-time sign-in link is its own key")])
    async def sign_in_link(
        request: Request, token: Annotated[str, Query(max_length=128)] = ""
    ) -> Response:
        """Use a one-time link printed by ``cxloop up``: it signs in once, then expires."""
        key_hash = await pages.sessions.redeem_link(token)
        if key_hash is None:
            return _form(pages, request, None, status=400, problem="signin.link_used")
        principal = await pages.sessions.keystore.authenticate_digest(key_hash)
        if principal is None:
            return _form(pages, request, None, status=401, problem="signin.invalid_key")
        session_token, _ = await pages.sessions.open(key_hash)
        response = RedirectResponse(pages.home, status_code=303)
        pages.set_session_cookie(request, response, session_token)
        return response

    @router.post("/signout", dependencies=[signed_in()])
    async def sign_out(request: Request) -> Response:
        """End this browser's session."""
        session = request.scope[SESSION_SCOPE]
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


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("latin-1", "replace"), b.encode("latin-1", "replace"))


def _form(
    pages: Pages, request: Request, next: str | None, *, status: int, problem: str | None = None
) -> Response:
    token = _presession(request) or secrets.token_urlsafe(32)
    response = pages.render(
        request,
        "signin.html",
        status=status,
        next=safe_next(next, pages.home),
        problem=problem,
        signin_token=token,
        scopes=[s.value for s in pages.scopes],
    )
    response.set_cookie(
        "cxloop-signin",
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=is_https(request.scope),
        path="/signin",
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

    async def any_error(request: Request, exc: Exception) -> Response:
        if not on_page(request):
            return await _call(json_any, request, exc)
        if is_transient(exc):
            return pages.error(request, 503, "error.database")
        log.error("unhandled error on a page of %s", pages.service, exc_info=exc)
        return pages.error(request, 500, "error.internal")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, any_error)
    app.add_middleware(SecurityHeadersMiddleware)


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
