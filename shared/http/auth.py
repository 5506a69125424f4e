"""Bearer authentication: a route declares the scope it needs with :func:`require`.

The same declaration is enforced twice, from one :class:`Requirement`: by
:class:`AuthGateMiddleware` before the body is read (so an anonymous caller gets 401 and
never a 422 that describes the schema, and costs no body read), and by the route's
dependency, which also hands the route its :class:`~shared.apikeys.Principal`. The gate
reads each route's requirements from its dependencies, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import BaseRoute, Match

from shared.apikeys import KeyStore, Principal, Scope
from shared.http.errors import send_error

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


def requirements_of(route: APIRoute) -> tuple[Requirement, ...]:
    """Return every :class:`Requirement` a route declares through :func:`require`."""

    def walk(dependant: Dependant) -> Iterator[Requirement]:
        found = getattr(dependant.call, "requirement", None)
        if isinstance(found, Requirement):
            yield found
        for sub in dependant.dependencies:
            yield from walk(sub)

    return tuple(dict.fromkeys(walk(route.dependant)))


class AuthGateMiddleware:
    """Authenticate a request to a route that :func:`require`-s a scope before its body is read.

    Refused: 401 without a valid bearer key, 403 for a key without the route's scope. Routes
    that declare no requirement (operations, vendor-signed webhooks, the widget) pass through
    to their own checks.
    """

    def __init__(self, app: Any, *, routers: Sequence[APIRouter]) -> None:
        self.app = app
        self._table: list[tuple[BaseRoute, tuple[Requirement, ...]]] = []
        for router in routers:
            for route in router.routes:
                if not isinstance(route, APIRoute):
                    raise TypeError(f"{route!r}: the auth gate knows only APIRoutes")
                self._table.append((route, requirements_of(route)))

    def _requirements(self, scope: Any) -> tuple[Requirement, ...] | None:
        """Return the requirements of the route ``scope`` reaches (None: no key needed).

        A path that is protected but reached with another method needs a valid key and no
        scope, so an anonymous caller learns no more from a 405 than from a 401.
        """
        partial: tuple[Requirement, ...] | None = None
        for route, needs in self._table:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return needs or None
            if match is Match.PARTIAL and needs and partial is None:
                partial = ()
        return partial

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needs = self._requirements(scope)
        if needs is not None:
            authorization = _header(scope, b"authorization")
            try:
                principal = await authenticate(scope["app"].state.keystore, authorization)
                for need in needs:
                    refusal = need.refusal(principal)
                    if refusal is not None:
                        raise AuthError(403, refusal)
            except AuthError as exc:
                await send_error(send, exc.status, exc.detail, headers=exc.headers)
                return
            scope[_PRINCIPAL] = principal
        await self.app(scope, receive, send)


def _header(scope: Any, name: bytes) -> str | None:
    values = [value for key, value in scope["headers"] if key.lower() == name]
    if len(values) != 1:
        return None
    return str(values[0].decode("latin-1"))
