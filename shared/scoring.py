"""The score maths every service shares: additive counts, NPS, CSAT and CES, their 95%
margins of error, rolling windows, and whether two periods differ beyond chance.

Pure functions, no I/O. The scorer's API and gauges and the alerting service's score-drop
rule all compute scores here, so a dashboard, ``/v1/scores``, a Prometheus gauge and a drop
alert can never disagree on a number.

Margins are 95% half-widths (``Z_95`` standard errors), in the score's own points:

* NPS: ±1.96·100·sqrt((p + d − (p − d)²) / n), p and d the promoter and detractor shares
  (the variance of a +1/0/−1 score).
* CSAT (% of 4s and 5s): the Wald interval of a proportion, ±1.96·100·sqrt(p(1 − p) / n).
  It is zero when every answer is satisfied (or none is); Wilson would not be, but Wald is
  what score-drop alerts have always used, and a zero margin at p = 0 or 1 only makes a
  change look significant when the other period's margin is also tiny.
* A repurchase rate (``GET /v1/value``): the Wilson score interval, whose bounds stay apart
  at p = 0 or 1 and at n = 1, where Wald's would say "100% ± 0".
* CES (mean): ±1.96·sd/sqrt(n), sd the sample standard deviation (n − 1), from the sum
  and the sum of squared scores the buckets keep (``score_sq_sum``); None below two answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from shared.errors import PermanentError
from shared.events import Metric

Z_95: Final = 1.96
SATISFIED_FROM: Final = 4
# A CES answer is "easy" at or above this score on its scale: the top three of 7, top two of 5.
EASY_FROM: Final[Mapping[int, int]] = {5: 4, 7: 5}
WINDOWS: Final[Mapping[str, timedelta]] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
    "365d": timedelta(days=365),
}


def in_utc(moment: datetime, field: str = "occurred_at") -> datetime:
    """Return ``moment`` in UTC; a time past either end of the calendar in UTC (valid in its
    own zone, as ``0001-01-01T00:30+01:00`` is) is the event's fault: ``PermanentError``
    naming ``field``."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise PermanentError("is outside the years 1 to 9999 in UTC", field=field) from None


def bucket_start(moment: datetime) -> datetime:
    """Return the start of the UTC hour holding ``moment`` (a +05:30 zone still lands right)."""
    return in_utc(moment).replace(minute=0, second=0, microsecond=0)


def window_start(window: str, now: datetime) -> datetime:
    """Return where the rolling ``window`` (a key of ``WINDOWS``) ending at ``now`` starts:
    the top of the hour ``window`` ago, so it holds whole hourly buckets."""
    return bucket_start(now - WINDOWS[window])


@dataclass(slots=True)
class Counts:
    """Additive counts: two buckets' counts sum to the counts of their union."""

    n: int = 0
    score_sum: int = 0
    score_sq_sum: int = 0
    promoters: int = 0
    passives: int = 0
    detractors: int = 0
    satisfied: int = 0
    easy: int = 0

    def add(self, other: Counts) -> None:
        """Add ``other``'s counts to these, in place."""
        # Spelt out rather than looped over fields(): this runs once per bucket summed.
        self.n += other.n
        self.score_sum += other.score_sum
        self.score_sq_sum += other.score_sq_sum
        self.promoters += other.promoters
        self.passives += other.passives
        self.detractors += other.detractors
        self.satisfied += other.satisfied
        self.easy += other.easy


def share(part: int, n: int) -> float | None:
    """Return ``part / n`` as a percentage, or None when there is nothing to divide."""
    return 100.0 * part / n if n else None


def nps(c: Counts) -> float | None:
    """Return %promoters − %detractors, from −100 to +100."""
    return 100.0 * (c.promoters - c.detractors) / c.n if c.n else None


def nps_margin_of_error(c: Counts) -> float | None:
    """Return the 95% margin of error of the NPS, in points: ±1.96·100·sqrt((p+d−(p−d)²)/n)."""
    if not c.n:
        return None
    p, d = c.promoters / c.n, c.detractors / c.n
    return Z_95 * 100.0 * math.sqrt(max(0.0, p + d - (p - d) ** 2) / c.n)


def csat(c: Counts) -> float | None:
    """Return CSAT: the percentage of answers of 4 or 5."""
    return share(c.satisfied, c.n)


def proportion_margin_of_error(part: int, n: int) -> float | None:
    """Return the 95% Wald margin of a percentage ``part / n``: ±1.96·100·sqrt(p(1−p)/n)."""
    if not n:
        return None
    p = part / n
    return Z_95 * 100.0 * math.sqrt(max(0.0, p * (1 - p)) / n)


def wilson_interval(part: int, n: int) -> tuple[float, float] | None:
    """Return the 95% Wilson score interval of the proportion ``part / n``, as percentages
    (low, high): (p + z²/2n ± z·√(p(1 − p)/n + z²/4n²)) / (1 + z²/n), z = 1.96. Unlike
    Wald's, it is never zero wide, even at p = 0 or 1 or n = 1. None when n = 0."""
    if not n:
        return None
    p, z2 = part / n, Z_95 * Z_95
    scale = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / scale
    half = Z_95 * math.sqrt(max(0.0, p * (1 - p)) / n + z2 / (4 * n * n)) / scale
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def csat_margin_of_error(c: Counts) -> float | None:
    """Return the 95% margin of error of CSAT, in percentage points (Wald)."""
    return proportion_margin_of_error(c.satisfied, c.n)


def mean(c: Counts) -> float | None:
    """Return the mean score."""
    return c.score_sum / c.n if c.n else None


def mean_margin_of_error(n: int, score_sum: float, square_sum: float) -> float | None:
    """Return the 95% margin of a mean, 1.96·sd/sqrt(n), from the sum and the sum of squares
    of the scores (sd with n − 1); None below two answers."""
    if n < 2:
        return None
    variance = max(0.0, (square_sum - score_sum * score_sum / n) / (n - 1))
    return Z_95 * math.sqrt(variance) / math.sqrt(n)


def score(metric: Metric | str, c: Counts) -> float | None:
    """Return the headline score of ``metric``: NPS, CSAT % satisfied, or mean CES."""
    if metric == Metric.NPS:
        return nps(c)
    if metric == Metric.CSAT:
        return csat(c)
    return mean(c)


def ces_margin_of_error(c: Counts) -> float | None:
    """Return the 95% margin of error of the mean CES, in its scale's points; None below two
    answers."""
    return mean_margin_of_error(c.n, c.score_sum, c.score_sq_sum)


def margin_of_error(metric: Metric | str, c: Counts) -> float | None:
    """Return the 95% margin of ``score(metric, c)`` in its points; None when there are no
    answers (for CES, fewer than two)."""
    if metric == Metric.NPS:
        return nps_margin_of_error(c)
    if metric == Metric.CSAT:
        return csat_margin_of_error(c)
    return ces_margin_of_error(c)


@dataclass(frozen=True, slots=True)
class Estimate:
    """A score with its sample size and 95% margin of error (None when unknown)."""

    value: float | None
    margin: float | None
    n: int


def estimate(metric: Metric | str, c: Counts) -> Estimate:
    """Return the score of ``metric`` for ``c`` with its margin and ``n``."""
    return Estimate(score(metric, c), margin_of_error(metric, c), c.n)


@dataclass(frozen=True, slots=True)
class Change:
    """The difference between two periods' scores, and whether chance explains it.

    ``margin`` is the 95% margin of the difference, 1.96·sqrt(se₁² + se₂²), which is the
    two margins' hypotenuse; ``significant`` is |delta| > margin. Unknown (None) when either
    period has no score or no margin; an unknown change is never significant.
    """

    delta: float | None
    margin: float | None
    significant: bool


def change(current: Estimate, previous: Estimate, min_n: int = 1) -> Change:
    """Return ``current − previous`` and whether it lies beyond the combined 95% margin.

    A period with fewer than ``min_n`` answers makes no change significant: at tiny n a Wald
    margin can be zero (one satisfied answer against one unsatisfied).
    """
    if current.value is None or previous.value is None:
        return Change(None, None, False)
    delta = current.value - previous.value
    if current.margin is None or previous.margin is None:
        return Change(delta, None, False)
    combined = math.hypot(current.margin, previous.margin)
    enough = min(current.n, previous.n) >= min_n
    return Change(delta, combined, enough and abs(delta) > combined)


def summarise(metric: Metric, c: Counts, scale: int | None, min_n: int) -> dict[str, Any]:
    """Return the fields of a score summary of ``metric`` for counts ``c``: ``n``, ``score``,
    ``insufficient`` (n below ``min_n``), ``margin`` and the metric's own counts and shares."""
    body: dict[str, Any] = {
        "n": c.n,
        "insufficient": c.n < min_n,
        "score": score(metric, c),
        "margin": margin_of_error(metric, c),
    }
    if metric is Metric.NPS:
        body |= {
            "promoters": c.promoters,
            "passives": c.passives,
            "detractors": c.detractors,
            "promoter_share": share(c.promoters, c.n),
            "passive_share": share(c.passives, c.n),
            "detractor_share": share(c.detractors, c.n),
            "margin_of_error": nps_margin_of_error(c),
        }
    elif metric is Metric.CSAT:
        body |= {"satisfied": c.satisfied, "mean": mean(c)}
    else:
        body |= {"scale": scale, "easy": c.easy, "easy_share": share(c.easy, c.n)}
    return body
