"""Purchase-rhythm churn features, from real profile ops, and their reasons."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from streamproc.core.features import (
    DAY,
    MODEL_FEATURES,
    InMemoryProfiles,
    ProfileView,
    event_lane,
    event_ops,
    model_features,
)
from streamproc.core.rhythm_features import (
    CHURN_FEATURES,
    RHYTHM_FEATURES,
    expected_gap_days,
    reason_text,
)


def _profile(order_days: list[float], totals: list[float] | None = None) -> InMemoryProfiles:
    store = InMemoryProfiles.empty(clock=lambda: 0.0)
    for i, day in enumerate(order_days):
        total = (totals or [10.0] * len(order_days))[i]
        ev = SimpleNamespace(order_id=f"o{i}", type="order", total=total, session_id=None,
                             currency="USD", items=[SimpleNamespace(quantity=1, category=None)])
        store.apply("c", f"e{i}", event_ops(ev, day * DAY), day * DAY, event_lane(ev))
    return store


def _features(order_days: list[float], as_of_day: float, typical: float = 60.0,
              totals: list[float] | None = None) -> dict[str, float]:
    view = ProfileView("c", as_of_day * DAY, _profile(order_days, totals).states["c"])
    return model_features(view, typical_gap_days=typical, horizon_days=90.0)


def test_features_are_the_declared_ones_and_finite() -> None:
    f = _features([0.0, 30.0, 50.0], 100.0)
    assert tuple(f) == MODEL_FEATURES
    assert set(CHURN_FEATURES) <= set(f)
    assert set(RHYTHM_FEATURES) < set(CHURN_FEATURES)
    assert all(math.isfinite(v) for v in f.values())
    assert f["log_horizon_days"] == pytest.approx(math.log(90.0))
    assert math.expm1(f["log_days_since_order"]) == pytest.approx(50.0)
    assert math.expm1(f["log_orders"]) == pytest.approx(3.0)
    assert math.expm1(f["log_tenure_days"]) == pytest.approx(100.0)
    assert math.expm1(f["log_aov"]) == pytest.approx(10.0)


def test_one_order_customer_is_judged_against_the_base_rhythm() -> None:
    f = _features([0.0], 90.0, typical=60.0)
    assert math.expm1(f["log_overdue"]) == pytest.approx(90.0 / 60.0)


def test_a_regular_buyer_is_judged_against_their_own_rhythm() -> None:
    # Ten orders a week apart: expected gap (63 + 60) / (9 + 1) = 12.3 days.
    weekly = _features([7.0 * k for k in range(10)], 63.0 + 30.0, typical=60.0)
    assert expected_gap_days(10, 63.0, 60.0) == pytest.approx(12.3)
    assert math.expm1(weekly["log_overdue"]) == pytest.approx(30.0 / 12.3)
    # The same silence is far more overdue for the weekly buyer than for a one-off buyer.
    one_off = _features([63.0], 93.0, typical=60.0)
    assert weekly["log_overdue"] > one_off["log_overdue"]


def test_expected_gap_rejects_a_non_positive_prior() -> None:
    with pytest.raises(ValueError, match="typical_gap_days"):
        expected_gap_days(3, 10.0, 0.0)


def test_reasons_read_in_business_units_with_plurals_and_the_order_currency() -> None:
    f = _features([0.0], 1.0, totals=[25.5])
    assert reason_text("log_days_since_order", f) == "no order for 1 day"
    assert reason_text("log_orders", f) == "1 order in total"
    assert reason_text("log_aov", f, "USD") == "average order 25.50 USD"
    g = _features([0.0, 10.0], 40.0)
    assert reason_text("log_days_since_order", g) == "no order for 30 days"
    assert reason_text("log_orders", g) == "2 orders in total"
    assert reason_text("log_overdue", g).startswith("silent for ")
    with pytest.raises(ValueError, match="unknown"):
        reason_text("views_7d", g)


def test_the_profile_keeps_the_currency_of_the_latest_order() -> None:
    view = ProfileView("c", 5 * DAY, _profile([0.0, 1.0]).states["c"])
    assert view.currency == "USD"
    assert ProfileView("c", 0.0, {}).currency is None
