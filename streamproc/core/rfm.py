"""Online RFM: recency, frequency and monetary scores 1-5 against streaming quintiles.

The :class:`RFMLearner` (owned by the trainer) tracks the 20/40/60/80 % quantiles
of recency days, orders and net spend with P² estimators (O(1) memory each); it is
frozen into :class:`RFMCuts` for scoring, so every worker scores with the same cuts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from river import stats

QUANTILES: Final = (0.2, 0.4, 0.6, 0.8)

#: Tier names in the classic RFM vocabulary, in the order the rules are tried.
TIERS: Final = (
    "champions",
    "loyal",
    "can't lose",
    "at risk",
    "potential loyalist",
    "new",
    "promising",
    "need attention",
    "about to sleep",
    "hibernating",
    "lost",
)


def rfm_values(features: Mapping[str, float]) -> tuple[float, float, float]:
    """(recency days, orders, net spend) in business units from :func:`model_features`."""
    orders = float(round(math.expm1(features["log_orders"])))
    spend = round(math.expm1(features["log_net_spend"]), 2)
    return features["recency_days"], orders, spend


def _score(value: float, cuts: tuple[float, ...], *, lower_is_better: bool) -> int:
    above = sum(1 for c in cuts if value > c)
    return 5 - above if lower_is_better else 1 + above


def tier_name(r: int, f: int, m: int) -> str:
    """The RFM tier for scores 1-5 (recency 5 = most recent)."""
    if r >= 4 and f >= 4 and m >= 4:
        return "champions"
    if r >= 3 and f >= 4:
        return "loyal"
    if r <= 2 and f >= 4 and m >= 4:
        return "can't lose"
    if r <= 2 and f >= 3:
        return "at risk"
    if r >= 4 and f >= 2:
        return "potential loyalist"
    if r == 5 and f == 1:
        return "new"
    if r >= 4:
        return "promising"
    if r == 3 and f >= 2:
        return "need attention"
    if r == 3:
        return "about to sleep"
    if r == 2:
        return "hibernating"
    return "lost"


@dataclass(frozen=True, slots=True)
class RFMCuts:
    """Frozen quintile cut points (ascending) for scoring."""

    recency: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    frequency: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    monetary: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)

    def scores(self, recency_days: float, orders: float, net_spend: float) -> tuple[int, int, int]:
        """(R, F, M) scores, each 1-5, 5 best."""
        return (
            _score(recency_days, self.recency, lower_is_better=True),
            _score(orders, self.frequency, lower_is_better=False),
            _score(net_spend, self.monetary, lower_is_better=False),
        )

    def score_features(self, features: Mapping[str, float]) -> tuple[tuple[int, int, int], str]:
        """Scores and tier name for a model-feature dict."""
        rfm = self.scores(*rfm_values(features))
        return rfm, tier_name(*rfm)


class RFMLearner:
    """Streaming quintiles of recency, frequency and monetary value."""

    def __init__(self) -> None:
        self._q: dict[str, list[stats.Quantile]] = {
            dim: [stats.Quantile(q) for q in QUANTILES] for dim in ("r", "f", "m")
        }
        self.n = 0

    def learn(self, features: Mapping[str, float]) -> None:
        """Update the quantiles with one profile."""
        for dim, value in zip(("r", "f", "m"), rfm_values(features), strict=True):
            for est in self._q[dim]:
                est.update(value)
        self.n += 1

    def _cuts(self, dim: str) -> tuple[float, ...]:
        values = [est.get() for est in self._q[dim]]
        out: list[float] = []
        for v in values:
            v = 0.0 if v is None or not math.isfinite(v) else float(v)
            out.append(max(v, out[-1]) if out else v)  # P² may cross by a hair: keep ascending
        return tuple(out)

    def freeze(self) -> RFMCuts:
        """The current cuts for a scoring bundle."""
        if self.n == 0:
            return RFMCuts()
        return RFMCuts(self._cuts("r"), self._cuts("f"), self._cuts("m"))
