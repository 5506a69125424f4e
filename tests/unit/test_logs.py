"""Log lines as an operator reads them: text or JSON, and never a row value of an error."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import sys
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from shared import logs
from shared.http import install_error_handlers
from shared.settings import LogSettings

SECRET = "cust-4f1e-planted"


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """Configure logging as a service does, into a buffer; restore pytest's handlers after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    yield buffer
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    sys.excepthook = sys.__excepthook__


def configure(output: io.StringIO, fmt: str) -> None:
    logs.configure(LogSettings.model_validate({"level": "DEBUG", "format": fmt}), "collector")
    logging.getLogger().handlers[0].setStream(output)  # type: ignore[attr-defined]


def unique_violation() -> IntegrityError:
    """What SQLAlchemy raises over asyncpg for a duplicate key, as the driver builds it."""
    driver = asyncpg.UniqueViolationError.new(
        {
            "C": "23505",
            "M": 'duplicate key value violates unique constraint "invitations_pkey"',
            "D": f"Key (customer_id)=({SECRET}) already exists.",
            "n": "invitations_pkey",
            "t": "invitations",
        }
    )
    try:
        raise IntegrityError("INSERT INTO invitations VALUES ($1)", (SECRET,), driver)
    except IntegrityError as exc:
        return exc


class Row(BaseModel):
    score: int


class TestDatabaseErrors:
    def test_neither_the_detail_nor_the_parameters_are_logged(self, output: io.StringIO) -> None:
        configure(output, "text")
        error = unique_violation()
        assert SECRET in str(error), "the driver's own text quotes the row"
        try:
            raise RuntimeError("batch failed") from error
        except RuntimeError:
            logging.getLogger("shared.kafka").exception("batch of %d failed", 3)
        logging.getLogger("x").warning("insert failed: %s", error)
        text = output.getvalue()
        assert SECRET not in text
        assert "invitations_pkey" in text
        assert "23505" in text
        assert "The above exception was the direct cause" in text

    def test_a_validation_error_is_described_without_its_input(self) -> None:
        try:
            Row.model_validate({"score": SECRET})
        except ValueError as exc:
            described = logs.describe_error(exc)
        assert SECRET not in described
        assert "score: int_parsing" in described

    def test_a_value_quoting_postgres_message_is_withheld(self) -> None:
        error = asyncpg.InvalidTextRepresentationError.new(
            {"C": "22P02", "M": f'invalid input syntax for type uuid: "{SECRET}"'}
        )
        assert SECRET not in logs.describe_error(error)
        assert "22P02" in logs.describe_error(error)
        # asyncpg's own, raised before the statement reaches Postgres
        unsent = asyncpg.DataError(f"invalid input for query argument $1: {SECRET!r} (bad)")
        assert SECRET not in logs.describe_error(unsent)


class TestJsonLines:
    def test_every_line_is_one_object_with_the_exception_text(self, output: io.StringIO) -> None:
        configure(output, "json")
        log = logging.getLogger("services.collector")
        log.info("purged %d expired idempotency keys", 2)
        try:
            raise unique_violation()
        except IntegrityError:
            log.exception("unhandled error on %s %s", "POST", "/v1/invitations")
        first, second = (json.loads(line) for line in output.getvalue().splitlines())
        assert first["message"] == "purged 2 expired idempotency keys"
        assert (first["level"], first["logger"], first["service"]) == (
            "INFO",
            "services.collector",
            "collector",
        )
        assert "time" in first
        assert "exception" not in first
        assert second["level"] == "ERROR"
        assert "Traceback" in second["exception"]
        assert "IntegrityError" in second["exception"]
        assert SECRET not in output.getvalue()


class TestUncaught:
    def test_the_error_that_ends_a_process_is_a_json_line_without_values(
        self, output: io.StringIO
    ) -> None:
        configure(output, "json")
        error = unique_violation()
        sys.excepthook(type(error), error, error.__traceback__)
        (line,) = output.getvalue().splitlines()
        entry = json.loads(line)
        assert entry["level"] == "CRITICAL"
        assert "invitations_pkey" in entry["exception"]
        assert SECRET not in line


class TestRequests:
    async def test_a_500_is_logged_with_its_route_template_not_the_path(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        app = FastAPI()
        install_error_handlers(app)

        @app.get("/v1/customers/{customer_id}")
        async def broken(customer_id: str) -> None:
            raise RuntimeError("broken")

        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get(f"/v1/customers/{SECRET}")
        assert r.status_code == 500
        assert "unhandled error on GET /v1/customers/{customer_id}" in caplog.text
        assert SECRET not in caplog.text

    async def test_the_access_log_names_route_templates(self, output: io.StringIO) -> None:
        configure(output, "text")
        app = FastAPI()

        @app.get("/v1/customers/{customer_id}")
        async def customer(customer_id: str) -> dict[str, str]:
            return {}

        transport = httpx.ASGITransport(app=logs.AccessLogMiddleware(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get(f"/v1/customers/{SECRET}", params={"phone": "+819012345678"})
            await client.get(f"/elsewhere/{SECRET}")
        lines = output.getvalue().splitlines()
        assert any("GET /v1/customers/{customer_id} 200" in line for line in lines)
        assert any("GET unmatched 404" in line for line in lines)
        assert SECRET not in output.getvalue()
        assert "9012345678" not in output.getvalue()


class TestLoggingErrors:
    def test_a_message_that_cannot_be_formatted_prints_no_argument(
        self, output: io.StringIO, capsys: pytest.CaptureFixture[str]
    ) -> None:
        configure(output, "text")
        logging.getLogger("x").info("answer for %s and %s", SECRET)  # one argument short
        stderr = capsys.readouterr().err
        assert "could not be formatted" in stderr
        assert SECRET not in stderr + output.getvalue()

    def test_an_exception_logged_as_the_message_is_described(self, output: io.StringIO) -> None:
        configure(output, "json")
        logging.getLogger("x").error(unique_violation())
        (line,) = output.getvalue().splitlines()
        assert "invitations_pkey" in json.loads(line)["message"]
        assert SECRET not in line

    async def test_a_task_exception_never_retrieved_is_described(self, output: io.StringIO) -> None:
        configure(output, "text")

        async def receive() -> dict[str, str]:
            return {"type": "lifespan.startup"}

        async def send(message: object) -> None:
            raise RuntimeError("started")  # leave the lifespan once startup is answered

        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        try:
            # What serve() runs under uvicorn: the lifespan installs the loop's handler.
            with contextlib.suppress(RuntimeError):
                await logs.AccessLogMiddleware(FastAPI())(
                    {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send
                )
            error = unique_violation()
            failed = loop.create_future()
            failed.set_exception(error)  # its repr quotes the error's
            loop.call_exception_handler(
                {"message": "Task exception was never retrieved",
                 "exception": error, "future": failed}
            )  # fmt: skip
            failed.exception()
        finally:
            loop.set_exception_handler(previous)
        text = output.getvalue()
        assert "Task exception was never retrieved" in text
        assert "invitations_pkey" in text
        assert SECRET not in text


class TestUntrustedMessages:
    @pytest.mark.parametrize(
        "error",
        [ValueError(f"bad phone {SECRET}"), KeyError(SECRET), httpx.HTTPError(SECRET)],
        ids=["ValueError", "KeyError", "httpx"],
    )
    def test_any_other_library_error_is_described_by_its_type_only(self, error: Exception) -> None:
        assert logs.describe_error(error) == type(error).__name__

    def test_cxloop_errors_and_connection_errors_keep_their_message(self) -> None:
        from shared.errors import PermanentError

        refused = PermanentError("is outside the years 1 to 9999 in UTC", field="occurred_at")
        assert "outside the years" in logs.describe_error(refused)
        down = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        assert "Connect call failed" in logs.describe_error(down)


class TestOneRecordOneLine:
    FORGED = "a\n2026-01-01 00:00:00,000 ERROR collector x: forged\r\x85\u2028\u2029\x0bb"

    def test_a_text_message_cannot_start_another_line(self, output: io.StringIO) -> None:
        configure(output, "text")
        logging.getLogger("x").warning("comment: %s", self.FORGED)
        try:
            raise RuntimeError(self.FORGED)
        except RuntimeError as exc:
            logging.getLogger("x").error("failed: %s", exc)
        lines = output.getvalue().splitlines()
        assert len(lines) == 2, lines
        assert "\\n2026-01-01" in lines[0]

    def test_a_json_line_holds_no_raw_line_separator(self, output: io.StringIO) -> None:
        configure(output, "json")
        logging.getLogger("x").warning("comment: %s", self.FORGED)
        (line,) = output.getvalue().splitlines()
        assert json.loads(line)["message"] == f"comment: {self.FORGED}"
