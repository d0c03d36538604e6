"""The customer base's purchase rhythm, learned online, and the default churn horizon from it.

A business calls a customer churned when they have been silent for longer than customers
who do come back are ever silent. The gaps between consecutive orders (order *days*:
orders on the same day are one visit) say what that is for this base: a CD shop's buyers
return within months, a grocery's within days. :class:`GapQuantile` keeps a log-spaced
histogram of those gaps, so

- it is O(1) in memory (a fixed number of counters) and exact up to the bin width (5 %);
- it is commutative and mergeable (counts add up), so the horizon does not depend on the
  order events arrive in, on which worker saw them, or on replay timing;
- :func:`horizon_days` turns it into the default horizon: a high quantile (90 %) of the
  observed gaps, rounded up to whole days, once enough gaps have been seen.

Gaps that are still open (customers not yet back) are not in the histogram, so early in a
stream the quantile is low and grows as longer gaps complete; that is why the horizon in
use is published and each snapshot is labelled against the horizon it was taken under.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

#: Bins are geometric: edge k is MIN_GAP_DAYS * RATIO**k.
MIN_GAP_DAYS: Final = 1.0
MAX_GAP_DAYS: Final = 3650.0
RATIO: Final = 1.05
N_BINS: Final = math.ceil(math.log(MAX_GAP_DAYS / MIN_GAP_DAYS) / math.log(RATIO))

#: The default horizon: the 90 % quantile of gaps between order days.
HORIZON_QUANTILE: Final = 0.9
#: Gaps needed before the rhythm replaces the fallback horizon.
MIN_GAPS: Final = 200
FALLBACK_HORIZON_DAYS: Final = 30.0


def _bin(gap_days: float) -> int:
    return min(N_BINS - 1, int(math.log(gap_days / MIN_GAP_DAYS) / math.log(RATIO)))


@dataclass(slots=True)
class GapQuantile:
    """A mergeable log-histogram of gaps between a customer's consecutive order days."""

    counts: list[int] = field(default_factory=lambda: [0] * N_BINS)
    n: int = 0

    def add(self, gap_days: float) -> bool:
        """Count one gap; gaps under a day (the same visit) are ignored. True if counted."""
        if not math.isfinite(gap_days):
            raise ValueError(f"gap must be finite, got {gap_days!r}")
        if gap_days < MIN_GAP_DAYS:
            return False
        self.counts[_bin(gap_days)] += 1
        self.n += 1
        return True

    def merge(self, other: GapQuantile) -> None:
        """Add another histogram's counts (e.g. from another worker)."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.n += other.n

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile in days (upper edge of its bin), None before any gap."""
        if not 0.0 < q <= 1.0:
            raise ValueError("q must be in (0, 1]")
        if self.n == 0:
            return None
        target = q * self.n
        seen = 0
        for k, c in enumerate(self.counts):
            seen += c
            if seen >= target:
                return MIN_GAP_DAYS * RATIO ** (k + 1)
        return MAX_GAP_DAYS

    def typical_gap_days(self) -> float:
        """The median gap (the fallback horizon before any): a prior for one-order customers."""
        median = self.quantile(0.5)
        return FALLBACK_HORIZON_DAYS if median is None else median


def horizon_days(
    rhythm: GapQuantile,
    *,
    quantile: float = HORIZON_QUANTILE,
    min_gaps: int = MIN_GAPS,
    fallback_days: float = FALLBACK_HORIZON_DAYS,
    operator_days: float | None = None,
) -> float:
    """The churn horizon in use: the operator's, else the rhythm's quantile (whole days).

    Before ``min_gaps`` gaps have been seen the rhythm says little, so ``fallback_days``
    holds; after that the horizon never drops below it either, so a base of daily buyers
    still gets a horizon a retention team can act on.
    """
    if operator_days is not None:
        return operator_days
    if rhythm.n < min_gaps:
        return fallback_days
    q = rhythm.quantile(quantile)
    assert q is not None
    return float(max(fallback_days, math.ceil(q)))
