"""Expected spend over the next H days, learned online from the spend that followed snapshots.

The target of a snapshot taken at ``t`` is the spend of the customer's orders in
``(t, t + H]``; it is known at ``t + H``, as the churn label is. The estimate is a hurdle
model, the shape of BG/NBD + Gamma-Gamma (will they buy, and how much when they do):

    E[spend over H] = P(order within H) x E[spend over H | ordered]

``P(order within H)`` is ``1 - churn probability`` from the churn model (one model for
one question), and ``log E[spend | ordered]`` is an online linear regression on the same
features, learned from the snapshots that were followed by an order only, by recursive
least squares (:class:`BayesLinear`). Its residual variance turns the log-scale mean into
a mean in currency units (log-normal mean).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from streamproc.core.bayes_logit import FrozenLinearLogit


class BayesLinear:
    """Recursive least squares: the exact ridge fit of every example so far, one at a time.

    Like :class:`streamproc.core.bayes_logit.BayesLogit` it has no learning rate and its
    answer does not depend on the order of the examples (up to rounding), which matters
    because value targets complete in bursts, a whole week's snapshots at once.
    """

    def __init__(self, features: Sequence[str], *, prior_var: float = 1.0) -> None:
        if prior_var <= 0:
            raise ValueError("prior_var must be > 0")
        self.features = tuple(features)
        d = len(self.features) + 1
        self.mean = np.zeros(d)
        self.cov = np.eye(d) * prior_var
        self.n = 0
        self._sq = 0.0  # sum of squared progressive residuals

    def _row(self, x: Mapping[str, float]) -> np.ndarray:
        return np.array([1.0, *(float(x[f]) for f in self.features)])

    def predict_one(self, x: Mapping[str, float]) -> float:
        """The fitted value at ``x``."""
        return float(self.mean @ self._row(x))

    def learn_one(self, x: Mapping[str, float], y: float) -> None:
        """Add one example (a Kalman update with unit noise: the ridge solution)."""
        row = self._row(x)
        if not (np.all(np.isfinite(row)) and math.isfinite(y)):
            raise ValueError("features and target must be finite")
        err = y - float(self.mean @ row)
        sx = self.cov @ row
        gain = sx / (1.0 + float(row @ sx))
        self.mean += gain * err
        self.cov -= np.outer(gain, sx)
        self.n += 1
        self._sq += err * err

    @property
    def residual_var(self) -> float:
        """Mean squared progressive residual (0 before two examples)."""
        return self._sq / self.n if self.n > 1 else 0.0


class ValueModel:
    """Online hurdle model of spend over the horizon; see the module docstring."""

    def __init__(self, features: Sequence[str]) -> None:
        self._log_spend = BayesLinear(features)
        self.examples = 0

    @property
    def buyers(self) -> int:
        """Snapshots followed by an order, learned so far."""
        return self._log_spend.n

    def learn(self, features: Mapping[str, float], spend_after: float) -> None:
        """Learn one snapshot's features and the spend in the horizon that followed it."""
        if spend_after < 0 or not math.isfinite(spend_after):
            raise ValueError(f"spend_after must be finite and >= 0, got {spend_after!r}")
        self.examples += 1
        if spend_after > 0:
            self._log_spend.learn_one(features, math.log(spend_after))

    def spend_if_ordered(self, features: Mapping[str, float]) -> float:
        """E[spend over H | at least one order], in currency units (log-normal mean)."""
        mu = self._log_spend.predict_one(features)
        return math.exp(min(50.0, mu + self._log_spend.residual_var / 2.0))

    def predict(self, features: Mapping[str, float], p_order: float) -> float:
        """Expected spend over H for a customer who orders within H with ``p_order``."""
        if not 0.0 <= p_order <= 1.0:
            raise ValueError(f"p_order must be in [0, 1], got {p_order!r}")
        if self.buyers == 0:
            return 0.0
        return p_order * self.spend_if_ordered(features)

    def freeze(self) -> FrozenValue:
        """An immutable scoring copy (vectorised; see :class:`FrozenValue`)."""
        reg = self._log_spend
        return FrozenValue(reg.features, reg.mean.copy(), reg.residual_var, self.buyers > 0)


@dataclass(frozen=True, slots=True, eq=False)
class FrozenValue:
    """Frozen hurdle value model: expected spend over H from churn probabilities and rows."""

    features: tuple[str, ...]
    coef: np.ndarray  # intercept first
    residual_var: float
    ready: bool

    def expected_spend(self, rows: np.ndarray, p_churn: np.ndarray) -> np.ndarray:
        """E[spend over H] for (n, d) feature rows in :attr:`features` order."""
        if not self.ready:
            return np.zeros(len(rows))
        mu = self.coef[0] + rows @ self.coef[1:]
        out: np.ndarray = (1.0 - p_churn) * np.exp(np.minimum(50.0, mu + self.residual_var / 2))
        return out


def score_value(churn: FrozenLinearLogit, value: FrozenValue,
                xs: Sequence[Mapping[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Churn probabilities and expected spend over H for a batch of feature dicts."""
    if churn.features != value.features:
        raise ValueError("churn and value models must read the same features")
    rows = churn.rows(xs)
    p = churn.probabilities(churn.contributions(rows))
    return p, value.expected_spend(rows, p)
