"""How long each part of a request took, for its ``Server-Timing`` header.

A page's route measures each service call (by panel) and its rendering; browsers show the
header in their developer tools, and ``bench/queries.py`` reports it per panel.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

# A Server-Timing metric name is an HTTP token (RFC 9110): no ':' or spaces.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


class Timings:
    """Named durations, in the order first measured; a name measured twice adds up."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` more for ``name`` (an HTTP token)."""
        if not _TOKEN.match(name):
            raise ValueError(f"{name!r} is not an HTTP token")
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    async def run(self, name: str, call: Awaitable[T]) -> T:
        """Await ``call``, counting its wall time (waiting for a connection included)."""
        started = time.perf_counter()
        try:
            return await call
        finally:
            self.add(name, time.perf_counter() - started)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Count the wall time of a block."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def seconds(self) -> dict[str, float]:
        return dict(self._seconds)

    def header(self) -> str:
        """The ``Server-Timing`` value: ``name;dur=<ms>`` for each part."""
        return ", ".join(f"{name};dur={s * 1000:.1f}" for name, s in self._seconds.items())


def parse_header(value: str) -> dict[str, float]:
    """Read a ``Server-Timing`` value back into milliseconds by name (``dur`` only)."""
    parsed: dict[str, float] = {}
    for entry in value.split(","):
        name, *params = (p.strip() for p in entry.split(";"))
        if not name:
            continue
        for param in params:
            key, _, number = param.partition("=")
            if key.strip() == "dur":
                parsed[name] = float(number.strip().strip('"'))
    return parsed
