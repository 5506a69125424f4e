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

from services.alerting import consumer, outbox, repository
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
_attempt = outbox._attempt


async def _open_or_fold_then_die(*args: Any, **kwargs: Any) -> Any:
    opened = await _open_or_fold(*args, **kwargs)
    if _CRASH_AT == "transaction":
        _count_then_maybe_die()
    return opened


async def _apply_then_die(self: consumer.AlertHandler, batch: Sequence[Decoded]) -> None:
    await _apply(self, batch)
    if _CRASH_AT == "batch":
        _count_then_maybe_die()


async def _attempt_then_die(*args: Any, **kwargs: Any) -> tuple[str, float | None, str | None]:
    outcome = await _attempt(*args, **kwargs)
    if _CRASH_AT == "delivery" and outcome[0] == "delivered":
        _count_then_maybe_die()
    return outcome


consumer.AlertHandler.__call__ = _apply_then_die  # type: ignore[method-assign]
repository.open_or_fold = _open_or_fold_then_die
outbox._attempt = _attempt_then_die

if __name__ == "__main__":
    sys.exit(main(["alerting"]))
