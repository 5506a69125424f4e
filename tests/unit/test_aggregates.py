"""Folding responses into counts, and the scores of folded counts."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from services.scorer.aggregates import (
    fold,
)
from shared import scoring
from shared.scoring import Counts, bucket_start
from tests.builders import response_event


def nps_counts(scores: list[int]) -> Counts:
    total = Counts()
    for counts in fold([response_event(score=s) for s in scores]).values():
        total.add(counts)
    return total


class TestNps:
    def test_score_is_promoters_minus_detractors(self) -> None:
        c = nps_counts([10, 9, 9, 8, 3])
        assert (c.promoters, c.passives, c.detractors, c.n) == (3, 1, 1, 5)
        assert scoring.nps(c) == pytest.approx(40.0)

    def test_all_detractors_is_minus_100(self) -> None:
        assert scoring.nps(nps_counts([0, 6, 2])) == pytest.approx(-100.0)

    def test_no_responses_has_no_score(self) -> None:
        assert scoring.nps(Counts()) is None
        assert scoring.nps_margin_of_error(Counts()) is None

    def test_margin_of_error_follows_the_formula(self) -> None:
        c = nps_counts([10] * 50 + [7] * 30 + [2] * 20)
        p, d = 0.5, 0.2
        expected = 1.96 * 100 * math.sqrt((p + d - (p - d) ** 2) / 100)
        assert scoring.nps_margin_of_error(c) == pytest.approx(expected)

    def test_margin_shrinks_with_the_square_root_of_n(self) -> None:
        small = nps_counts([10, 7, 2] * 10)
        large = nps_counts([10, 7, 2] * 1000)
        assert scoring.nps(small) == pytest.approx(scoring.nps(large))
        small_moe = scoring.nps_margin_of_error(small)
        assert small_moe is not None
        assert scoring.nps_margin_of_error(large) == pytest.approx(small_moe / 10)


class TestCsatAndCes:
    def test_csat_counts_fours_and_fives(self) -> None:
        events = [response_event(metric="csat", scale=5, score=s) for s in (5, 4, 3, 1)]
        (c,) = fold(events).values()
        assert c.satisfied == 2
        assert scoring.share(c.satisfied, c.n) == pytest.approx(50.0)
        assert scoring.mean(c) == pytest.approx(13 / 4)

    @pytest.mark.parametrize(("scale", "easy_scores"), [(5, {4, 5}), (7, {5, 6, 7})])
    def test_ces_easy_is_the_top_of_its_own_scale(self, scale: int, easy_scores: set[int]) -> None:
        events = [response_event(metric="ces", scale=scale, score=s) for s in range(1, scale + 1)]
        (c,) = fold(events).values()
        assert c.easy == len(easy_scores)

    def test_ces_keeps_the_squares_its_margin_needs(self) -> None:
        # 1..5: sum 15, squares 1 + 4 + 9 + 16 + 25 = 55; margin 1.96 × sqrt(2.5 / 5).
        events = [response_event(metric="ces", scale=5, score=s) for s in range(1, 6)]
        (c,) = fold(events).values()
        assert (c.n, c.score_sum, c.score_sq_sum) == (5, 15, 55)
        assert scoring.margin_of_error("ces", c) == pytest.approx(1.385929, abs=1e-5)

    def test_ces_scales_never_share_a_bucket(self) -> None:
        events = [response_event(metric="ces", scale=5, score=3),
                  response_event(metric="ces", scale=7, score=3)]  # fmt: skip
        assert len(fold(events)) == 2


class TestBuckets:
    def test_bucket_is_the_utc_hour_of_occurrence(self) -> None:
        moment = datetime.fromisoformat("2026-11-22T10:45:12+05:30")
        assert bucket_start(moment) == datetime(2026, 11, 22, 5, 0, tzinfo=UTC)

    def test_late_event_lands_in_the_hour_it_occurred(self) -> None:
        late = response_event(occurred_at="2026-11-01T23:59:59+00:00")
        (key,) = fold([late])
        assert key.bucket_start == datetime(2026, 11, 1, 23, 0, tzinfo=UTC)

    def test_counts_add_up_across_batches(self) -> None:
        events = [response_event(score=s, channel=ch) for s in range(11) for ch in ("web", "sms")]
        whole = fold(events)
        halves = [fold(events[:7]), fold(events[7:])]
        for key, counts in whole.items():
            summed = Counts()
            for half in halves:
                summed.add(half.get(key, Counts()))
            assert summed == counts
