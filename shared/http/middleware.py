"""The ASGI middlewares every service runs: body limits, the NUL guard, request metrics."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from prometheus_client import Counter, Histogram

from shared import metrics
from shared.http.errors import NESTED_TOO_DEEPLY
from shared.http.errors import send_error as _send_error

BodyPolicy = Callable[[str], tuple[int, frozenset[str]]]
JSON_ONLY = frozenset({"application/json"})


class NulGuardMiddleware:
    """Refuse (422, naming the field) any request carrying U+0000 in its path, query or body.

    Postgres text cannot hold it: accepted, it would fail a query with a 500, or, in an
    answer's comment, fail every consumer's insert of that event for good.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"]:
            await _send_error(send, 422, _NUL, field="path")
            return
        query = scope.get("query_string", b"")
        if b"\x00" in query or b"%00" in query:
            for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                if "\x00" in value or "\x00" in name:
                    await _send_error(send, 422, f"{name}: {_NUL}", field=name)
                    return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            field = _nul_field(body)
        except RecursionError:
            await _send_error(send, 422, f"body: {NESTED_TOO_DEEPLY}", field="body")
            return
        if field is not None:
            await _send_error(send, 422, f"{field}: {_NUL}", field=field)
            return
        await self.app(scope, _replay([{"type": "http.request", "body": body}], receive), send)


_NUL = "must not contain the NUL character (U+0000)"


def _nul_field(body: bytes) -> str | None:
    """Return where in ``body`` a NUL is (a JSON path or form field), or None.

    Raises RecursionError for JSON nested too deeply to parse or walk.
    """
    lowered = body.lower()
    if b"\x00" not in body and b"\\u0000" not in lowered and b"%00" not in body:
        return None
    try:
        return _nul_path(json.loads(body), "")
    except (ValueError, UnicodeDecodeError):
        pass
    for name, value in parse_qsl(body.decode("latin-1"), keep_blank_values=True):
        if "\x00" in value or "\x00" in name:
            return name
    return "body" if b"\x00" in body else None


def _nul_path(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where
            found = _nul_path(item, where)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}.{index}" if path else str(index))
            if found:
                return found
    return None


def _replay(messages: list[Any], then: Any = None) -> Any:
    pending = list(messages)

    async def receive() -> Any:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


class BodyTooLargeError(Exception):
    """Raised into the app by the limited ``receive`` once a body passes its route's limit."""


class BodyLimitMiddleware:
    """Refuse bodies over a route's size limit (413) or of a media type it does not take (415).

    ``policy(path)`` gives the limit in bytes and the accepted media types. A declared
    ``Content-Length`` over the limit is refused before a byte of the body is read; a body
    streamed without one (chunked) is counted as it arrives, and the first chunk past the
    limit ends the request with 413: the app never sees a truncated body, because reading
    it raises instead. Inside this middleware nothing can buffer more than the limit.
    """

    def __init__(self, app: Any, *, policy: BodyPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Other methods take no body on any route here, so nothing would read one.
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        max_bytes, media_types = self.policy(scope["path"])
        length, content_type = _length_and_type(scope["headers"])
        declared = length.strip()
        if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
            await _send_error(send, 413, f"body is {declared} bytes; the limit is {max_bytes}")
            return
        media_type = content_type.split(";")[0].strip().lower()
        if media_type not in media_types:
            accepted = " or ".join(sorted(media_types))
            await _send_error(
                send,
                415,
                f"content-type {media_type or '(none)'} is not supported: send {accepted}",
            )
            return
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> Any:
            nonlocal received, too_large
            if too_large:
                raise BodyTooLargeError
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    too_large = True
                    raise BodyTooLargeError
            return message

        async def guarded_send(message: Any) -> None:
            nonlocal started
            if too_large:
                return  # whatever the app answers to a body cut short is replaced by the 413
            started = True
            await send(message)

        with contextlib.suppress(BodyTooLargeError):
            await self.app(scope, limited_receive, guarded_send)
        if too_large and not started:
            await _send_error(send, 413, f"body exceeds the limit of {max_bytes} bytes")


def _length_and_type(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, str]:
    """Return the ``Content-Length`` and ``Content-Type`` values ("" when absent); of a
    header sent twice, the last, as before. Two names are looked for, so no dict of every
    header is built per request."""
    length = content_type = b""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            length = value
        elif lowered == b"content-type":
            content_type = value
    return length.decode("latin-1"), content_type.decode("latin-1")


class ForwardedHeaderMiddleware:
    """Read RFC 7239 ``Forwarded`` as ``X-Forwarded-For``/``-Proto``, in their place.

    When a request carries ``Forwarded``, that is the header believed: any
    ``X-Forwarded-For``/``-Proto`` is dropped, since a proxy that writes only ``Forwarded``
    passes on whatever ``X-Forwarded-For`` its client sent. It only translates: whether any
    of it is believed is decided by uvicorn's ``ProxyHeadersMiddleware``, which runs next and
    trusts only the configured proxies.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        names = {key.lower() for key, _ in scope["headers"]}
        if b"forwarded" in names:
            value = b", ".join(v for k, v in scope["headers"] if k.lower() == b"forwarded")
            hosts, protos = forwarded_pairs(value.decode("latin-1"))
            kept = [(k, v) for k, v in scope["headers"] if k.lower() not in _REPLACED]
            if hosts:
                kept.append((b"x-forwarded-for", ", ".join(hosts).encode("latin-1")))
            if protos:
                kept.append((b"x-forwarded-proto", protos[-1].encode("latin-1")))
            # In place, not on a copy: what the layers inside write to the scope (the gate's
            # route, for the access log and the 500 log outside) must reach the outer ones.
            scope["headers"] = kept
        await self.app(scope, receive, send)


_REPLACED = frozenset({b"x-forwarded-for", b"x-forwarded-proto"})


def forwarded_pairs(value: str) -> tuple[list[str], list[str]]:
    """Return the ``for`` hosts (ports stripped) and ``proto`` values of a Forwarded header."""
    hosts: list[str] = []
    protos: list[str] = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, _, raw = pair.strip().partition("=")
            item = raw.strip().strip('"')
            if name.lower() == "for" and item:
                hosts.append(_host_of(item))
            elif name.lower() == "proto" and item:
                protos.append(item.lower())
    return hosts, protos


def _host_of(node: str) -> str:
    if node.startswith("["):  # "[2001:db8::17]:4711"
        return node[1:].partition("]")[0]
    if node.count(":") == 1:  # "192.0.2.60:8080"
        return node.partition(":")[0]
    return node


# The methods a request is counted under by name. uvicorn's h11 server passes any token a
# client sends as the method (httptools refuses unknown ones); counted by name, each made-up
# method would add a label set for good.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetricsMiddleware:
    """Counts requests by route template (never the raw path) and method (an unusual one as
    "other"), so that labels stay bounded."""

    def __init__(self, app: Any, *, service: str) -> None:
        self.app = app
        self.service = service
        self._cache: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
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
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope["method"] if scope["method"] in _METHODS else "other"
            counted, timed = self._children(method, template, status)
            counted.inc()
            timed.observe(time.perf_counter() - started)

    def _children(self, method: str, template: str, status: int) -> tuple[Counter, Histogram]:
        """Return the request counter's and latency histogram's children for these labels.

        Looked up once per label set, not per request (``labels()`` cost 2.7% of the
        collector's CPU under single-event load). The cache holds exactly the label sets the
        registry already holds, and those are bounded: route templates, the methods of
        ``_METHODS`` (any other counts as "other"), and status codes.
        """
        key = (method, template, status)
        children = self._cache.get(key)
        if children is None:
            children = (
                metrics.HTTP_REQUESTS.labels(
                    service=self.service, method=method, route=template, status=str(status)
                ),
                metrics.HTTP_SECONDS.labels(service=self.service, route=template),
            )
            self._cache[key] = children
        return children
