"""Churn reasons and quality metrics on delayed labels."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.core.churn import QualityTracker, roc_auc, top_reasons
from streamproc.core.rhythm_features import CHURN_FEATURES


def _features(**values: float) -> dict[str, float]:
    f = dict.fromkeys(CHURN_FEATURES, 0.0)
    f.update(values)
    return f


def test_reasons_are_the_risk_raising_contributions_never_the_horizon() -> None:
    f = _features(log_days_since_order=math.log1p(41), log_overdue=math.log1p(2.5),
                  log_aov=math.log1p(24.5), log_orders=math.log1p(4),
                  log_horizon_days=math.log(132))
    contrib = np.zeros(len(CHURN_FEATURES))
    for name, c in [("log_horizon_days", 5.0), ("log_days_since_order", 2.0),
                    ("log_overdue", 1.0), ("log_aov", 0.5), ("log_orders", -3.0)]:
        contrib[CHURN_FEATURES.index(name)] = c
    reasons = top_reasons(contrib, CHURN_FEATURES, f, "USD")
    assert [(n, t) for n, _, t in reasons] == [
        ("log_days_since_order", "no order for 41 days"),
        ("log_overdue", "silent for 2.5 times the usual gap between orders"),
        ("log_aov", "average order 24.50 USD"),
    ]
    # Factors that lower the risk are never reasons, whatever their size.
    assert top_reasons(-np.abs(contrib), CHURN_FEATURES, f, "USD") == []


def test_amounts_are_in_the_currency_of_the_orders() -> None:
    f = _features(log_aov=math.log1p(81.0))
    contrib = np.zeros(len(CHURN_FEATURES))
    contrib[CHURN_FEATURES.index("log_aov")] = 1.0
    for currency in ("USD", "GBP"):
        [(_, _, text)] = top_reasons(contrib, CHURN_FEATURES, f, currency)
        assert text == f"average order 81.00 {currency}"
    [(_, _, text)] = top_reasons(contrib, CHURN_FEATURES, f, None)
    assert text == "average order 81.00"  # no order yet: no currency is made up


@given(st.lists(st.tuples(st.sampled_from([0.1, 0.2, 0.5, 0.9]), st.integers(0, 1)), min_size=2))
def test_roc_auc_matches_pairwise_definition(pairs: list[tuple[float, int]]) -> None:
    scores = [s for s, _ in pairs]
    labels = [y for _, y in pairs]
    pos = [s for s, y in pairs if y]
    neg = [s for s, y in pairs if not y]
    if not pos or not neg:
        assert math.isnan(roc_auc(scores, labels))
        return
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    assert roc_auc(scores, labels) == pytest.approx(wins / (len(pos) * len(neg)))


def test_quality_tracker_reports_metrics_over_window() -> None:
    q = QualityTracker(threshold=0.5, window=4)
    assert q.summary() == {"labels_seen": 0.0, "positives_seen": 0.0, "window": 0.0}
    for p, y in [(0.9, 0), (0.9, 1), (0.8, 1), (0.2, 0), (0.6, 0)]:
        q.update(p, y)
    s = q.summary()
    assert s["labels_seen"] == 5.0
    assert s["window"] == 4.0
    assert s["base_rate"] == pytest.approx(0.5)
    assert s["predicted_positive_rate"] == pytest.approx(0.75)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(1.0)
    assert s["roc_auc"] == pytest.approx(1.0)
    assert s["log_loss"] > 0
    assert s["brier"] == pytest.approx((0.1**2 + 0.2**2 + 0.2**2 + 0.6**2) / 4)


@pytest.mark.parametrize("label", [0, 1])
def test_quality_figures_are_absent_until_both_classes_are_seen(label: int) -> None:
    q = QualityTracker(threshold=0.5, window=100)
    for _ in range(20):
        q.update(0.9, label)
    s = q.summary()
    assert s["base_rate"] == float(label)
    for key in ("roc_auc", "log_loss", "brier", "recall"):
        assert key not in s  # absent: not NaN, not a made-up perfect score
    q.update(0.1, 1 - label)
    s = q.summary()
    assert all(math.isfinite(s[k]) for k in ("roc_auc", "log_loss", "brier"))


def test_precision_is_absent_while_nothing_reaches_the_threshold() -> None:
    q = QualityTracker(threshold=0.95, window=10)
    for p, y in [(0.2, 0), (0.3, 1), (0.4, 1)]:
        q.update(p, y)
    s = q.summary()
    assert "precision" not in s
    assert s["recall"] == 0.0
    assert s["predicted_positive_rate"] == 0.0
