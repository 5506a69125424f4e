"""Bearer authentication: a route declares the scope it needs with :func:`require`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.apikeys import KeyStore, Principal, Scope

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def get_principal(source: str | None = None) -> Any:
    """Return a dependency that authenticates the bearer key and yields its Principal."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(
                401,
                "missing credentials: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        store: KeyStore = request.app.state.keystore
        principal = await store.authenticate(credentials.credentials)
        if principal is None:
            raise HTTPException(
                401,
                "invalid API key",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return principal

    return dependency


def require(scope: Scope, source: str | None = None) -> Any:
    """Return a dependency that admits only keys allowed ``scope`` (through ``source``)."""

    # A default rather than Annotated: the dependency is built here, so a string annotation
    # (from __future__ import annotations) could not name it.
    async def dependency(principal: Principal = Depends(get_principal(source))) -> Principal:  # noqa: B008
        if not principal.may(scope, source):
            through = f" through {source}" if source else ""
            raise HTTPException(403, f"this key may not use {scope.value}{through}")
        return principal

    return Depends(dependency)
