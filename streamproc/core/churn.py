"""Churn risk: readable reasons and model quality on delayed labels.

The churn model itself is :class:`streamproc.core.bayes_logit.BayesLogit` over
:data:`~streamproc.core.rhythm_features.CHURN_FEATURES`, frozen into a
:class:`~streamproc.core.bayes_logit.FrozenLinearLogit` for scoring; its exact
per-feature contributions (against the average training example) are the reasons.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

from streamproc.core.rhythm_features import RHYTHM_FEATURES, reason_text

_EPS: Final = 1e-12


def top_reasons(
    contributions: np.ndarray, names: Sequence[str], features: Mapping[str, float],
    currency: str | None, k: int = 3,
) -> list[tuple[str, float, str]]:
    """The ``k`` largest risk-raising contributions as (feature, contribution, text).

    Only factors that raise the risk against the average customer are reasons; the
    horizon (the same for everyone scored by one bundle) never is.
    """
    out: list[tuple[str, float, str]] = []
    for j in np.argsort(-contributions, kind="stable").tolist():
        c = float(contributions[j])
        if c <= 0.0 or len(out) == k:
            break
        name = names[j]
        if name in RHYTHM_FEATURES:
            out.append((name, c, reason_text(name, features, currency)))
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
        """Counts, base rate and, once both classes are in the window, the quality figures.

        ROC AUC, log loss and Brier are absent (never NaN, never a placeholder) until the
        window holds both a churned and a stayed label; precision is absent while no
        prediction reached the threshold. ``base_rate`` is the window's churned share, the
        figure a Brier or a precision must be read against; ``predicted_positive_rate`` the
        share at or above the threshold (near 0 or 1: the model says the same of everyone).
        """
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
        out.update(base_rate=float(y.mean()), predicted_positive_rate=float(alert.mean()),
                   mean_probability=float(p.mean()))
        positives = int(y.sum())
        if 0 < positives < len(y):
            tp = float(np.sum(alert & (y == 1)))
            out.update(
                roc_auc=roc_auc(p, y),
                log_loss=float(-np.mean(y * np.log(p) + (1 - y) * np.log(1.0 - p))),
                brier=float(np.mean((p - y) ** 2)),
                recall=tp / positives,
            )
            if alert.any():
                out["precision"] = tp / float(alert.sum())
        return out
