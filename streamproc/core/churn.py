"""Churn model: online logistic regression, readable reasons and quality on delayed labels.

The trainer learns a River ``StandardScaler | LogisticRegression`` pipeline from
delayed labels (:mod:`streamproc.core.labels`). For scoring it is frozen into
:class:`FrozenLogit` (numpy arrays), which is deterministic, batchable and yields
per-feature contributions (weight x standardised value) that :func:`reason_text`
turns into sentences a retention team can act on.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from river import compose, forest, linear_model, optim, preprocessing, tree

from streamproc.core.features import MODEL_FEATURES

_EPS: Final = 1e-12


def make_churn_model(kind: str = "logreg", seed: int = 42) -> Any:
    """A River classifier by name (the candidates ``load_tests/model_selection.py`` compares)."""
    if kind == "logreg":
        return compose.Pipeline(
            preprocessing.StandardScaler(),
            linear_model.LogisticRegression(optimizer=optim.SGD(0.05), l2=1e-4),
        )
    if kind == "logreg-sgd0.01":
        return compose.Pipeline(
            preprocessing.StandardScaler(),
            linear_model.LogisticRegression(optimizer=optim.SGD(0.01), l2=0.0),
        )
    if kind == "logreg-adam":
        return compose.Pipeline(
            preprocessing.StandardScaler(),
            linear_model.LogisticRegression(optimizer=optim.Adam(0.01), l2=1e-4),
        )
    if kind == "hatc":
        return tree.HoeffdingAdaptiveTreeClassifier(grace_period=100, seed=seed)
    if kind == "arf5":
        return forest.ARFClassifier(n_models=5, seed=seed)
    raise ValueError(f"unknown churn model {kind!r}")


@dataclass(frozen=True, slots=True)
class FrozenLogit:
    """A standardise-then-logistic model frozen into arrays over :data:`MODEL_FEATURES`."""

    mean: np.ndarray
    scale: np.ndarray  # 1/std, 0 where the variance is 0 (River's convention)
    weights: np.ndarray
    intercept: float

    @classmethod
    def from_pipeline(cls, model: Any) -> FrozenLogit:
        """Freeze a ``StandardScaler | LogisticRegression`` River pipeline."""
        scaler, logit = model.steps.values()
        mean = np.array([scaler.means.get(f, 0.0) for f in MODEL_FEATURES], dtype=np.float64)
        var = np.array([scaler.vars.get(f, 0.0) for f in MODEL_FEATURES], dtype=np.float64)
        scale = np.divide(1.0, np.sqrt(var), out=np.zeros_like(var), where=var > 0)
        weights = np.array([logit.weights.get(f, 0.0) for f in MODEL_FEATURES], dtype=np.float64)
        return cls(mean, scale, weights, float(logit.intercept))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-feature logit contributions (n, d) for raw feature rows (n, d)."""
        out: np.ndarray = (x - self.mean) * self.scale * self.weights
        return out

    def probabilities(self, contributions: np.ndarray) -> np.ndarray:
        """Churn probabilities from :meth:`contributions` (row sums + intercept, sigmoid)."""
        logits = contributions.sum(axis=1) + self.intercept
        out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(logits, -500.0, 500.0)))
        return out


def feature_row(features: Mapping[str, float]) -> list[float]:
    """A feature dict in :data:`MODEL_FEATURES` order."""
    return [features[f] for f in MODEL_FEATURES]


# ---------------------------------------------------------------- reasons


def plural(n: float, word: str, many: str | None = None) -> str:
    """``n`` rounded, with ``word`` in the singular for exactly 1 ("1 view", "2 views")."""
    k = round(n)
    return f"{k} {word if k == 1 else (many or word + 's')}"


def _count(x: float, word: str, many: str | None = None) -> str:
    return plural(math.expm1(x), word, many)


#: Reasons about a recent window (feature -> window days): they contradict "no visits
#: for N days" when N spans the window and the window still shows activity.
_WINDOWS: Final = {"views_7d": 7.0, "views_30d": 30.0, "carts_30d": 30.0}


def reason_text(feature: str, f: Mapping[str, float]) -> str:
    """A customer's value of ``feature`` in business terms (``f``: model-feature dict)."""
    v = f[feature]
    orders = math.expm1(f["log_orders"])
    if feature == "recency_days":
        return f"no visits for {plural(v, 'day')}"
    if feature == "days_since_last_order":
        if orders < 0.5:
            return f"never ordered in {plural(f['tenure_days'], 'day')}"
        return f"no order for {plural(v, 'day')}"
    if feature == "tenure_days":
        return f"customer for {plural(v, 'day')}"
    if feature == "log_orders":
        return f"{plural(orders, 'order')} in total"
    if feature == "log_net_spend":
        return f"net spend EUR {math.expm1(v):.0f}"
    if feature == "log_aov":
        return f"average order EUR {math.expm1(v):.0f}"
    if feature == "log_sessions":
        return f"{_count(v, 'visit')} in total"
    if feature == "log_views":
        return f"{_count(v, 'page or product view')} in total"
    if feature == "log_searches":
        return f"{_count(v, 'search', 'searches')} in total"
    if feature == "views_7d":
        return f"about {_count(v, 'view')} in the last 7 days"
    if feature == "views_30d":
        return f"about {_count(v, 'view')} in the last 30 days"
    if feature == "carts_30d":
        return f"about {_count(v, 'add-to-cart')} in the last 30 days"
    if feature == "orders_30d":
        recent = math.expm1(v)
        usual = f["orders_per_30d_tenure"]
        trend = " (down)" if recent < 0.8 * usual else ""
        return f"{plural(recent, 'order')} in the last 30 days{trend}"
    if feature == "spend_30d":
        return f"EUR {math.expm1(v):.0f} spent in the last 30 days"
    if feature == "conversion_rate":
        return f"{v:.0%} of visits end in an order"
    if feature == "cart_abandonment_rate":
        return f"cart abandonment {v:.0%}"
    if feature == "refund_rate":
        return f"{v:.0%} of spend refunded"
    if feature == "mean_days_between_orders":
        return (f"orders every {plural(v, 'day')} on average" if v > 0
                else "fewer than two orders")
    if feature == "orders_per_30d_tenure":
        return f"{v:.1f} orders a month since joining"
    return f"{feature} = {v:.3g}"


def top_reasons(
    contributions: np.ndarray, features: Mapping[str, float], k: int = 3
) -> list[tuple[str, float, str]]:
    """The ``k`` largest positive contributions as (feature, contribution, text).

    Only factors that raise the risk are reasons; a recent-window count that shows
    activity is left out when "no visits for N days" spans its window (the two would
    contradict each other: the window counts decay, the recency is exact).
    """
    out: list[tuple[str, float, str]] = []
    recency = features.get("recency_days", 0.0)
    for j in np.argsort(-contributions, kind="stable").tolist():
        c = float(contributions[j])
        if c <= 0.0 or len(out) == k:
            break
        name = MODEL_FEATURES[j]
        window = _WINDOWS.get(name)
        if window is not None and recency >= window and math.expm1(features[name]) >= 0.5:
            continue
        out.append((name, c, reason_text(name, features)))
    return out


# ---------------------------------------------------------------- quality


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Exact ROC AUC (ties count half); NaN when only one class is present."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


class QualityTracker:
    """Progressive-validation metrics over the last ``window`` delayed labels."""

    def __init__(self, threshold: float, window: int = 5000) -> None:
        self.threshold = threshold
        self.window = window
        self._p: deque[float] = deque(maxlen=window)
        self._y: deque[int] = deque(maxlen=window)
        self.labels_seen = 0
        self.positives_seen = 0

    def update(self, probability: float, label: int) -> None:
        """Record a prediction made before the model learned this label."""
        self._p.append(probability)
        self._y.append(label)
        self.labels_seen += 1
        self.positives_seen += label

    def summary(self) -> dict[str, float]:
        """ROC AUC, log loss, Brier, precision/recall at the threshold, counts."""
        out: dict[str, float] = {
            "labels_seen": float(self.labels_seen),
            "positives_seen": float(self.positives_seen),
            "window": float(len(self._y)),
        }
        if not self._y:
            return out
        p = np.clip(np.array(self._p, dtype=np.float64), _EPS, 1.0 - _EPS)
        y = np.array(self._y, dtype=np.int64)
        alert = p >= self.threshold
        tp = float(np.sum(alert & (y == 1)))
        out.update(
            roc_auc=roc_auc(p, y),
            log_loss=float(-np.mean(y * np.log(p) + (1 - y) * np.log(1.0 - p))),
            brier=float(np.mean((p - y) ** 2)),
            positive_rate=float(y.mean()),
            alert_rate=float(alert.mean()),
            precision=tp / float(alert.sum()) if alert.any() else math.nan,
            recall=tp / float(y.sum()) if y.any() else math.nan,
        )
        return out
