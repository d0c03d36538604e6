"""Value tiers and lifecycle stages as plain functions."""

from __future__ import annotations

import math

import pytest

from streamproc.core.features import DAY
from streamproc.core.lifecycle import (
    StageState,
    decide_stage,
    lifecycle_stage,
    too_new_to_judge,
    value_cuts,
    value_tier,
)

H = 30 * DAY


def feats(orders: float, tenure_days: float) -> dict[str, float]:
    return {"log_orders": math.log1p(orders), "tenure_days": tenure_days}


def test_value_cuts_split_a_sample_at_the_median_and_the_80th_percentile() -> None:
    cuts = value_cuts([float(v) for v in range(101)])
    assert cuts == (50.0, 80.0)
    assert [value_tier(v, cuts) for v in (0.0, 49.9, 50.0, 79.9, 80.0, 500.0)] == [
        "low", "low", "medium", "medium", "high", "high"]
    assert value_cuts([]) == (0.0, 0.0)
    assert value_tier(5.0, (0.0, 0.0)) == "medium"  # no spread yet: nobody is high
    assert value_tier(0.0, (0.0, 0.0)) == "low"


@pytest.mark.parametrize(("orders", "tenure", "new"), [
    (0, 3.0, True), (1, 29.0, True), (2, 3.0, False), (1, 31.0, False), (0, 45.0, False)])
def test_too_new_to_judge_is_within_one_horizon_and_at_most_one_order(
        orders: float, tenure: float, new: bool) -> None:
    assert too_new_to_judge(feats(orders, tenure), H) is new


def test_stage_definitions() -> None:
    old = feats(3, 200.0)
    t = 1000 * DAY

    def stage(prev: StageState | None, last: float | None, risk: bool = False,
              f: dict[str, float] = old) -> str:
        return lifecycle_stage(prev, at=t, last_activity=last, features=f, at_risk=risk,
                               horizon_s=H)

    assert stage(None, t - DAY) == "active"
    assert stage(None, t - DAY, risk=True) == "at_risk"
    assert stage(None, t - 31 * DAY, risk=True) == "lapsed"
    assert stage(None, t - DAY, f=feats(1, 2.0), risk=True) == "new"
    assert stage(StageState("lapsed", t - 90 * DAY), t - DAY) == "won_back"
    assert stage(StageState("won_back", t - 10 * DAY), t - DAY) == "won_back"
    assert stage(StageState("won_back", t - 31 * DAY), t - DAY) == "active"
    assert stage(StageState("lapsed", t - 90 * DAY), t - DAY, risk=True) == "at_risk"


def test_decide_stage_reports_changes_only() -> None:
    st, change = decide_stage(None, "new", 1.0)
    assert change is not None
    assert (change.previous, change.stage) == (None, "new")
    same, none = decide_stage(st, "new", 2.0)
    assert (same, none) == (st, None)
    moved, change = decide_stage(st, "active", 3.0)
    assert change is not None
    assert (change.previous, change.stage, moved.since) == ("new", "active", 3.0)
