"""Online Bayesian logistic regression (extended Kalman filter): no learning rate to tune.

Delayed churn labels do not arrive shuffled: when the watermark passes ``t + H`` every
snapshot of that week that saw no order is labelled "churned" at once, hundreds in a
row. Constant-step SGD (River's ``LogisticRegression``) follows the last burst, and its
probabilities saturate at 0 or 1. This learner keeps a Gaussian belief over the weights
(mean ``m``, covariance ``S``) and updates it with one Newton-like step per example:

    p = sigmoid(m . x);   h = w p (1 - p)
    S <- S - (S x)(S x)^T h / (1 + h x^T S x)
    m <- m + S x w (y - p)

The step shrinks as evidence accumulates (``S`` is the inverse of the accumulated
Fisher information plus the prior), so weekly bursts of one class barely move the fit
(it stays close to the fit on the same labels shuffled); a stream sorted by class over
its whole length still biases it, as it would any one-pass learner. The fit needs no
feature scaler (the update is invariant to rescaling a feature, up to the prior). ``x`` includes a
constant 1 for the intercept. The model is linear in the features, so per-feature
contributions ``weight x value`` are exact reasons.

``forget_after`` optionally bounds the memory: the covariance is inflated so evidence
older than about that many (weighted) examples fades, letting the model follow a drifting
base; None (the default) keeps everything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

_CLIP: Final = 35.0


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-_CLIP, min(_CLIP, z))))


class BayesLogit:
    """Online logistic regression over named features; River-style ``learn_one``."""

    def __init__(
        self,
        features: Sequence[str],
        *,
        prior_var: float = 1.0,
        forget_after: float | None = None,
    ) -> None:
        if prior_var <= 0:
            raise ValueError("prior_var must be > 0")
        if forget_after is not None and forget_after <= 1:
            raise ValueError("forget_after must be > 1 example")
        self.features = tuple(features)
        d = len(self.features) + 1
        self.mean = np.zeros(d)
        self.cov = np.eye(d) * prior_var
        self.forget_after = forget_after
        self.examples = 0.0
        self._row_sum = np.zeros(d)  # weighted sum of feature rows: the reference customer

    def _row(self, x: Mapping[str, float]) -> np.ndarray:
        return np.array([1.0, *(float(x[f]) for f in self.features)])

    def predict_proba_one(self, x: Mapping[str, float]) -> float:
        """P(y = 1 | x) at the mean weights (what a frozen copy scores)."""
        return _sigmoid(float(self.mean @ self._row(x)))

    def learn_one(self, x: Mapping[str, float], y: int, w: float = 1.0) -> None:
        """Update the belief with one example of weight ``w``."""
        if y not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {y!r}")
        if w <= 0 or not math.isfinite(w):
            raise ValueError(f"weight must be finite and > 0, got {w!r}")
        row = self._row(x)
        if not np.all(np.isfinite(row)):
            raise ValueError("features must be finite")
        if self.forget_after is not None:
            self.cov *= 1.0 + w / self.forget_after
        p = _sigmoid(float(self.mean @ row))
        h = w * max(p * (1.0 - p), 1e-9)
        sx = self.cov @ row
        self.cov -= np.outer(sx, sx) * (h / (1.0 + h * float(row @ sx)))
        self.mean += (self.cov @ row) * (w * (y - p))
        self.examples += w
        self._row_sum += w * row

    @property
    def intercept(self) -> float:
        """The intercept (log-odds with every feature at 0)."""
        return float(self.mean[0])

    @property
    def weights(self) -> dict[str, float]:
        """Per-feature weights on the log-odds."""
        return dict(zip(self.features, self.mean[1:].tolist(), strict=True))

    def freeze(self) -> FrozenLinearLogit:
        """An immutable scoring copy; reasons are relative to the average training example."""
        reference = self._row_sum[1:] / self.examples if self.examples else np.zeros(
            len(self.features))
        return FrozenLinearLogit(self.features, self.mean[1:].copy(), float(self.mean[0]),
                                 reference)


@dataclass(frozen=True, slots=True, eq=False)
class FrozenLinearLogit:
    """A frozen logistic model over named features, vectorised, with exact contributions.

    ``contributions`` are ``weight x (value - reference value)`` per feature, where the
    reference is the average training example: "this raises the risk compared with a
    typical customer". Their row sum plus :attr:`reference_logit` is the exact log-odds.
    """

    features: tuple[str, ...]
    weights: np.ndarray
    intercept: float
    reference: np.ndarray

    @property
    def reference_logit(self) -> float:
        """The log-odds of the reference (average) customer."""
        return self.intercept + float(self.weights @ self.reference)

    def rows(self, xs: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Feature dicts as an (n, d) array in :attr:`features` order."""
        return np.array([[float(x[f]) for f in self.features] for x in xs], dtype=np.float64)

    def contributions(self, rows: np.ndarray) -> np.ndarray:
        """Per-feature log-odds contributions (n, d) against the reference customer."""
        out: np.ndarray = (rows - self.reference) * self.weights
        return out

    def probabilities(self, contributions: np.ndarray) -> np.ndarray:
        """Churn probabilities from :meth:`contributions`."""
        z = contributions.sum(axis=1) + self.reference_logit
        out: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -_CLIP, _CLIP)))
        return out
