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


class TestMean:
    def test_mean_and_its_margin(self) -> None:
        # Scores 1..5: sum 15, sum of squares 55, mean 3.
        # Sample variance (55 − 15²/5) / 4 = 10 / 4 = 2.5; sd/sqrt(n) = sqrt(2.5 / 5) =
        # sqrt(0.5) = 0.707107; × 1.96 = 1.385929.
        assert scoring.mean(Counts(n=5, score_sum=15)) == pytest.approx(3.0)
        assert scoring.mean_margin_of_error(5, 15, 55) == pytest.approx(1.385929, abs=1e-5)

    def test_one_answer_has_no_spread_to_speak_of(self) -> None:
        assert scoring.mean_margin_of_error(1, 4, 16) is None

    def test_ces_estimate_has_no_margin(self) -> None:
        # The buckets keep no sum of squares: the CES margin is unknown, not zero.
        est = scoring.estimate(Metric.CES, Counts(n=4, score_sum=22, easy=3))
        assert est == Estimate(value=5.5, margin=None, n=4)


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
        ces = change(Estimate(5.5, None, 40), Estimate(4.0, None, 40))
        assert (ces.delta, ces.margin, ces.significant) == (1.5, None, False)


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
        body = scoring.summarise(Metric.CES, Counts(n=4, score_sum=22, easy=3), 7, 1)
        assert (body["score"], body["scale"], body["easy_share"], body["margin"]) == (
            5.5,
            7,
            75.0,
            None,
        )
