"""Bearer authentication: a route declares the scope it needs with :func:`require`.

The same declaration is enforced twice, from one :class:`Requirement`: by
:class:`AuthGateMiddleware` before the body is read (so an anonymous caller gets 401 and
never a 422 that describes the schema, and costs no body read), and by the route's
dependency, which also hands the route its :class:`~shared.apikeys.Principal`. The gate
reads each route's requirements from its dependencies, so the two cannot disagree.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.routing import Match

from shared.apikeys import KeyStore, Principal, Scope
from shared.db import DATABASE_ERRORS, database_unavailable, is_transient
from shared.http.errors import (
    DATABASE_RETRY_AFTER,
    DATABASE_UNAVAILABLE,
    send_error,
)
from shared.signatures import single_header
from shared.web.security import HTML_HEADERS
from shared.web.sessions import SESSION_SCOPE, Session, check_csrf, same_origin

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")

# Where the gate leaves the authenticated principal in the ASGI scope for the dependency.
_PRINCIPAL = "cxloop.principal"
_MISSING = "missing credentials: send Authorization: Bearer <key>"
_INVALID = "invalid API key"


@dataclass(frozen=True)
class Requirement:
    """A route's need: a key allowed ``scope`` (through the adapter ``source``)."""

    scope: Scope
    source: str | None = None

    def refusal(self, principal: Principal) -> str | None:
        """Return why ``principal`` is refused (the 403 detail), or None if it is admitted."""
        if principal.may(self.scope, self.source):
            return None
        through = f" through {self.source}" if self.source else ""
        return f"this key may not use {self.scope.value}{through}"


class AuthError(Exception):
    """A request refused by authentication: 401 (who are you) or 403 (not allowed)."""

    def __init__(self, status: int, detail: str, challenge: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = {"WWW-Authenticate": challenge} if challenge else None


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(store: KeyStore, authorization: str | None) -> Principal:
    """Return the principal of an ``Authorization`` header value, or raise :class:`AuthError`."""
    token = _bearer_token(authorization)
    if token is None:
        raise AuthError(401, _MISSING, "Bearer")
    principal = await store.authenticate(token)
    if principal is None:
        raise AuthError(401, _INVALID, 'Bearer error="invalid_token"')
    return principal


def admitted_principal(scope: Any, requirement: Requirement) -> Principal | None:
    """Return the principal :class:`AuthGateMiddleware` admitted for this request if it meets
    ``requirement``, else None: for an ASGI handler that answers a :func:`require`-d route
    without FastAPI. The requirement is checked here again, since the gate also leaves a
    principal where it checked another route's needs (a partial match, a signed-in page)."""
    admitted = scope.get(_PRINCIPAL)
    if not isinstance(admitted, Principal) or requirement.refusal(admitted) is not None:
        return None
    return admitted


def _as_http(error: AuthError) -> HTTPException:
    return HTTPException(error.status, error.detail, headers=error.headers)


def get_principal(source: str | None = None) -> Any:
    """Return a dependency that authenticates the bearer key and yields its Principal."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        admitted = request.scope.get(_PRINCIPAL)
        if isinstance(admitted, Principal):
            return admitted
        store: KeyStore = request.app.state.keystore
        try:
            principal = await authenticate(store, request.headers.get("authorization"))
        except AuthError as exc:
            raise _as_http(exc) from None
        request.scope[_PRINCIPAL] = principal
        return principal

    return dependency


def require(scope: Scope, source: str | None = None) -> Any:
    """Return a dependency that admits only keys allowed ``scope`` (through ``source``).

    :class:`AuthGateMiddleware` finds it among a route's dependencies and applies the same
    :class:`Requirement` before the body is read.
    """
    requirement = Requirement(scope, source)

    # A default rather than Annotated: the dependency is built here, so a string annotation
    # (from __future__ import annotations) could not name it.
    async def dependency(principal: Principal = Depends(get_principal(source))) -> Principal:  # noqa: B008
        refusal = requirement.refusal(principal)
        if refusal is not None:
            raise HTTPException(403, refusal)
        return principal

    dependency.requirement = requirement  # type: ignore[attr-defined]
    return Depends(dependency)


@dataclass(frozen=True)
class SignedBy:
    """A route authenticated by a vendor's signature, carried in ``headers``."""

    headers: tuple[str, ...]
    status: int = 403

    def refusal(self, raw_headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """Return why the request is refused unread (the ``status`` detail), or None."""
        for name in self.headers:
            if single_header(raw_headers, name) is None:
                return f"{name} is missing, repeated or malformed"
        return None


def signed_by(*headers: str, status: int = 403) -> Any:
    """Return a dependency for a route signed by its caller (Twilio, Zendesk) in ``headers``.

    :class:`AuthGateMiddleware` refuses (``status``: 403, or what the vendor documents, 400
    for Stripe) a request whose signature header is absent, repeated, empty, not ASCII or
    oversized before its body is read; the route itself then verifies the signature, which
    needs the body.
    """
    signed = SignedBy(headers, status)

    async def dependency(request: Request) -> None:
        refusal = signed.refusal(request.scope["headers"])
        if refusal is not None:
            raise HTTPException(signed.status, refusal)

    dependency.signed_by = signed  # type: ignore[attr-defined]
    return Depends(dependency)


@dataclass(frozen=True)
class Public:
    """A route that needs no bearer key or signature, and why (for a reader of the code)."""

    reason: str


def public(reason: str) -> Any:
    """Return a dependency that marks a route as open on purpose: ``reason`` says why.

    Every route a service mounts declares :func:`require`, :func:`signed_by` or this;
    :func:`check_declared` refuses to build an app with a route that declares none.
    """
    marker = Public(reason)

    async def dependency() -> None:
        return None

    dependency.public = marker  # type: ignore[attr-defined]
    return Depends(dependency)


@dataclass(frozen=True)
class SignedIn:
    """A page route: it needs a browser session (:mod:`shared.web.sessions`) whose key may
    use every scope in ``scopes``; a state-changing request also needs the form's CSRF
    token."""

    scopes: tuple[Scope, ...]

    def refusal(self, principal: Principal) -> str | None:
        """Return why ``principal`` is refused (the 403 detail), or None if it is admitted."""
        for scope in self.scopes:
            if not principal.may(scope):
                return f"this key may not use {scope.value}"
        return None


_SAFE_METHODS = frozenset({"GET", "HEAD"})
_MAX_NEXT = 2048
# Before a session is known there is no language either: both, plainly.
_DATABASE_DOWN = (
    '<!doctype html><html lang="en"><meta charset="utf-8"><title>cxloop</title>'
    "<p>The database is unavailable; this page will work again when it is back. "
    'Reload in a minute.</p><p lang="ja">データベースに接続できません。復旧すると再び表示されます。'
    "1分ほどしてから再読み込みしてください。</p></html>"
)
CSRF_REFUSED = "the form's CSRF token is missing or wrong: reload the page and send it again"


def signed_in(*scopes: Scope) -> Any:
    """Return a dependency for a page that needs a signed-in browser allowed ``scopes``.

    :class:`AuthGateMiddleware` resolves the session before the body is read: without one
    it redirects (303) to ``/signin?next=…``; with a key lacking a scope it answers 403; a
    POST from another site (``Sec-Fetch-Site``/``Origin``) gets 403. This dependency then
    checks a POST's ``csrf_token`` form field and hands the route the
    :class:`~shared.web.sessions.Session` (whose ``principal`` is the actor).
    """
    marker = SignedIn(tuple(scopes))

    async def dependency(request: Request) -> Session:
        session = request.scope.get(SESSION_SCOPE)
        if not isinstance(session, Session):
            raise HTTPException(401, "sign in first")
        if request.method not in _SAFE_METHODS:
            form = await request.form()
            token = form.get("csrf_token")
            if not check_csrf(session.csrf_token, token if isinstance(token, str) else None):
                raise HTTPException(403, CSRF_REFUSED)
        return session

    dependency.signed_in = marker  # type: ignore[attr-defined]
    return Depends(dependency)


def signed_in_of(route: APIRoute) -> tuple[SignedIn, ...]:
    """Return every :class:`SignedIn` marker a route declares through :func:`signed_in`."""
    found = (getattr(call, "signed_in", None) for call in _walk(route.dependant))
    return tuple(dict.fromkeys(p for p in found if isinstance(p, SignedIn)))


def _walk(dependant: Dependant) -> Iterator[Any]:
    yield dependant.call
    for sub in dependant.dependencies:
        yield from _walk(sub)


def requirements_of(route: APIRoute) -> tuple[Requirement, ...]:
    """Return every :class:`Requirement` a route declares through :func:`require`."""
    found = (getattr(call, "requirement", None) for call in _walk(route.dependant))
    return tuple(dict.fromkeys(r for r in found if isinstance(r, Requirement)))


def signatures_of(route: APIRoute) -> tuple[SignedBy, ...]:
    """Return every :class:`SignedBy` a route declares through :func:`signed_by`."""
    found = (getattr(call, "signed_by", None) for call in _walk(route.dependant))
    return tuple(dict.fromkeys(s for s in found if isinstance(s, SignedBy)))


def publics_of(route: APIRoute) -> tuple[Public, ...]:
    """Return every :class:`Public` marker a route declares through :func:`public`."""
    found = (getattr(call, "public", None) for call in _walk(route.dependant))
    return tuple(dict.fromkeys(p for p in found if isinstance(p, Public)))


def check_declared(routers: Sequence[APIRouter]) -> None:
    """Raise TypeError for a route that is not an APIRoute, or that declares neither
    :func:`require`, :func:`signed_by` nor :func:`public`: a route the auth gate would not
    know how to guard is refused when the app is built, not let through at run time."""
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                raise TypeError(f"{route!r}: the auth gate knows only APIRoutes")
            declared = (
                requirements_of(route)
                or signatures_of(route)
                or publics_of(route)
                or signed_in_of(route)
            )
            if not declared:
                methods = ",".join(sorted(route.methods or ()))
                raise TypeError(
                    f"{methods} {route.path}: declare require(), signed_by(), signed_in() "
                    "or public()"
                )


@dataclass(frozen=True)
class _Gate:
    route: APIRoute
    needs: tuple[Requirement, ...]
    signed: tuple[SignedBy, ...]
    keyed: bool  # a bearer key is needed (with no scope, when only the path matched)
    pages: tuple[SignedIn, ...] = ()


class AuthGateMiddleware:
    """Refuse an unauthenticated request before its body is read, as its route declares.

    A route that :func:`require`-s a scope: 401 without a valid bearer key, 403 for a key
    without the scope. A route :func:`signed_by` a vendor: 403 for an unusable signature
    header (the route checks the signature itself, as it needs the body). A route marked
    :func:`public` (the widget, whose publishable key travels in the query, and the
    operations endpoints) passes through; a route that declares none of the three is
    refused when the app is built (:func:`check_declared`).
    """

    def __init__(self, app: Any, *, routers: Sequence[APIRouter]) -> None:
        self.app = app
        self._table: list[_Gate] = []
        self._static: dict[tuple[str, str, str], tuple[APIRoute, _Gate | None]] = {}
        check_declared(routers)
        for router in routers:
            for route in router.routes:
                assert isinstance(route, APIRoute)
                needs = requirements_of(route)
                self._table.append(
                    _Gate(route, needs, signatures_of(route), bool(needs), signed_in_of(route))
                )

    def _gate(self, scope: Any) -> _Gate | None:
        """Return what the route ``scope`` reaches requires, or None if nothing.

        A path that is protected but reached with another method needs a valid key and no
        scope, so an anonymous caller learns no more from a 405 than from a 401.

        The answer for a path that reached a route without path parameters is remembered
        (such paths are as few as the routes): matching every route's pattern in turn was
        a twentieth of a single event's time.
        """
        key = (scope["method"], scope.get("root_path", ""), scope["path"])
        known = self._static.get(key)
        if known is not None:
            route, gate = known
            scope["route"] = route
            return gate
        partial: _Gate | None = None
        for gate in self._table:
            match, _ = gate.route.matches(scope)
            if match is Match.FULL:
                scope["route"] = gate.route  # for the metrics and logs of a refusal
                found = gate if gate.needs or gate.signed or gate.pages else None
                if not gate.route.param_convertors:
                    self._static[key] = (gate.route, found)
                return found
            if match is Match.PARTIAL and gate.needs and partial is None:
                partial = _Gate(gate.route, (), (), keyed=True)
        return partial

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gate = self._gate(scope)
        if gate is not None and gate.pages:
            await self._page(gate, scope, receive, send)
            return
        try:
            if gate is not None and gate.keyed:
                authorization = _header(scope, b"authorization")
                principal = await authenticate(scope["app"].state.keystore, authorization)
                for need in gate.needs:
                    refusal = need.refusal(principal)
                    if refusal is not None:
                        raise AuthError(403, refusal)
                scope[_PRINCIPAL] = principal
            for signed in gate.signed if gate is not None else ():
                refusal = signed.refusal(scope["headers"])
                if refusal is not None:
                    raise AuthError(signed.status, refusal)
        except AuthError as exc:
            await send_error(send, exc.status, exc.detail, headers=exc.headers)
            return
        except DATABASE_ERRORS as exc:
            # The key's lookup missed the database: the key may well be good, so a 503 the
            # client retries, not a 500 (nor a 401 that would send it to rotate its key).
            if not database_unavailable(exc):
                raise
            log.warning(
                "the database was unavailable to look up an API key (%s); answered 503",
                type(exc).__name__,
            )
            await send_error(
                send, 503, DATABASE_UNAVAILABLE, headers={"Retry-After": DATABASE_RETRY_AFTER}
            )
            return
        await self.app(scope, receive, send)

    async def _page(self, gate: _Gate, scope: Any, receive: Any, send: Any) -> None:
        try:
            session = await scope["app"].state.sessions.resolve(scope)
        except Exception as exc:
            if not is_transient(exc):
                raise
            await HTMLResponse(_DATABASE_DOWN, status_code=503, headers=HTML_HEADERS)(
                scope, receive, send
            )
            return
        if session is None:
            where = "/signin"
            # Back to a page after signing in, never to a form's POST-only action.
            if scope["method"] in _SAFE_METHODS:
                target = scope.get("root_path", "") + scope["path"]
                if scope.get("query_string"):
                    target += "?" + scope["query_string"].decode("latin-1")
                if len(target) <= _MAX_NEXT:
                    where += "?next=" + quote(target, safe="")
            await RedirectResponse(where, status_code=303)(scope, receive, send)
            return
        for need in gate.pages:
            refusal = need.refusal(session.principal)
            if refusal is not None:
                await _page_refusal(scope, receive, send, refusal, session)
                return
        if scope["method"] not in _SAFE_METHODS and not same_origin(scope):
            await _page_refusal(scope, receive, send, "a form from another site is refused")
            return
        scope[SESSION_SCOPE] = session
        scope[_PRINCIPAL] = session.principal
        await self.app(scope, receive, send)


async def _page_refusal(
    scope: Any, receive: Any, send: Any, detail: str, session: Session | None = None
) -> None:
    """A 403 a person reads. In an app with pages, their own error page: in the viewer's
    language, naming what is missing (a scope), under the header of who is signed in.
    Otherwise both languages, plainly."""
    pages = getattr(scope["app"].state, "pages", None)
    if pages is not None:
        if session is not None:
            scope[SESSION_SCOPE] = session
        response = pages.error(Request(scope, receive), 403, "error.forbidden", detail)
        response.headers.update(
            {k: v for k, v in HTML_HEADERS.items() if k not in response.headers}
        )
        await response(scope, receive, send)
        return
    body = (
        '<!doctype html><html lang="en"><meta charset="utf-8"><title>403</title>'
        f"<h1>Not allowed · 許可されていません</h1><p>{html.escape(detail)}</p>"
        '<p><a href="/signin">Sign in with another key · 別のキーでサインイン</a></p></html>'
    )
    await HTMLResponse(body, status_code=403, headers=HTML_HEADERS)(scope, receive, send)


def _header(scope: Any, name: bytes) -> str | None:
    values = [value for key, value in scope["headers"] if key.lower() == name]
    if len(values) != 1:
        return None
    return str(values[0].decode("latin-1"))
