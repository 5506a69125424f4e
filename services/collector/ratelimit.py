"""Token-bucket rate limits, per process: each collector instance enforces its own share."""

from __future__ import annotations

import math
import time
from collections import OrderedDict


class RateLimiter:
    """Allows ``per_minute`` requests per key, refilled continuously, in a bounded memory."""

    def __init__(self, per_minute: float, *, max_keys: int = 100_000) -> None:
        self._rate = per_minute / 60.0
        self._burst = max(1.0, per_minute)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_keys = max_keys

    def check(self, key: str) -> float:
        """Take one token for ``key``; return 0 if allowed, else the seconds until one frees."""
        now = time.monotonic()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1 - tokens) / self._rate if self._rate else math.inf
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait
