"""The scorer, made to die at the worst moment: right after a batch's transaction commits,
before its offsets are committed. Run as ``python crashing_scorer.py`` with the scorer's
environment and ``CRASH_AFTER_BATCHES``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from services.cli import main
from services.scorer import consumer
from shared.kafka import Decoded

_apply = consumer.BatchHandler.__call__
_handled = 0


async def _apply_then_die(self: consumer.BatchHandler, batch: Sequence[Decoded]) -> None:
    global _handled
    await _apply(self, batch)
    _handled += 1
    if _handled >= int(os.environ["CRASH_AFTER_BATCHES"]):
        os._exit(137)


consumer.BatchHandler.__call__ = _apply_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(["scorer"]))
