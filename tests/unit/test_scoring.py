"""shared.scoring against values worked out by hand (in the comments), not by the code."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared import scoring
from shared.events import Metric
from shared.scoring import Counts, Estimate, change

# 50 promoters, 30 passives, 20 detractors (score_sum is not used by NPS).
NPS_100 = Counts(n=100, promoters=50, passives=30, detractors=20)


class TestNps:
    def test_score_and_margin(self) -> None:
        # NPS = 50% − 20% = 30.
        # p + d − (p − d)² = 0.5 + 0.2 − 0.3² = 0.61; 0.61 / 100 = 0.0061;
        # sqrt(0.0061) = 0.0781025; × 1.96 × 100 = 15.30809.
        assert scoring.nps(NPS_100) == pytest.approx(30.0)
        assert scoring.nps_margin_of_error(NPS_100) == pytest.approx(15.30809, abs=1e-4)

    def test_all_promoters_has_no_spread(self) -> None:
        # p = 1, d = 0: 1 − 1² = 0.
        c = Counts(n=10, promoters=10)
        assert (scoring.nps(c), scoring.nps_margin_of_error(c)) == (100.0, 0.0)

    def test_nothing_counted_has_no_score(self) -> None:
        assert scoring.nps(Counts()) is None
        assert scoring.nps_margin_of_error(Counts()) is None


class TestCsat:
    def test_wald_margin(self) -> None:
        # 80 of 100 satisfied: 80%; sqrt(0.8 × 0.2 / 100) = sqrt(0.0016) = 0.04; × 196 = 7.84.
        c = Counts(n=100, satisfied=80)
        assert scoring.csat(c) == pytest.approx(80.0)
        assert scoring.csat_margin_of_error(c) == pytest.approx(7.84)

    def test_small_sample(self) -> None:
        # 3 of 4: 75%; sqrt(0.75 × 0.25 / 4) = sqrt(0.046875) = 0.216506; × 196 = 42.43524.
        assert scoring.proportion_margin_of_error(3, 4) == pytest.approx(42.43524, abs=1e-4)
        assert scoring.proportion_margin_of_error(0, 0) is None


class TestWilson:
    def test_an_interval_off_centre_inside_0_to_100(self) -> None:
        # 3 of 4: (0.75 + 0.4802 ± 1.96·√(0.046875 + 0.060025)) / 1.9604 = 30.06% to 95.44%.
        low, high = scoring.wilson_interval(3, 4) or (0.0, 0.0)
        assert low == pytest.approx(30.0636, abs=1e-3)
        assert high == pytest.approx(95.4414, abs=1e-3)

    @pytest.mark.parametrize(
        ("part", "n", "low", "high"),
        [
            # None of 5 repeat: 0% to z²/(n + z²) = 3.8416 / 8.8416, not "0% ± 0".
            (0, 5, 0.0, 43.4496),
            (5, 5, 56.5504, 100.0),
            # One customer: 20.65% to 100%, never certain.
            (1, 1, 20.6543, 100.0),
            (0, 1, 0.0, 79.3457),
        ],
    )
    def test_the_bounds_are_never_zero_wide(
        self, part: int, n: int, low: float, high: float
    ) -> None:
        found = scoring.wilson_interval(part, n)
        assert found is not None
        assert found[0] == pytest.approx(low, abs=1e-3)
        assert found[1] == pytest.approx(high, abs=1e-3)

    def test_nothing_to_measure(self) -> None:
        assert scoring.wilson_interval(0, 0) is None


class TestMean:
    def test_mean_and_its_margin(self) -> None:
        # Scores 1..5: sum 15, sum of squares 55, mean 3.
        # Sample variance (55 − 15²/5) / 4 = 10 / 4 = 2.5; sd/sqrt(n) = sqrt(2.5 / 5) =
        # sqrt(0.5) = 0.707107; × 1.96 = 1.385929.
        assert scoring.mean(Counts(n=5, score_sum=15)) == pytest.approx(3.0)
        assert scoring.mean_margin_of_error(5, 15, 55) == pytest.approx(1.385929, abs=1e-5)

    def test_one_answer_has_no_spread_to_speak_of(self) -> None:
        assert scoring.mean_margin_of_error(1, 4, 16) is None


# CES answers 1, 2, 3, 4, 5: n 5, sum 15, sum of squares 1 + 4 + 9 + 16 + 25 = 55; mean 3.
# Sample sd: sqrt(((1−3)² + (2−3)² + 0 + (4−3)² + (5−3)²) / 4) = sqrt(10 / 4) = 1.581139;
# margin 1.96 × 1.581139 / sqrt(5) = 1.96 × 0.707107 = 1.385929.
CES_1_TO_5 = Counts(n=5, score_sum=15, score_sq_sum=55, easy=2)


class TestCes:
    def test_estimate_carries_the_margin_of_the_mean(self) -> None:
        est = scoring.estimate(Metric.CES, CES_1_TO_5)
        assert est.value == pytest.approx(3.0)
        assert est.margin == pytest.approx(1.385929, abs=1e-5)
        assert est.n == 5

    def test_equal_answers_have_no_spread(self) -> None:
        # 4, 4, 4: sum 12, squares 48; variance (48 − 144/3) / 2 = 0.
        est = scoring.estimate(Metric.CES, Counts(n=3, score_sum=12, score_sq_sum=48))
        assert (est.value, est.margin) == (4.0, 0.0)

    def test_below_two_answers_the_margin_is_unknown(self) -> None:
        assert scoring.estimate(Metric.CES, Counts(n=1, score_sum=4, score_sq_sum=16)) == (
            Estimate(value=4.0, margin=None, n=1)
        )
        assert scoring.estimate(Metric.CES, Counts()) == Estimate(None, None, 0)

    def test_squares_add_up_with_the_counts(self) -> None:
        # {1, 2} and {3, 4, 5}: squares 5 and 50 make the 55 of 1..5.
        c = Counts(n=2, score_sum=3, score_sq_sum=5)
        c.add(Counts(n=3, score_sum=12, score_sq_sum=50))
        assert c == Counts(n=5, score_sum=15, score_sq_sum=55)

    def test_a_change_beyond_both_margins_is_significant(self) -> None:
        # Before: 5, 5, 5, 5, 4: sum 24, squares 116, mean 4.8; variance (116 − 24²/5) / 4 =
        # (116 − 115.2) / 4 = 0.2; margin 1.96 × sqrt(0.2 / 5) = 1.96 × 0.2 = 0.392.
        # 3 − 4.8 = −1.8 against sqrt(1.385929² + 0.392²) = sqrt(2.074463) = 1.440300.
        before = scoring.estimate(Metric.CES, Counts(n=5, score_sum=24, score_sq_sum=116))
        assert before.margin == pytest.approx(0.392, abs=1e-6)
        got = change(scoring.estimate(Metric.CES, CES_1_TO_5), before, min_n=5)
        assert got.delta == pytest.approx(-1.8)
        assert got.margin == pytest.approx(1.440300, abs=1e-5)
        assert got.significant


class TestShare:
    def test_percentage(self) -> None:
        assert scoring.share(1, 4) == 25.0
        assert scoring.share(0, 0) is None


class TestChange:
    # Margins 3 and 4 combine to 5: 1.96·sqrt(se₁² + se₂²) = sqrt(m₁² + m₂²) = sqrt(9 + 16).
    def test_beyond_the_combined_margin_is_significant(self) -> None:
        got = change(Estimate(80.0, 3.0, 100), Estimate(74.0, 4.0, 100))
        assert got.delta == pytest.approx(6.0)
        assert got.margin == pytest.approx(5.0)
        assert got.significant

    def test_within_it_is_not(self) -> None:
        got = change(Estimate(70.0, 3.0, 100), Estimate(74.0, 4.0, 100))
        assert got.delta == pytest.approx(-4.0)
        assert not got.significant

    def test_a_fall_is_significant_too(self) -> None:
        assert change(Estimate(68.0, 3.0, 100), Estimate(74.0, 4.0, 100)).significant

    def test_csat_periods_worked_through(self) -> None:
        # 80/100 (±7.84) against 60/100: sqrt(0.6 × 0.4 / 100) = 0.0489898, ±9.60200.
        # Combined: sqrt(7.84² + 9.602²) = sqrt(61.4656 + 92.1984) = sqrt(153.664) = 12.39613.
        now = scoring.estimate(Metric.CSAT, Counts(n=100, satisfied=80))
        before = scoring.estimate(Metric.CSAT, Counts(n=100, satisfied=60))
        got = change(now, before)
        assert got.margin == pytest.approx(12.39613, abs=1e-4)
        assert got.delta == pytest.approx(20.0)
        assert got.significant

    def test_a_period_below_min_n_is_never_significant(self) -> None:
        # One satisfied answer against one unsatisfied: both Wald margins are 0.
        now = scoring.estimate(Metric.CSAT, Counts(n=1, satisfied=1))
        before = scoring.estimate(Metric.CSAT, Counts(n=1, satisfied=0))
        assert change(now, before).significant
        assert not change(now, before, min_n=30).significant

    def test_unknown_scores_or_margins(self) -> None:
        assert change(Estimate(None, None, 0), Estimate(10.0, 1.0, 5)) == scoring.Change(
            None, None, False
        )
        unknown = change(Estimate(5.5, None, 40), Estimate(4.0, None, 40))
        assert (unknown.delta, unknown.margin, unknown.significant) == (1.5, None, False)


class TestWindows:
    def test_window_starts_at_the_top_of_the_hour(self) -> None:
        now = datetime(2026, 11, 22, 10, 45, 12, tzinfo=UTC)
        assert scoring.window_start("7d", now) == datetime(2026, 11, 15, 10, tzinfo=UTC)
        assert scoring.window_start("24h", now) == datetime(2026, 11, 21, 10, tzinfo=UTC)

    def test_bucket_of_an_offset_time(self) -> None:
        # 10:45 at +05:30 is 05:15 UTC.
        moment = datetime.fromisoformat("2026-11-22T10:45:12+05:30")
        assert scoring.bucket_start(moment) == datetime(2026, 11, 22, 5, tzinfo=UTC)


class TestSummarise:
    def test_nps_fields(self) -> None:
        body = scoring.summarise(Metric.NPS, NPS_100, None, min_n=30)
        assert body["score"] == pytest.approx(30.0)
        assert body["margin"] == body["margin_of_error"] == pytest.approx(15.30809, abs=1e-4)
        assert (body["promoter_share"], body["detractor_share"]) == (50.0, 20.0)
        assert body["insufficient"] is False

    def test_csat_fields(self) -> None:
        # 3 satisfied of 4, scores summing to 15: mean 3.75; n below min_n.
        body = scoring.summarise(Metric.CSAT, Counts(n=4, score_sum=15, satisfied=3), None, 5)
        assert (body["score"], body["mean"], body["satisfied"]) == (75.0, 3.75, 3)
        assert body["margin"] == pytest.approx(42.43524, abs=1e-4)
        assert "margin_of_error" not in body
        assert body["insufficient"] is True

    def test_ces_fields(self) -> None:
        body = scoring.summarise(Metric.CES, CES_1_TO_5, 5, 1)
        assert (body["score"], body["scale"], body["easy"], body["easy_share"]) == (
            3.0,
            5,
            2,
            40.0,
        )
        assert body["margin"] == pytest.approx(1.385929, abs=1e-5)
        assert "margin_of_error" not in body
