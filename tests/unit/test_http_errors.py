"""Every PermanentError raised under a route is answered 422, naming its field; a database
out of reach is a 503 to retry, and any other database error stays a 500."""

from __future__ import annotations

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from shared.errors import PermanentError, PoisonMessageError
from shared.http import install_error_handlers


class _Refusal(Exception):
    sqlstate = "57P03"


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/with-field")
    async def with_field() -> None:
        raise PermanentError("CallSid is missing", field="CallSid")

    @app.post("/without-field")
    async def without_field() -> None:
        raise PoisonMessageError("cannot decode")

    @app.post("/database-gone")
    async def database_gone() -> None:
        raise OperationalError("SELECT 'c-secret-42'", {}, ConnectionResetError())

    @app.post("/database-starting")
    async def database_starting() -> None:
        # What a restart's refusal reaches SQLAlchemy's pool as: asyncpg's error, with its
        # SQLSTATE, under a plain DBAPIError not marked invalidated.
        raise DBAPIError("SELECT 1", {}, _Refusal("the database system is starting up"))

    @app.post("/file-missing")
    async def file_missing() -> None:
        raise FileNotFoundError("/srv/widget.js")

    @app.post("/driver-starting")
    async def driver_starting() -> None:
        # A statement sent straight to asyncpg (shared.db.driver_connection): unwrapped.
        raise asyncpg.CannotConnectNowError("the database system is starting up")

    @app.post("/driver-refused")
    async def driver_refused() -> None:
        raise asyncpg.UniqueViolationError("duplicate key value violates unique constraint")

    @app.post("/database-refused")
    async def database_refused() -> None:
        raise IntegrityError("INSERT 'c-secret-42'", {}, ValueError("duplicate key"))

    return app


async def _post(path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path)


class TestPermanentErrorIs422:
    async def test_the_field_is_named_from_the_attribute(self) -> None:
        answer = await _post("/with-field")
        assert answer.status_code == 422
        body = answer.json()
        assert body["error"] == "validation_failed"
        assert body["field"] == "CallSid"
        assert body["errors"] == [{"field": "CallSid", "detail": "CallSid is missing"}]

    async def test_without_a_field_it_is_still_422_and_names_none(self) -> None:
        answer = await _post("/without-field")
        assert answer.status_code == 422
        assert "field" not in answer.json()


class TestDatabaseErrors:
    async def test_an_unreachable_database_is_503_with_retry_after(self) -> None:
        answer = await _post("/database-gone")
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "2"
        assert answer.json()["error"] == "unavailable"
        assert "c-secret-42" not in answer.text

    async def test_any_other_database_error_is_500(self) -> None:
        answer = await _post("/database-refused")
        assert answer.status_code == 500
        assert "retry-after" not in answer.headers
        assert "c-secret-42" not in answer.text

    async def test_a_server_starting_up_is_503(self) -> None:
        answer = await _post("/database-starting")
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "2"

    async def test_an_os_error_that_is_not_the_database_s_is_500(self) -> None:
        answer = await _post("/file-missing")
        assert answer.status_code == 500
        assert "database" not in answer.text

    async def test_asyncpg_s_own_refusal_while_starting_up_is_503(self) -> None:
        answer = await _post("/driver-starting")
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "2"

    async def test_asyncpg_s_own_refusal_of_the_data_is_500(self) -> None:
        answer = await _post("/driver-refused")
        assert answer.status_code == 500
        assert "retry-after" not in answer.headers
