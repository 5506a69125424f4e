"""The alerting service, made to die at the worst moments. Run as ``python
crashing_alerting.py`` with the service's environment, ``CRASH_AT`` and ``CRASH_AFTER``:

* ``CRASH_AT=transaction``: inside the ``CRASH_AFTER``-th batch's transaction, once its
  alerts are written and before it commits;
* ``CRASH_AT=batch``: right after the ``CRASH_AFTER``-th batch's transaction commits (the
  alerts and their queued notifications are stored), before its offsets are committed;
* ``CRASH_AT=delivery``: right after a receiver answered 2xx to the ``CRASH_AFTER``-th
  notification, before the outbox records it as delivered.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx

from services.alerting import consumer, repository
from services.cli import main
from shared.kafka import Decoded

_CRASH_AT = os.environ["CRASH_AT"]
_AFTER = int(os.environ["CRASH_AFTER"])
_seen = 0


def _count_then_maybe_die() -> None:
    global _seen
    _seen += 1
    if _seen >= _AFTER:
        os._exit(137)


_apply = consumer.AlertHandler.__call__
_open_or_fold = repository.open_or_fold
_send = httpx.AsyncClient.send


async def _open_or_fold_then_die(*args: Any, **kwargs: Any) -> Any:
    opened = await _open_or_fold(*args, **kwargs)
    if _CRASH_AT == "transaction":
        _count_then_maybe_die()
    return opened


async def _apply_then_die(self: consumer.AlertHandler, batch: Sequence[Decoded]) -> None:
    await _apply(self, batch)
    if _CRASH_AT == "batch":
        _count_then_maybe_die()


async def _send_then_die(
    self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any
) -> httpx.Response:
    response = await _send(self, request, **kwargs)
    if _CRASH_AT == "delivery" and response.is_success:
        _count_then_maybe_die()
    return response


consumer.AlertHandler.__call__ = _apply_then_die  # type: ignore[method-assign]
repository.open_or_fold = _open_or_fold_then_die
httpx.AsyncClient.send = _send_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(["alerting"]))
