"""Batch baselines fitted on the same calibration data and labels as the streaming model.

* BG/NBD (lifetimes): P(no order in the t days after the cutoff | the customer's history).
* Logistic regression on RFM + tenure (scikit-learn), out-of-fold predictions of 5 folds.

lifetimes 0.11.3 with pandas 3: ``lifetimes.utils`` (``summary_data_from_transaction_data``,
``calibration_and_holdout_data``) fails inside a pandas groupby ("No objects to
concatenate"), so the frequency/recency/T summary is computed here; the fitter itself works
on plain arrays. Importing lifetimes sets a pandas option that pandas 3 deprecates (a
warning), silenced at import only. Both libraries come with the ``eval`` extra.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from load_tests.cdnow import DAY, Customer, Split
from load_tests.churn_metrics import Array


@dataclass(frozen=True)
class CalibrationSummary:
    """Per customer (aligned with the population), what the baselines learn from."""

    #: BG/NBD in days: repeat purchase days, day of the last minus the first, cutoff minus first.
    frequency: Array
    recency: Array
    age: Array
    #: RFM + tenure at the cutoff instant.
    recency_days: Array
    orders: Array
    mean_order_value: Array
    tenure_days: Array


def _day(t: float) -> int:
    return math.floor(t / DAY)


def summarize(population: Sequence[Customer], split: Split) -> CalibrationSummary:
    """The lifetimes-style summary (daily periods) and RFM features of every customer."""
    cutoff = split.cutoff.timestamp()
    cutoff_day = _day(datetime(split.cutoff_day.year, split.cutoff_day.month,
                               split.cutoff_day.day, tzinfo=UTC).timestamp())
    rows = []
    for cust in population:
        times = [t for t, _ in cust.calibration]
        days = sorted({_day(t) for t in times})
        rows.append((len(days) - 1, days[-1] - days[0], cutoff_day - days[0],
                     (cutoff - times[-1]) / DAY, len(times), cust.value / len(times),
                     (cutoff - times[0]) / DAY))
    cols = np.asarray(rows, dtype=np.float64).reshape(-1, 7).T
    return CalibrationSummary(*cols)


def p_no_purchase(p_alive: Array, r: float, alpha: float, frequency: Array, age: Array,
                  days: float) -> Array:
    """BG/NBD P(no purchase in the ``days`` after the cutoff | history).

    Dead: none for sure. Alive: the purchase rate's posterior is Gamma(r + x, alpha + T),
    and a customer dies only right after a purchase, so P(none | alive) is that Gamma's
    Laplace transform at ``days``: ((alpha + T) / (alpha + T + days)) ** (r + x).
    """
    alive_none = ((alpha + age) / (alpha + age + days)) ** (r + frequency)
    return np.asarray((1.0 - p_alive) + p_alive * alive_none, dtype=np.float64)


def _beta_geo_fitter() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas 3 deprecates an option lifetimes sets
        from lifetimes import BetaGeoFitter
    return BetaGeoFitter


@dataclass(frozen=True)
class BgNbd:
    """A fitted BG/NBD model and each customer's probability of being alive at the cutoff."""

    params: dict[str, float]
    p_alive: Array
    summary: CalibrationSummary
    fitter: Any

    def p_no_purchase(self, days: float) -> Array:
        """P(no order in the ``days`` after the cutoff) per customer: a churn probability."""
        s = self.summary
        return p_no_purchase(self.p_alive, self.params["r"], self.params["alpha"], s.frequency,
                             s.age, days)

    def expected_purchases(self, days: float) -> Array:
        """Expected repeat purchase days in the ``days`` after the cutoff (lifetimes)."""
        s = self.summary
        return np.asarray(self.fitter.conditional_expected_number_of_purchases_up_to_time(
            days, s.frequency, s.recency, s.age), dtype=np.float64)


def fit_bgnbd(summary: CalibrationSummary, penalizer: float = 0.0) -> BgNbd:
    """Fit lifetimes' BetaGeoFitter on the calibration summary."""
    fitter = _beta_geo_fitter()(penalizer_coef=penalizer)
    fitter.fit(summary.frequency, summary.recency, summary.age)
    p_alive = np.asarray(fitter.conditional_probability_alive(
        summary.frequency, summary.recency, summary.age), dtype=np.float64)
    params = {k: float(v) for k, v in fitter.params_.items()}
    return BgNbd(params, p_alive, summary, fitter)


def repeat_day_values(population: Sequence[Customer]) -> Array:
    """Each customer's mean spend per repeat purchase day (0 without one): Gamma-Gamma's
    monetary value in lifetimes' convention (the first purchase day left out)."""
    out = []
    for cust in population:
        per_day: dict[int, float] = {}
        for t, usd in cust.calibration:
            per_day[_day(t)] = per_day.get(_day(t), 0.0) + usd
        repeat = [v for _, v in sorted(per_day.items())[1:]]
        out.append(sum(repeat) / len(repeat) if repeat else 0.0)
    return np.asarray(out, dtype=np.float64)


def bgnbd_gamma_gamma_value(bgnbd: BgNbd, population: Sequence[Customer],
                            days: float) -> Array:
    """BG/NBD + Gamma-Gamma expected spend over the ``days`` after the cutoff: expected
    purchases times lifetimes' GammaGammaFitter conditional expected average value.

    Gamma-Gamma is fitted on customers with repeat purchase days and a positive mean
    value (it needs both); the rest get its population mean through the same formula.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import GammaGammaFitter
    freq = bgnbd.summary.frequency
    values = repeat_day_values(population)
    fit = (freq > 0) & (values > 0)
    gg = GammaGammaFitter(penalizer_coef=0.0)
    gg.fit(freq[fit], values[fit])
    avg = np.asarray(gg.conditional_expected_average_profit(freq, np.where(fit, values, 0.0)),
                     dtype=np.float64)
    return bgnbd.expected_purchases(days) * avg


def rfm_matrix(summary: CalibrationSummary) -> Array:
    """log1p of recency days, orders, mean order value and tenure days (one row each)."""
    return np.log1p(np.column_stack([summary.recency_days, summary.orders,
                                     summary.mean_order_value, summary.tenure_days]))


def logistic_cv(features: Array, labels: Sequence[int], *, folds: int = 5,
                seed: int = 0) -> Array:
    """Out-of-fold churn probabilities of a standardised logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(model, features, np.asarray(labels), cv=cv,
                              method="predict_proba")
    return np.asarray(proba[:, 1], dtype=np.float64)


def versions() -> dict[str, str]:
    """Versions of the libraries the baselines rest on (for the JSON)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("lifetimes", "scikit-learn", "pandas", "numpy", "scipy", "autograd"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out
