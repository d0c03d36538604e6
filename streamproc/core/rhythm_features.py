"""Churn features that mean something on purchase-only streams, with exact readable reasons.

What predicts that a buyer will not order again is how long they have been silent
*compared with their own rhythm*: BG/NBD's P(alive) is a function of the number of repeat
orders, the time of the last one and the tenure. These features (computed by
:func:`streamproc.core.features.model_features`) give a linear model the same information
on log scales, where a weight reads as "twice as long silent -> odds x k":

- ``log_days_since_order``: silence (days since the last order, or since first seen);
- ``log_orders``: orders to date (frequency);
- ``log_tenure_days``: days since the first order (the exposure the frequency is over);
- ``log_overdue``: silence over the customer's expected gap between orders, where the
  expected gap is their own mean gap shrunk towards the base's typical gap by one pseudo
  gap (a customer with one order gets the typical gap; one with many, their own);
- ``log_aov``: average order value (big spenders churn differently from small ones);
- ``log_horizon_days``: the horizon the snapshot is labelled against (the same for every
  customer scored under one bundle, so never a reason).

Every feature is a fixed transform of profile fields (no learned scaling inside), so a
linear model's per-feature contribution is exact, and :func:`reason_text` states the
feature's value in business units in the currency of the orders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

RHYTHM_FEATURES: Final[tuple[str, ...]] = (
    "log_days_since_order",
    "log_orders",
    "log_tenure_days",
    "log_overdue",
    "log_aov",
)
#: What the churn and value models read.
CHURN_FEATURES: Final[tuple[str, ...]] = (*RHYTHM_FEATURES, "log_horizon_days")

#: Pseudo gaps of the base's typical gap mixed into each customer's own mean gap.
PRIOR_GAPS: Final = 1.0


def expected_gap_days(orders: float, span_days: float, typical_gap_days: float) -> float:
    """A customer's expected gap between orders: own mean gap shrunk towards the base's.

    ``span_days`` is the time from the first to the last order; with ``orders - 1`` gaps
    in it, the estimate is ``(span + PRIOR_GAPS * typical) / (orders - 1 + PRIOR_GAPS)``.
    """
    if typical_gap_days <= 0:
        raise ValueError("typical_gap_days must be > 0")
    gaps = max(0.0, orders - 1.0)
    return (max(0.0, span_days) + PRIOR_GAPS * typical_gap_days) / (gaps + PRIOR_GAPS)


def reason_text(feature: str, f: Mapping[str, float], currency: str | None = None) -> str:
    """A value of one of :data:`RHYTHM_FEATURES` in business units (``f``: the feature dict).

    Amounts are stated in ``currency`` (the orders'), or without a unit when unknown.
    """
    if feature not in RHYTHM_FEATURES:
        raise ValueError(f"unknown rhythm feature {feature!r}")
    v = math.expm1(f[feature])
    if feature == "log_days_since_order":
        days = round(v)
        return f"no order for {days} day{'s' if days != 1 else ''}"
    if feature == "log_orders":
        n = round(v)
        return f"{n} order{'s' if n != 1 else ''} in total"
    if feature == "log_tenure_days":
        days = round(v)
        return f"first order {days} day{'s' if days != 1 else ''} ago"
    if feature == "log_overdue":
        return f"silent for {v:.1f} times the usual gap between orders"
    unit = f" {currency}" if currency else ""  # log_aov
    return f"average order {v:.2f}{unit}"
