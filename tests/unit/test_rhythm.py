"""The purchase-rhythm horizon: quantile accuracy, order independence, the fallback rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamproc.core.rhythm import (
    FALLBACK_HORIZON_DAYS,
    RATIO,
    GapQuantile,
    horizon_days,
)

gaps = st.lists(st.floats(min_value=1.0, max_value=3000.0), min_size=1, max_size=300)


@given(gaps, st.sampled_from([0.5, 0.75, 0.9]))
def test_quantile_is_within_one_bin_of_the_exact_one(values: list[float], q: float) -> None:
    hist = GapQuantile()
    for v in values:
        hist.add(v)
    exact = float(np.quantile(values, q, method="inverted_cdf"))
    got = hist.quantile(q)
    assert got is not None
    assert exact <= got * (1 + 1e-9) <= exact * RATIO * (1 + 1e-9)


@settings(max_examples=50)
@given(gaps, st.randoms(use_true_random=False))
def test_arrival_order_and_sharding_do_not_change_the_answer(values: list[float], rnd) -> None:
    one = GapQuantile()
    for v in values:
        one.add(v)
    shuffled = values[:]
    rnd.shuffle(shuffled)
    a, b = GapQuantile(), GapQuantile()
    for i, v in enumerate(shuffled):
        (a if i % 2 else b).add(v)
    a.merge(b)
    assert a.counts == one.counts
    assert a.n == one.n


def test_gaps_under_a_day_are_the_same_visit() -> None:
    hist = GapQuantile()
    assert hist.add(0.0) is False
    assert hist.add(0.5) is False
    assert hist.n == 0
    assert hist.quantile(0.9) is None
    assert hist.typical_gap_days() == FALLBACK_HORIZON_DAYS
    with pytest.raises(ValueError, match="finite"):
        hist.add(math.inf)


def test_horizon_uses_the_fallback_until_enough_gaps_then_the_quantile() -> None:
    hist = GapQuantile()
    for _ in range(199):
        hist.add(120.0)
    assert horizon_days(hist) == FALLBACK_HORIZON_DAYS
    hist.add(120.0)
    h = horizon_days(hist)
    assert 120.0 <= h <= math.ceil(120.0 * RATIO)
    assert h == int(h)  # whole days, so the published horizon reads cleanly


def test_operator_horizon_wins_and_the_fallback_is_a_floor() -> None:
    hist = GapQuantile()
    for _ in range(500):
        hist.add(2.0)  # daily buyers
    assert horizon_days(hist) == FALLBACK_HORIZON_DAYS
    assert horizon_days(hist, operator_days=45.0) == 45.0
