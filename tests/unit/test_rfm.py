"""Online RFM scores and tiers."""

from __future__ import annotations

import math
import random

import pytest

from streamproc.core.rfm import TIERS, RFMCuts, RFMLearner, rfm_values, tier_name


def feats(recency: float, orders: float, spend: float) -> dict[str, float]:
    return {
        "recency_days": recency,
        "log_orders": math.log1p(orders),
        "log_net_spend": math.log1p(spend),
    }


def test_rfm_values_round_trip_business_units() -> None:
    assert rfm_values(feats(3.5, 3, 120.5)) == (3.5, 3.0, 120.5)


def test_scores_use_cut_points() -> None:
    cuts = RFMCuts((2.0, 7.0, 20.0, 60.0), (0.0, 1.0, 3.0, 8.0), (0.0, 50.0, 200.0, 800.0))
    assert cuts.scores(0.0, 20.0, 5000.0) == (5, 5, 5)
    assert cuts.scores(100.0, 0.0, 0.0) == (1, 1, 1)
    assert cuts.scores(7.0, 1.0, 50.0) == (4, 2, 2)  # on a cut counts as the better side


@pytest.mark.parametrize(
    ("rfm", "tier"),
    [
        ((5, 5, 5), "champions"),
        ((3, 5, 2), "loyal"),
        ((1, 5, 5), "can't lose"),
        ((2, 3, 2), "at risk"),
        ((5, 2, 2), "potential loyalist"),
        ((5, 1, 1), "new"),
        ((2, 1, 1), "hibernating"),
        ((1, 1, 1), "lost"),
    ],
)
def test_tiers(rfm: tuple[int, int, int], tier: str) -> None:
    assert tier_name(*rfm) == tier


def test_every_score_combination_has_a_known_tier() -> None:
    names = {tier_name(r, f, m) for r in range(1, 6) for f in range(1, 6) for m in range(1, 6)}
    assert names <= set(TIERS)


def test_learner_tracks_quintiles_and_freezes_ascending() -> None:
    rng = random.Random(1)
    learner = RFMLearner()
    assert learner.freeze() == RFMCuts()
    for _ in range(5000):
        learner.learn(feats(rng.uniform(0, 100), rng.randint(0, 10), rng.uniform(0, 1000)))
    cuts = learner.freeze()
    for c, expected in zip(cuts.recency, (20, 40, 60, 80), strict=True):
        assert abs(c - expected) < 5
    for dim in (cuts.recency, cuts.frequency, cuts.monetary):
        assert list(dim) == sorted(dim)
    (r, f, m), tier = cuts.score_features(feats(1.0, 10, 990.0))
    assert (r, f, m) == (5, 5, 5)
    assert tier == "champions"
