"""Churn-score metrics and alert figures: pure numpy, shared by every evaluation driver.

The positive class is "churned" (1). Ties are handled exactly: ROC AUC with average ranks
(the Mann-Whitney statistic), PR AUC as average precision over distinct thresholds (as
scikit-learn's ``average_precision_score``), calibration bins that never split a tie.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from load_tests.cdnow import DAY, Customer

Array = npt.NDArray[np.float64]


def _arrays(labels: Sequence[int], scores: Sequence[float]) -> tuple[Array, Array]:
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-d of one length: {y.shape} {s.shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def average_ranks(values: Array) -> Array:
    """0-based ranks, ties sharing the mean of their positions."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end - 1) / 2.0
    return ranks


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """P(a churner scores above a stayer), ties counting half; None without both classes."""
    y, s = _arrays(labels, scores)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    rank_sum = float(average_ranks(s)[y == 1].sum()) + positives  # 1-based
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def pr_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Average precision of the churned class; None without a churner."""
    y, s = _arrays(labels, scores)
    positives = y.sum()
    if positives == 0:
        return None
    order = np.argsort(-s, kind="stable")
    y_sorted, s_sorted = y[order], s[order]
    # One threshold per distinct score: the last index of each run of equal scores.
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), len(s) - 1]
    tp = np.cumsum(y_sorted)[last]
    precision = tp / (last + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier(labels: Sequence[int], probabilities: Sequence[float]) -> float:
    """Mean squared error of the probabilities against the labels."""
    y, p = _arrays(labels, probabilities)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("probabilities must lie in [0, 1]")
    return float(np.mean((p - y) ** 2))


@dataclass(frozen=True, slots=True)
class CalibrationBin:
    """Customers whose predictions fall in one quantile bin."""

    customers: int
    predicted_low: float
    predicted_high: float
    mean_predicted: float
    observed: float

    @property
    def gap(self) -> float:
        """Absolute gap between the mean prediction and the observed churn rate."""
        return abs(self.mean_predicted - self.observed)


def calibration_table(labels: Sequence[int], probabilities: Sequence[float],
                      bins: int = 10) -> list[CalibrationBin]:
    """Deciles (by default) of the predictions: mean predicted vs observed churn rate.

    Bins are quantiles of the average rank, so equal predictions share a bin: a model
    that predicts one value for everyone has one bin, not ten arbitrary ones.
    """
    y, p = _arrays(labels, probabilities)
    if len(y) == 0:
        return []
    which = np.minimum((average_ranks(p) * bins / len(p)).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            out.append(CalibrationBin(int(inside.sum()), float(p[inside].min()),
                                      float(p[inside].max()), float(p[inside].mean()),
                                      float(y[inside].mean())))
    return out


@dataclass
class ScoreMetrics:
    """How one score does against one label."""

    customers: int
    base_rate: float
    roc_auc: float | None
    pr_auc: float | None
    brier: float | None = None
    calibration: list[CalibrationBin] = field(default_factory=list)

    @property
    def max_calibration_gap(self) -> float | None:
        """The largest |mean predicted - observed| over the calibration bins."""
        return max((b.gap for b in self.calibration), default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        out = asdict(self)
        out["max_calibration_gap"] = self.max_calibration_gap
        return out


def evaluate(labels: Sequence[int], scores: Sequence[float], *,
             probability: bool) -> ScoreMetrics:
    """Ranking metrics for any score; Brier and calibration only for probabilities."""
    y, _ = _arrays(labels, scores)
    metrics = ScoreMetrics(len(y), float(y.mean()) if len(y) else 0.0, roc_auc(labels, scores),
                           pr_auc(labels, scores))
    if probability:
        metrics.brier = brier(labels, scores)
        metrics.calibration = calibration_table(labels, scores)
    return metrics


# --- alerts --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlertFigures:
    """Alerts judged as a retention team would."""

    alerts: int
    alerted_customers: int
    alerts_per_customer: float
    #: Share of alerts after which the customer placed no order within the horizon.
    precision: float | None
    #: Value of the holdout churners with a standing alert, over the value of all of them.
    churned_value_covered: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def _value_share(covered: set[str], population: Mapping[str, Customer],
                 churned: set[str]) -> float | None:
    total = sum(population[c].value for c in churned)
    if total <= 0:
        return None
    return sum(population[c].value for c in churned & covered) / total


def streaming_alerts(alerts: Sequence[tuple[str, float]], population: Mapping[str, Customer],
                     *, horizon_days: float, churned: set[str]) -> AlertFigures:
    """Alerts raised while the calibration period streamed by, as (customer, event time).

    An alert is right when no order follows within ``horizon_days``; a holdout churner
    is covered when an alert came at or after their last calibration order (it still
    stood at the cutoff: they never came back after it).
    """
    kept = [(c, t) for c, t in alerts if c in population]
    right = [not population[c].orders_between(t, t + horizon_days * DAY) for c, t in kept]
    standing = {c for c, t in kept if t >= population[c].calibration[-1][0]}
    return AlertFigures(
        alerts=len(kept), alerted_customers=len({c for c, _ in kept}),
        alerts_per_customer=len(kept) / len(population) if population else 0.0,
        precision=sum(right) / len(right) if right else None,
        churned_value_covered=_value_share(standing, population, churned))


def cutoff_alerts(ids: Sequence[str], probabilities: Sequence[float], threshold: float,
                  population: Mapping[str, Customer], *, horizon_labels: Sequence[int],
                  churned: set[str]) -> AlertFigures:
    """The alerts a score would raise at the cutoff: every customer at or over ``threshold``.

    Right = churned on the horizon label (no order within the horizon after the cutoff).
    """
    flagged = [i for i, p in enumerate(probabilities) if p >= threshold]
    right = [horizon_labels[i] == 1 for i in flagged]
    return AlertFigures(
        alerts=len(flagged), alerted_customers=len(flagged),
        alerts_per_customer=len(flagged) / len(ids) if len(ids) else 0.0,
        precision=sum(right) / len(right) if right else None,
        churned_value_covered=_value_share({ids[i] for i in flagged}, population, churned))


def spearman(actual: Sequence[float], predicted: Sequence[float]) -> float | None:
    """Spearman rank correlation (ties share their mean rank); None if either is constant."""
    a = average_ranks(np.asarray(actual, dtype=np.float64))
    p = average_ranks(np.asarray(predicted, dtype=np.float64))
    if a.shape != p.shape:
        raise ValueError("actual and predicted must have one length")
    a, p = a - a.mean(), p - p.mean()
    denom = math.sqrt(float(a @ a) * float(p @ p))
    return None if denom == 0 else float(a @ p) / denom


def top_share(actual: Sequence[float], predicted: Sequence[float], share: float = 0.1) -> float:
    """Share of the total of ``actual`` held by the top ``share`` of customers by
    ``predicted`` (ties broken by position, so equal predictions pick no one by luck)."""
    a = np.asarray(actual, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    k = max(1, round(share * len(p)))
    top = np.lexsort((np.arange(len(p)), -p))[:k]
    total = float(a.sum())
    return float(a[top].sum()) / total if total else 0.0


def value_figures(actual: Sequence[float], predicted: Sequence[float]) -> dict[str, Any]:
    """Spearman with the actual spend and the top-10 % revenue share, as JSON."""
    return {"spearman": spearman(actual, predicted),
            "top10_share": top_share(actual, predicted)}
