"""Value tiers and lifecycle stages of a customer, as pure functions of plain values.

Value tier: where a customer's expected value over the churn horizon falls against the
cut points the trainer learned from its sample of recent customers and froze in the
bundle (:func:`value_cuts`): ``high`` at or above the 80th percentile, ``medium`` at or
above the median, ``low`` below.

Lifecycle stage, with H the churn horizon, as of one event time ``t`` (see the README):

- ``new``: first seen less than H ago and at most one order: too new to judge, never
  alerted;
- ``lapsed``: no qualifying activity for more than H (churned by the churn definition);
- ``at_risk``: not lapsed, churn probability at or above the alert threshold;
- ``won_back``: was lapsed, came back, and the comeback is less than H ago;
- ``active``: everyone else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from streamproc.core.outputs import LifecycleStage, ValueTier

__all__ = ["LifecycleStage", "StageChange", "StageState", "ValueTier", "decide_stage",
           "lifecycle_stage", "too_new_to_judge", "value_cuts", "value_tier"]

_DAY: Final = 86_400.0
#: Percentiles of expected value that separate low | medium | high.
TIER_PERCENTILES: Final = (50.0, 80.0)


def value_cuts(expected_values: Sequence[float]) -> tuple[float, float]:
    """The (median, 80th percentile) of a sample of expected values ((0, 0) if empty)."""
    if not expected_values:
        return (0.0, 0.0)
    lo, hi = np.percentile(np.asarray(expected_values, dtype=np.float64), TIER_PERCENTILES)
    return (round(float(lo), 2), round(float(hi), 2))


def value_tier(expected_value: float, cuts: tuple[float, float]) -> ValueTier:
    """``high`` at or above the upper cut, ``medium`` at or above the lower, else ``low``.

    With no spread yet (all cuts 0) nobody is high: a positive value is ``medium``.
    """
    lo, hi = cuts
    if hi > 0.0 and expected_value >= hi:
        return "high"
    if expected_value > 0.0 and expected_value >= lo:
        return "medium"
    return "low"


def too_new_to_judge(features: Mapping[str, float], horizon_s: float) -> bool:
    """First seen less than a horizon ago with at most one order: no history to judge by."""
    orders = math.expm1(features["log_orders"])
    return features["tenure_days"] * _DAY < horizon_s and orders < 1.5


@dataclass(frozen=True, slots=True)
class StageState:
    """The stage last published for a customer and since when (event time)."""

    stage: LifecycleStage
    since: float


@dataclass(frozen=True, slots=True)
class StageChange:
    """A customer's lifecycle stage changed (``previous`` None on the first one)."""

    previous: LifecycleStage | None
    stage: LifecycleStage
    changed_at: float


def lifecycle_stage(previous: StageState | None, *, at: float, last_activity: float | None,
                    features: Mapping[str, float], at_risk: bool,
                    horizon_s: float) -> LifecycleStage:
    """The stage as of event time ``at`` (definitions in the module docstring)."""
    if last_activity is not None and at - last_activity > horizon_s:
        return "lapsed"
    if too_new_to_judge(features, horizon_s):
        return "new"
    if at_risk:
        return "at_risk"
    if previous is not None:
        came_back = previous.stage == "lapsed" and last_activity is not None
        if came_back or (previous.stage == "won_back" and at - previous.since < horizon_s):
            return "won_back"
    return "active"


def decide_stage(state: StageState | None, stage: LifecycleStage,
                 at: float) -> tuple[StageState, StageChange | None]:
    """Keep the state if the stage is unchanged; else a change to publish."""
    if state is not None and state.stage == stage:
        return state, None
    return StageState(stage, at), StageChange(None if state is None else state.stage, stage, at)
