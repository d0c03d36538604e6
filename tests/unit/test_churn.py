"""Churn model freezing, reasons and quality metrics."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.core.churn import (
    FrozenLogit,
    QualityTracker,
    feature_row,
    make_churn_model,
    reason_text,
    roc_auc,
    top_reasons,
)
from streamproc.core.features import MODEL_FEATURES


def example(rng: random.Random) -> tuple[dict[str, float], int]:
    x = {f: rng.uniform(0, 3) for f in MODEL_FEATURES}
    x["recency_days"] = rng.uniform(0, 60)
    y = int(x["recency_days"] + rng.gauss(0, 5) > 20)
    return x, y


def test_frozen_logit_matches_the_river_pipeline() -> None:
    rng = random.Random(2)
    model = make_churn_model("logreg")
    for _ in range(2000):
        x, y = example(rng)
        model.learn_one(x, y)
    frozen = FrozenLogit.from_pipeline(model)
    xs = [example(rng)[0] for _ in range(50)]
    probs = frozen.probabilities(frozen.contributions(np.array([feature_row(x) for x in xs])))
    expected = [model.predict_proba_one(x)[True] for x in xs]
    assert np.allclose(probs, expected, atol=1e-9)
    assert frozen.weights[MODEL_FEATURES.index("recency_days")] > 0


def test_reasons_are_top_positive_contributions_in_business_terms() -> None:
    f = dict.fromkeys(MODEL_FEATURES, 0.0)
    f.update(
        recency_days=12.0,
        days_since_last_order=41.0,
        log_orders=math.log1p(4),
        cart_abandonment_rate=0.8,
        orders_30d=math.log1p(2),
        orders_per_30d_tenure=4.0,
        tenure_days=90.0,
    )
    contrib = np.zeros(len(MODEL_FEATURES))
    for name, c in [
        ("days_since_last_order", 2.0),
        ("cart_abandonment_rate", 1.0),
        ("orders_30d", 0.5),
        ("recency_days", 0.1),
        ("tenure_days", -3.0),
    ]:
        contrib[MODEL_FEATURES.index(name)] = c
    reasons = top_reasons(contrib, f)
    assert [(n, t) for n, _, t in reasons] == [
        ("days_since_last_order", "no order for 41 days"),
        ("cart_abandonment_rate", "cart abandonment 80%"),
        ("orders_30d", "2 orders in the last 30 days (down)"),
    ]
    assert reason_text("recency_days", f) == "no visits for 12 days"
    assert top_reasons(-np.abs(contrib), f) == []


def test_reasons_use_the_singular_for_one_and_never_contradict_the_recency() -> None:
    one = {**dict.fromkeys(MODEL_FEATURES, 0.0), "recency_days": 1.0,
           "views_7d": math.log1p(1.0), "log_sessions": math.log1p(1.0),
           "log_orders": math.log1p(1.0), "days_since_last_order": 1.0, "tenure_days": 1.0}
    assert reason_text("views_7d", one) == "about 1 view in the last 7 days"
    assert reason_text("log_sessions", one) == "1 visit in total"
    assert reason_text("log_orders", one) == "1 order in total"
    assert reason_text("days_since_last_order", one) == "no order for 1 day"
    two = {**one, "views_7d": math.log1p(2.0), "log_searches": math.log1p(2.0)}
    assert reason_text("views_7d", two) == "about 2 views in the last 7 days"
    assert reason_text("log_searches", two) == "2 searches in total"
    # "no visits for 14 days" and "about 2 views in the last 7 days" cannot both be true.
    idle = {**two, "recency_days": 14.0}
    contrib = np.zeros(len(MODEL_FEATURES))
    contrib[MODEL_FEATURES.index("recency_days")] = 1.0
    contrib[MODEL_FEATURES.index("views_7d")] = 0.5
    contrib[MODEL_FEATURES.index("tenure_days")] = 0.2
    assert [n for n, _, _ in top_reasons(contrib, idle)] == ["recency_days", "tenure_days"]
    assert [n for n, _, _ in top_reasons(contrib, two)] == [
        "recency_days", "views_7d", "tenure_days"]


def test_every_feature_has_a_readable_reason() -> None:
    f = dict.fromkeys(MODEL_FEATURES, 1.0)
    for name in MODEL_FEATURES:
        assert "=" not in reason_text(name, f)


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
    assert q.summary()["labels_seen"] == 0.0
    for p, y in [(0.9, 0), (0.9, 1), (0.8, 1), (0.2, 0), (0.6, 0)]:
        q.update(p, y)
    s = q.summary()
    assert s["labels_seen"] == 5.0
    assert s["window"] == 4.0
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(1.0)
    assert s["roc_auc"] == pytest.approx(1.0)
    assert s["log_loss"] > 0
