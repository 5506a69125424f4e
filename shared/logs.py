"""Logging set-up shared by every process: text or JSON lines, and no row values in either.

Errors of the database driver quote the rows they failed on (asyncpg's ``DETAIL:  Key
(customer_id)=(...)``, ``Failing row contains (...)``, an argument it could not encode),
and a pydantic ``ValidationError`` quotes its input. Whatever logs them, with ``exc_info``
or as a ``%s`` argument, the formatters here write them through :func:`describe_error`,
which keeps the kind of error, its SQLSTATE and the constraint, table and column it names,
and never a value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from shared.settings import LogSettings

# Libraries whose DEBUG lines are about their own plumbing (httpcore prints request headers,
# python-multipart every form field it parses): they log warnings and errors only.
_NOISY = (
    "aiokafka",
    "kafka",
    "sqlalchemy.engine",
    "sqlalchemy.pool",
    "httpx",
    "httpcore",
    "alembic",
    "multipart",
    "python_multipart",
)

# Postgres data exceptions (class 22, "invalid input syntax for type uuid: \"...\"") and
# messages raised by PL/pgSQL (P0) may quote a value in their primary message; the others
# keep values in DETAIL, which is never shown.
_VALUE_QUOTING_SQLSTATE_CLASSES = ("22", "P0")


def describe_error(exc: BaseException) -> str:
    """Return a one-line description of ``exc`` that quotes no value it may carry.

    Database errors (asyncpg's, and SQLAlchemy's wrappers of them) keep their kind, SQLSTATE
    and the constraint, table and column they name; a validation error keeps where and what
    is wrong. cxloop's own errors, and the few library errors :func:`_trusted` names, keep
    their text; any other exception is described by its type alone. Use it wherever the
    text of an error leaves the process: a log line, a dead letter's reason.
    """
    name = type(exc).__name__
    postgres = _postgres_error(exc)
    if postgres is not None:
        statement = getattr(exc, "statement", None)
        sql = f" [SQL: {_shorten(str(statement))}]" if statement else ""
        return f"{name}: {_describe_postgres(postgres, name)}{sql}"
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['type']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        return f"{name}: {exc.error_count()} error(s) in {exc.title}: {problems}"
    if _from_database_driver(exc):
        # A client-side driver error: "invalid input for query argument $1: '<value>' (...)".
        first, quoted, _ = str(exc).partition(": ")
        withheld = " (the rest is withheld: it may quote a value)" if quoted else ""
        return f"{name}: {first}{withheld}"
    if not _trusted(exc):
        return name
    text = str(exc)
    return f"{name}: {text}" if text else name


def _trusted(exc: BaseException) -> bool:
    """Whether ``exc``'s own text may be logged: cxloop's errors (their messages name a field
    or a variable, never its value), and library errors whose text is about plumbing: an
    OSError's errno, reason and address, a Kafka client's protocol error, a JSON decoder's
    position. Any other (a ValueError, a KeyError, httpx's, which quote what they were given
    or a URL that may hold a token) is described by its type alone."""
    from aiokafka.errors import KafkaError

    from shared.errors import CxloopError

    if isinstance(exc, CxloopError | OSError | KafkaError | json.JSONDecodeError):
        return True
    return type(exc).__module__.partition(".")[0] in ("shared", "services")


def _postgres_error(exc: BaseException) -> Any | None:
    """The server error behind ``exc`` (SQLAlchemy wraps asyncpg's twice), or None."""
    found: Any | None = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and _from_database_driver(current):
        seen.add(id(current))
        if getattr(current, "sqlstate", None):
            found = current  # the innermost one (asyncpg's) names the constraint
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return found


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _from_database_driver(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("asyncpg", "sqlalchemy"))


def _describe_postgres(error: Any, outer: str) -> str:
    sqlstate = str(getattr(error, "sqlstate", "") or "")
    kind = type(error).__name__
    parts = [f"[SQLSTATE {sqlstate}]" + (f" {kind}" if kind != outer else "")]
    for attribute in ("constraint_name", "table_name", "column_name", "data_type_name"):
        value = getattr(error, attribute, None)
        if value:
            parts.append(f"{attribute.removesuffix('_name')}={value}")
    if not sqlstate.startswith(_VALUE_QUOTING_SQLSTATE_CLASSES) and error.args:
        message = str(error.args[0]).splitlines()[0] if str(error.args[0]) else ""
        if message:
            parts.append(f"({message})")
    return " ".join(parts)


def format_exception(exc: BaseException) -> str:
    """Return ``exc``'s traceback and chain as Python prints them, each error described
    by :func:`describe_error`."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    parts: list[str] = []
    for error, link in reversed(chain):
        parts.append(_format_one(error))
        if link:
            parts.append(link)
    return "".join(parts).rstrip("\n")


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def _format_one(error: BaseException) -> str:
    text = ""
    if error.__traceback__ is not None:
        text = "Traceback (most recent call last):\n" + "".join(
            traceback.format_tb(error.__traceback__)
        )
    text += one_line(describe_error(error)) + "\n"
    if isinstance(error, BaseExceptionGroup):
        for index, inner in enumerate(error.exceptions, 1):
            nested = format_exception(inner).replace("\n", "\n  | ")
            text += f"  +---------------- {index} ----------------\n  | {nested}\n"
    return text


def _message(record: logging.LogRecord) -> str:
    """``record``'s message, with any exception among its arguments described safely."""
    if isinstance(record.msg, BaseException):  # logger.error(exc)
        return describe_error(record.msg)
    args = record.args
    if isinstance(args, tuple) and any(isinstance(a, BaseException) for a in args):
        safe = tuple(describe_error(a) if isinstance(a, BaseException) else a for a in args)
        return str(record.msg) % safe
    return record.getMessage()


# Every character str.splitlines() breaks at: one in a message (a comment, say) would let
# it forge a line of its own. Text lines escape them all; JSON escapes \n and \r itself.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_TEXT_ESCAPES = str.maketrans({c: c.encode("unicode_escape").decode() for c in _LINE_BREAKS})
_JSON_ESCAPES = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})


def one_line(text: str) -> str:
    """``text`` with every line break escaped (``\\n``, ``\\u2028``)."""
    return text.translate(_TEXT_ESCAPES)


class TextFormatter(logging.Formatter):
    """``time level service logger: message``, then the exception's traceback, if any.

    The message is one line: its line breaks are escaped.
    """

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(_message(record))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return format_exception(ei[1]) if ei and ei[1] is not None else ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message and exception."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": _message(record),
        }
        if record.exc_info and record.exc_info[1] is not None:
            entry["exception"] = format_exception(record.exc_info[1])
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        # JSON escapes \n and \r; a reader splitting on U+2028, U+2029 or NEL would not.
        return json.dumps(entry, ensure_ascii=False, default=str).translate(_JSON_ESCAPES)


def formatter(settings: LogSettings, service: str) -> logging.Formatter:
    """Return the formatter ``settings.format`` names."""
    if settings.format == "json":
        return JsonFormatter(service)
    return TextFormatter(service)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose own failure prints a fixed line, not the record's arguments."""

    def handleError(self, record: logging.LogRecord) -> None:
        # logging's own prints "Message: %r / Arguments: %s": the values a format lost.
        error = sys.exc_info()[1]
        with contextlib.suppress(Exception):
            sys.stderr.write(
                f"--- logging error: a record of {record.name} ({record.pathname}:"
                f"{record.lineno}) could not be formatted: "
                f"{type(error).__name__ if error is not None else 'unknown error'} ---\n"
            )


def configure(settings: LogSettings, service: str) -> None:
    """Log to stderr, as text or JSON lines; quiet chatty libraries."""
    handler = _Handler(sys.stderr)
    handler.setFormatter(formatter(settings, service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    logging.captureWarnings(True)  # a warning is a log line too (one JSON object)
    sys.excepthook = _log_uncaught  # and so is the error that ends the process
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("cxloop").critical("exiting on %s", kind.__name__, exc_info=(kind, exc, tb))


# The messages asyncio's loop reports with (others, "Exception in callback <repr>", quote
# the callback's arguments).
_LOOP_MESSAGES = frozenset(
    {
        "Task exception was never retrieved",
        "Future exception was never retrieved",
        "Unhandled exception in event loop",
        "Exception in callback",
        "Unhandled error in exception handler",
    }
)


def log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: asyncio's own writes the task's repr, which
    quotes its exception; this one logs a known message and the error through
    :func:`describe_error`."""
    message = str(context.get("message") or "")
    if message not in _LOOP_MESSAGES:
        message = "Exception in callback" if message.startswith("Exception in callback") else ""
    error = context.get("exception")
    exc_info = (
        (type(error), error, error.__traceback__) if isinstance(error, BaseException) else None
    )
    logging.getLogger("asyncio").error(
        "%s", message or "unhandled error in the event loop", exc_info=exc_info
    )


access_log = logging.getLogger("cxloop.access")


def route_template(scope: Any) -> str:
    """The template of the route that answered (``/v1/alerts/{alert_id}``), never the raw
    path, which may carry a customer id or a phone number; ``unmatched`` for none."""
    route = scope.get("route")
    return str(getattr(route, "path", None) or "unmatched")


class AccessLogMiddleware:
    """At DEBUG, one line per request: method, route template, status and duration.

    It replaces uvicorn's access log, which prints the raw path and query string.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            # serve() wraps every app in this: the loop uvicorn made reports through the logs.
            asyncio.get_running_loop().set_exception_handler(log_loop_exception)
        if scope["type"] != "http" or not access_log.isEnabledFor(logging.DEBUG):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            access_log.debug(
                "%s %s %d %.1fms",
                scope["method"],
                route_template(scope),
                status,
                (time.perf_counter() - started) * 1000,
            )
