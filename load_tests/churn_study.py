"""Why the online churn model fails on real purchase histories, and which design fixes it.

Drives the pure core in memory on the CDNOW 1/10 sample shipped in the ``lifetimes==0.11.3``
wheel (``lifetimes/datasets/CDNOW_sample.txt``: 2,357 real customers, 6,919 orders,
1997-01 .. 1998-06; the wheel's larger log is held out to judge the work and is never read).

Protocol (the same as the real-data harness): the stream is the orders up to the cutoff
(1997-09-30) and nothing after it; every customer is scored as of the cutoff. Labels:
``churn_39w`` = no order in the 39 weeks after the cutoff; ``churn_H`` = no order within the
model's own horizon H after it. Baselines in the same run: BG/NBD P(no purchase in the
holdout), a batch logistic regression on RFM + tenure (5-fold cross-validated predictions)
and recency alone. Value: predicted spend against the holdout spend, beside BG/NBD + Gamma-Gamma.

Every design is learned online and incrementally from delayed labels produced as the
pipeline produces them: snapshots labelled when the watermark passes ``t + H`` or when the
customer comes back. "before" is the current :class:`streamproc.core.replay.Replay` and
:class:`streamproc.core.modelset.Trainer` with the default settings.

Run: ``python -m load_tests.churn_study [--json out.json]`` (about 2 minutes; needs
``lifetimes`` and ``scikit-learn``: ``pip install lifetimes==0.11.3 scikit-learn``).
``--robustness`` runs BEFORE, the winner and the baselines at three cutoffs instead.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from streamproc.core.bayes_logit import BayesLogit
from streamproc.core.churn import roc_auc
from streamproc.core.features import (
    MODEL_FEATURES,
    InMemoryProfiles,
    ProfileView,
    event_lane,
    event_ops,
    model_features,
)
from streamproc.core.labels import DAY, LabelledExample, Snapshot, on_activity, on_watermark
from streamproc.core.modelset import Trainer
from streamproc.core.replay import Replay, ReplayConfig, event_namespace
from streamproc.core.rhythm import GapQuantile, horizon_days
from streamproc.core.rhythm_features import RHYTHM_FEATURES, rhythm_features
from streamproc.core.value import ValueModel, score_value

CUTOFF = datetime(1997, 9, 30, 23, 59, 59, tzinfo=UTC)
DATA_END = datetime(1998, 6, 30, 23, 59, 59, tzinfo=UTC)
HOLDOUT_DAYS = 39 * 7


# ---------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Order:
    """One row of the CDNOW log."""

    customer_id: str
    ts: float
    cds: int
    dollars: float


def sample_path() -> Path:
    """``CDNOW_sample.txt`` inside the installed lifetimes wheel (the only file used)."""
    import lifetimes

    return Path(lifetimes.__file__).parent / "datasets" / "CDNOW_sample.txt"


def load_orders(path: Path) -> list[Order]:
    """Orders in event-time order; an order's time is noon UTC of its day."""
    out: list[Order] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        master, _sample, day, cds, dollars = line.split()
        when = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC) + timedelta(hours=12)
        out.append(Order(master, when.timestamp(), int(cds), float(dollars)))
    out.sort(key=lambda o: (o.ts, o.customer_id))
    return out


def order_event(order: Order, n: int) -> dict[str, Any]:
    """An order as a purchase event dict (contract field names, as producers send it)."""
    qty = max(1, order.cds)
    return {
        "event_id": f"cdnow-{n}",
        "order_id": f"ord-{n}",
        "customer_id": order.customer_id,
        "type": "order",
        "timestamp": datetime.fromtimestamp(order.ts, UTC).isoformat(),
        "total": order.dollars,
        "currency": "USD",
        "items": [{"product_id": "cd", "quantity": qty, "unit_price": order.dollars / qty}],
    }


@dataclass(frozen=True, slots=True)
class Split:
    """Calibration stream, the customers to score and their holdout outcomes."""

    calibration: list[Order]
    customers: list[str]
    cutoff: float
    #: The holdout window: 39 weeks, or up to the end of the data for a later cutoff.
    holdout_days: float
    #: Days from the cutoff to each customer's first holdout order (inf: none).
    next_order_days: np.ndarray
    holdout_spend: np.ndarray

    def churn_within(self, days: float) -> np.ndarray:
        """1 where the customer placed no order within ``days`` after the cutoff."""
        return (self.next_order_days > days).astype(np.int64)


def split(orders: Sequence[Order], cutoff: datetime = CUTOFF) -> Split:
    """Cut the log at ``cutoff``; outcomes over the 39 weeks after it (or to the data's end)."""
    cut = cutoff.timestamp()
    end = min(cut + HOLDOUT_DAYS * DAY, DATA_END.timestamp())
    cal = [o for o in orders if o.ts <= cut]
    customers = sorted({o.customer_id for o in cal})
    index = {c: i for i, c in enumerate(customers)}
    nxt = np.full(len(customers), np.inf)
    spend = np.zeros(len(customers))
    for o in orders:
        if cut < o.ts <= end and o.customer_id in index:
            i = index[o.customer_id]
            nxt[i] = min(nxt[i], (o.ts - cut) / DAY)
            spend[i] += o.dollars
    return Split(cal, customers, cut, (end - cut) / DAY, nxt, spend)


# ---------------------------------------------------------------- metrics


def pr_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of the positive class (churned)."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(labels, scores))


def calibration_deciles(p: np.ndarray, y: np.ndarray) -> list[tuple[float, float, int]]:
    """(mean predicted, observed rate, n) per decile of predicted probability."""
    order = np.argsort(p, kind="mergesort")
    return [
        (float(p[idx].mean()), float(y[idx].mean()), len(idx))
        for idx in np.array_split(order, 10)
    ]


def churn_row(name: str, p: np.ndarray | None, rank: np.ndarray, sp: Split, h_days: float
              ) -> dict[str, Any]:
    """ROC/PR AUC on churn_39w, Brier and calibration on churn_H (when ``p`` is a probability)."""
    y39 = sp.churn_within(sp.holdout_days)
    yh = sp.churn_within(h_days)
    row: dict[str, Any] = {
        "design": name,
        "auc_39w": roc_auc(rank, y39),
        "pr_auc_39w": pr_auc(rank, y39),
        "auc_H": roc_auc(rank, yh),
        "H_days": h_days,
        "base_rate_H": float(yh.mean()),
    }
    if p is not None:
        dec = calibration_deciles(p, yh)
        row.update(
            brier_H=float(np.mean((p - yh) ** 2)),
            brier_39w=float(np.mean((p - y39) ** 2)),
            calib_max_dev_H=max(abs(a - b) for a, b, _ in dec),
            mean_p=float(p.mean()),
            # The default alert threshold (0.7): share alerted and precision on churn_H.
            alert_share=float((p >= 0.7).mean()),
            alert_precision_H=float(yh[p >= 0.7].mean()) if (p >= 0.7).any() else math.nan,
            deciles_H=[(round(a, 3), round(b, 3)) for a, b, _ in dec],
        )
    return row


def value_row(name: str, pred: np.ndarray, sp: Split) -> dict[str, Any]:
    """Spearman with holdout spend and the holdout revenue share of the top 10 % by prediction."""
    from scipy.stats import spearmanr

    rho = float(spearmanr(pred, sp.holdout_spend).statistic)
    k = max(1, round(0.1 * len(pred)))
    # Stable tie-break on index so equal predictions do not pick the best by accident.
    top = np.lexsort((np.arange(len(pred)), -pred))[:k]
    share = float(sp.holdout_spend[top].sum() / sp.holdout_spend.sum())
    return {"design": name, "spearman": rho, "top10_share": share}


# ---------------------------------------------------------------- baselines


def rfm_table(sp: Split) -> dict[str, np.ndarray]:
    """Per-customer calibration summary as of the cutoff (days; lifetimes conventions)."""
    cut = sp.cutoff
    index = {c: i for i, c in enumerate(sp.customers)}
    n = len(sp.customers)
    first = np.full(n, np.inf)
    last = np.full(n, -np.inf)
    days: list[set[int]] = [set() for _ in range(n)]
    orders = np.zeros(n)
    spend = np.zeros(n)
    for o in sp.calibration:
        i = index[o.customer_id]
        first[i] = min(first[i], o.ts)
        last[i] = max(last[i], o.ts)
        days[i].add(int(o.ts // DAY))
        orders[i] += 1
        spend[i] += o.dollars
    distinct = np.array([len(d) for d in days], dtype=np.float64)
    return {
        "frequency": distinct - 1,  # repeat purchase days
        "recency": np.floor((last - first) / DAY),
        "T": np.floor((cut - first) / DAY),
        "days_since_last": (cut - last) / DAY,
        "orders": orders,
        "spend": spend,
        "aov": spend / orders,
    }


def bgnbd_baselines(sp: Split, h_days: float) -> dict[str, np.ndarray]:
    """BG/NBD P(no purchase in 39 weeks / in H days) and BG/NBD + Gamma-Gamma expected spend."""
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    t = rfm_table(sp)
    f, r, big_t = t["frequency"], t["recency"], t["T"]
    bg = BetaGeoFitter(penalizer_coef=0.0)
    bg.fit(f, r, big_t)
    alive = bg.conditional_probability_alive(f, r, big_t)
    p = bg.params_
    # Alive customers keep a Gamma(r + x, alpha + T) rate; dead ones never buy again.
    def p_none(days: float) -> np.ndarray:
        stay: np.ndarray = ((p["alpha"] + big_t) / (p["alpha"] + big_t + days)) ** (p["r"] + f)
        return np.asarray((1 - alive) + alive * stay, dtype=np.float64)

    # Gamma-Gamma on the mean value of repeat purchase days (lifetimes' convention).
    repeat = f > 0
    per_day = _repeat_day_values(sp)
    gg = GammaGammaFitter(penalizer_coef=0.0)
    gg.fit(f[repeat], per_day[repeat])
    aov = np.asarray(gg.conditional_expected_average_profit(f, np.where(repeat, per_day, 0.0)))
    hold = sp.holdout_days
    n39 = np.asarray(bg.conditional_expected_number_of_purchases_up_to_time(hold, f, r, big_t))
    return {"p39": p_none(hold), "pH": p_none(h_days), "value39": n39 * aov}


def _repeat_day_values(sp: Split) -> np.ndarray:
    """Mean spend of a customer's repeat purchase days (first day excluded), 0 without any."""
    by_day: dict[str, dict[int, float]] = {}
    for o in sp.calibration:
        d = by_day.setdefault(o.customer_id, {})
        d[int(o.ts // DAY)] = d.get(int(o.ts // DAY), 0.0) + o.dollars
    out = np.zeros(len(sp.customers))
    for i, c in enumerate(sp.customers):
        vals = [v for _, v in sorted(by_day[c].items())][1:]
        out[i] = float(np.mean(vals)) if vals else 0.0
    return out


def logistic_baseline(sp: Split, labels: np.ndarray) -> np.ndarray:
    """Batch logistic regression on RFM + tenure, 5-fold cross-validated probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t = rfm_table(sp)
    x = np.column_stack([t["days_since_last"], t["orders"], t["spend"], t["T"]])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    out: np.ndarray = cross_val_predict(model, x, labels, cv=folds, method="predict_proba")[:, 1]
    return out


# ---------------------------------------------------------------- before


def run_before(sp: Split, horizon_days: float = 30.0) -> tuple[np.ndarray, dict[str, Any]]:
    """The current Replay + Trainer with the settings' defaults; scores as of the cutoff."""
    cfg = ReplayConfig(horizon_s=horizon_days * DAY, check_interval_s=7 * DAY)
    replay = Replay(Trainer(churn_threshold=0.7, min_labels=500), cfg, record=True)
    for n, o in enumerate(sp.calibration):
        replay.feed(o.customer_id, order_event(o, n), o.ts)
    cut = sp.cutoff
    replay.advance(cut)
    bundle = replay.trainer.bundle()
    views = [ProfileView(c, cut, replay.profiles.states[c]) for c in sp.customers]
    p = np.array([s.churn_probability for s in bundle.score_many(views)])
    labels = [e.label for e in replay.label_stream]
    info = {
        "alert_list": [(0.7, a.customer_id, a.event_time, horizon_days * DAY)
                       for a in replay.alerts],
        "labels": len(labels),
        "label_positive_rate": float(np.mean(labels)) if labels else math.nan,
        "snapshots": replay.snapshots,
        "alerts": len(replay.alerts),
        "alerted_customers": len({a.customer_id for a in replay.alerts}),
    }
    return p, info


# ---------------------------------------------------------------- designs


@dataclass(frozen=True, slots=True)
class Design:
    """One way to turn the order stream into training examples and a churn model."""

    name: str
    #: "activity": a snapshot at each order plus idle checks every week up to 3 H after the
    #: last order (the current rule); "census": every known customer on a weekly event-time
    #: grid, whatever they did (the population the read API scores).
    selection: str = "census"
    #: Weight of each example: "one" or "per_horizon" (a customer's examples within one
    #: horizon share a total weight of 1, so a long idle spell cannot outvote the population).
    weighting: str = "one"
    #: "resolve": learn each label when it is known (an early comeback = 0 before the
    #: churned ones of the same week can be known); "horizon": learn every label at t + H.
    label_at: str = "horizon"
    #: "current" (MODEL_FEATURES), "rhythm" or "rhythm+missed" (BG/NBD's P(alive) term).
    features: str = "rhythm"
    horizon: str = "rhythm"  # "rhythm" (online gap quantile) or a number of days
    learner: str = "bayes"
    class_weight: bool = False
    #: Order of labels learned at the same event time: "arrival" (as labelled: comebacks
    #: first, then the whole expired week) or "hash" (a fixed pseudo-random interleave).
    tie_break: str = "hash"
    #: Give the model log(H) as a feature, so examples labelled under a shorter horizon
    #: (the rhythm grows as longer gaps complete) teach it how churn depends on H.
    horizon_feature: bool = False


#: The default ``min_labels_before_alerts`` and candidate thresholds for the alert figures.
MIN_LABELS_BEFORE_ALERTS = 500
ALERT_THRESHOLDS = (0.7, 0.8, 0.9)


def alert_rows(name: str, alerts: Sequence[tuple[float, str, float, float]],
               orders: Sequence[Order], sp: Split) -> list[dict[str, Any]]:
    """Per threshold: alerts per customer, precision (no order within H after the alert)."""
    by_customer: dict[str, list[float]] = {}
    for o in orders:
        by_customer.setdefault(o.customer_id, []).append(o.ts)
    rows = []
    for thr in ALERT_THRESHOLDS:
        mine = [a for a in alerts if a[0] == thr]
        right = [not any(at < t <= at + h for t in by_customer[cid]) for _, cid, at, h in mine]
        last30 = [r for r, a in zip(right, mine, strict=True) if a[2] > sp.cutoff - 30 * DAY]
        rows.append({
            "design": name, "threshold": thr, "alerts": len(mine),
            "per_customer": len(mine) / len(sp.customers),
            "customers_alerted": len({a[1] for a in mine}) / len(sp.customers),
            "precision_H": float(np.mean(right)) if right else math.nan,
            "precision_last_30d": float(np.mean(last30)) if last30 else math.nan,
        })
    return rows


@dataclass
class _Cust:
    pending: tuple[Snapshot, ...] = ()
    last_order: float | None = None
    #: Snapshot times whose horizon is still open (their value target is still growing).
    open: list[float] = field(default_factory=list)
    #: Per alert threshold: alerted in the current at-risk episode (re-armed by an order).
    alerted: set[float] = field(default_factory=set)


@dataclass(slots=True)
class _Meta:
    """What the driver keeps beside a snapshot: its horizon, weight and the spend after it."""

    horizon_s: float
    weight: float
    features: dict[str, float]
    spend_after: float = 0.0


class Learner:
    """A River logistic pipeline (or a variant) behind one learn/predict interface."""

    def __init__(self, kind: str, features: Sequence[str]) -> None:
        from river import compose, linear_model, optim, preprocessing

        self.kind = kind
        if kind == "bayes":
            self.model: Any = BayesLogit(features)
        elif kind == "bayes-forget":
            self.model = BayesLogit(features, forget_after=20_000)
        elif kind == "logreg":  # the current default
            self.model = compose.Pipeline(
                preprocessing.StandardScaler(),
                linear_model.LogisticRegression(optimizer=optim.SGD(0.05), l2=1e-4),
            )
        elif kind == "logreg-noscale":  # features are already on log scales: no drifting scaler
            self.model = linear_model.LogisticRegression(optimizer=optim.SGD(0.05), l2=1e-4)
        elif kind == "logreg-ilr":  # intercept learns as fast as the weights
            self.model = compose.Pipeline(
                preprocessing.StandardScaler(),
                linear_model.LogisticRegression(optimizer=optim.SGD(0.05), l2=1e-4,
                                                intercept_lr=0.05),
            )
        elif kind == "logreg-adam":
            self.model = compose.Pipeline(
                preprocessing.StandardScaler(),
                linear_model.LogisticRegression(optimizer=optim.Adam(0.01), l2=1e-4,
                                                intercept_lr=0.01),
            )
        else:
            raise ValueError(kind)

    def predict(self, x: Mapping[str, float]) -> float:
        """P(churn)."""
        if isinstance(self.model, BayesLogit):
            return self.model.predict_proba_one(x)
        return float(self.model.predict_proba_one(dict(x)).get(1, 0.0))

    def learn(self, x: Mapping[str, float], y: int, w: float) -> None:
        """One weighted example."""
        self.model.learn_one(dict(x), y, w=w)


@dataclass
class StudyRun:
    """The outcome of one design: cutoff scores, horizon, training-label statistics."""

    p: np.ndarray
    value: np.ndarray
    horizon_days: float
    labels: int
    positive_rate: float
    weight_share_top5pct: float
    horizons: list[tuple[str, float]]
    alerts: list[tuple[float, str, float, float]] = field(default_factory=list)


def _missed_orders(view: ProfileView, typical_gap_days: float) -> float:
    """BG/NBD's P(alive) term: repeat orders x log((T + g) / (t_x + g)) (days)."""
    orders = view.get("o")
    first, last = view.raw.get("fo"), view.raw.get("lo")
    if first is None or last is None or orders < 2:
        return 0.0
    tenure = (view.as_of - float(first)) / DAY
    span = (float(last) - float(first)) / DAY
    g = typical_gap_days
    return (orders - 1) * math.log((tenure + g) / (span + g))


def _mix(customer_id: str, at: float) -> int:
    """A fixed pseudo-random rank for (customer, snapshot time)."""
    digest = hashlib.blake2b(f"{customer_id}@{at}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class StudyDriver:
    """Streams orders through one :class:`Design`: snapshots, delayed labels, learning."""

    def __init__(self, design: Design, start: float, grid_days: float = 7.0) -> None:
        self.d = design
        self.grid_s = grid_days * DAY
        # The clock only expires cart/order links, which purchase-only data never makes.
        self.profiles = InMemoryProfiles.empty(clock=lambda: start)
        self.rhythm = GapQuantile()
        names: tuple[str, ...] = MODEL_FEATURES
        if design.features.startswith("rhythm"):
            names = RHYTHM_FEATURES + (("missed",) if design.features == "rhythm+missed" else ())
        if design.horizon_feature:
            names = (*names, "log_horizon_days")
        self.learner = Learner(design.learner, names)
        self.value = ValueModel(names)
        self.custs: dict[str, _Cust] = {}
        self.meta: dict[tuple[str, float], _Meta] = {}
        #: Churn labels to learn: (learn at, seq, example, weight).
        self.due: list[tuple[float, int, LabelledExample, float]] = []
        #: Value targets complete at t + H: (t + H, customer, t).
        self.value_due: list[tuple[float, str, float]] = []
        self.expiry: list[tuple[float, str]] = []
        self.idle: list[tuple[float, str, float]] = []
        self.next_grid = start + self.grid_s
        self.seq = 0
        self.labels = 0
        self.positives = 0
        self.weight_by_customer: dict[str, float] = {}
        self.horizon_path: list[tuple[str, float]] = []
        #: One alert per at-risk episode: (threshold, customer, event time, horizon s).
        self.alerts: list[tuple[float, str, float, float]] = []

    def horizon_s(self) -> float:
        """The horizon in use now."""
        if self.d.horizon == "rhythm":
            return horizon_days(self.rhythm) * DAY
        return float(self.d.horizon) * DAY

    def features(self, cid: str, at: float) -> dict[str, float]:
        """The design's features of a customer as of ``at``."""
        view = ProfileView(cid, at, self.profiles.states[cid])
        if self.d.features == "current":
            x = model_features(view)
        else:
            x = rhythm_features(view, typical_gap_days=self.rhythm.typical_gap_days())
        if self.d.features == "rhythm+missed":
            x["missed"] = _missed_orders(view, self.rhythm.typical_gap_days())
        if self.d.horizon_feature:
            x["log_horizon_days"] = math.log(self.horizon_s() / DAY)
        return x

    def snapshot(self, cid: str, cust: _Cust, at: float) -> None:
        """Freeze a customer's features into a pending snapshot under the current horizon."""
        h = self.horizon_s()
        # Per-horizon weighting: a customer's grid snapshots within one horizon share weight 1.
        w = min(1.0, self.grid_s / h) if self.d.weighting == "per_horizon" else 1.0
        x = self.features(cid, at)
        cust.pending = (*cust.pending, Snapshot(cid, at, x, 0))
        cust.open.append(at)
        self.meta[(cid, at)] = _Meta(h, w, x)
        heapq.heappush(self.expiry, (at + h, cid))
        heapq.heappush(self.value_due, (at + h, cid, at))
        if self.labels >= MIN_LABELS_BEFORE_ALERTS:
            p = self.learner.predict(x)
            for thr in ALERT_THRESHOLDS:
                if p >= thr and thr not in cust.alerted:
                    cust.alerted.add(thr)
                    self.alerts.append((thr, cid, at, h))

    def _label(self, cid: str, fn: Callable[..., Any], at: float) -> None:
        cust = self.custs[cid]
        keep: list[Snapshot] = []
        for snap in cust.pending:  # each snapshot against the horizon it was taken under
            m = self.meta[(cid, snap.scored_at)]
            kept, lab = fn((snap,), at, m.horizon_s)
            keep.extend(kept)
            for ex in lab:
                learn_at = ex.labelled_at if self.d.label_at == "resolve" else (
                    snap.scored_at + m.horizon_s)
                self.seq += 1
                order = self.seq if self.d.tie_break == "arrival" else _mix(cid, snap.scored_at)
                heapq.heappush(self.due, (learn_at, order, ex, m.weight))
        cust.pending = tuple(keep)

    def _learn_due(self, now: float) -> None:
        while self.value_due and self.value_due[0][0] <= now:
            _, cid, at = heapq.heappop(self.value_due)
            m = self.meta.pop((cid, at))
            self.custs[cid].open.remove(at)
            self.value.learn(m.features, m.spend_after)
        while self.due and self.due[0][0] <= now:
            _, _, ex, w = heapq.heappop(self.due)
            self._learn_churn(ex, w)

    def _learn_churn(self, ex: LabelledExample, w: float) -> None:
        y = ex.label
        if self.d.class_weight:
            rate = (self.positives + 1) / (self.labels + 2)
            w *= 0.5 / rate if y else 0.5 / (1 - rate)
        self.learner.learn(ex.snapshot.features, y, w)
        self.labels += 1
        self.positives += y
        cid = ex.snapshot.customer_id
        self.weight_by_customer[cid] = self.weight_by_customer.get(cid, 0.0) + w

    def advance(self, now: float) -> None:
        """Move event time: grid and idle snapshots, horizon expiry, learning."""
        while True:
            t_grid = self.next_grid if self.d.selection == "census" else math.inf
            t_idle = self.idle[0][0] if self.idle else math.inf
            t = min(t_grid, t_idle)
            if t > now:
                break
            self._expire(t)
            self._learn_due(t)
            if t == t_grid:
                for cid, cust in self.custs.items():
                    self.snapshot(cid, cust, t)
                self.next_grid += self.grid_s
                continue
            _, cid, last = heapq.heappop(self.idle)
            cust = self.custs[cid]
            if cust.last_order == last:  # else the customer came back: stale schedule
                self.snapshot(cid, cust, t)
                if t + self.grid_s - last <= 3 * self.horizon_s():
                    heapq.heappush(self.idle, (t + self.grid_s, cid, last))
        self._expire(now)
        self._learn_due(now)

    def _expire(self, now: float) -> None:
        while self.expiry and self.expiry[0][0] <= now:
            _, cid = heapq.heappop(self.expiry)
            self._label(cid, on_watermark, now)

    def order(self, o: Order, n: int) -> None:
        """One order: profile update, labels it resolves, rhythm, activity snapshot."""
        self.advance(o.ts)
        ev = order_event(o, n)
        ns = event_namespace(ev)
        self.profiles.apply(o.customer_id, ev["event_id"], event_ops(ns, o.ts), o.ts,
                            event_lane(ns))
        cust = self.custs.setdefault(o.customer_id, _Cust())
        for at in cust.open:
            m = self.meta[(o.customer_id, at)]
            if at < o.ts <= at + m.horizon_s:
                m.spend_after += o.dollars
        self._label(o.customer_id, on_activity, o.ts)
        if cust.last_order is not None and o.ts > cust.last_order:
            self.rhythm.add((o.ts - cust.last_order) / DAY)
        if cust.last_order is None or o.ts > cust.last_order:
            cust.last_order = o.ts
            cust.alerted.clear()  # came back: a new episode may be alerted
            if self.d.selection == "activity":
                heapq.heappush(self.idle, (o.ts + self.grid_s, o.customer_id, o.ts))
                if not cust.open or o.ts - max(cust.open) >= DAY:
                    self.snapshot(o.customer_id, cust, o.ts)
        h = round(self.horizon_s() / DAY, 1)
        if not self.horizon_path or self.horizon_path[-1][1] != h:
            self.horizon_path.append((datetime.fromtimestamp(o.ts, UTC).date().isoformat(), h))


def run_design(design: Design, sp: Split) -> StudyRun:
    """Stream the calibration orders through one design; score everyone at the cutoff."""
    drv = StudyDriver(design, sp.calibration[0].ts)
    for n, o in enumerate(sp.calibration):
        drv.order(o, n)
    cut = sp.cutoff
    drv.advance(cut)
    xs = [drv.features(cid, cut) for cid in sp.customers]
    model = drv.learner.model
    if isinstance(model, BayesLogit):
        # The production path: frozen copies, scored as one vectorised batch.
        p, v = score_value(model.freeze(), drv.value.freeze(), xs)
    else:
        p = np.array([drv.learner.predict(x) for x in xs])
        v = np.array([drv.value.predict(x, 1.0 - pi) for x, pi in zip(xs, p, strict=True)])
    w = np.sort(np.array(list(drv.weight_by_customer.values())))[::-1]
    top = float(w[: max(1, len(w) // 20)].sum() / w.sum()) if len(w) else math.nan
    return StudyRun(p, v, drv.horizon_s() / DAY, drv.labels,
                    drv.positives / max(1, drv.labels), top, drv.horizon_path, drv.alerts)


# ---------------------------------------------------------------- report


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def print_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> None:
    """A fixed-width table of ``cols``."""
    widths = [max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(r.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=True)))


_BEFORE = {"selection": "activity", "label_at": "resolve", "features": "current",
           "learner": "logreg", "tie_break": "arrival"}
WINNER = Design("WINNER census+rhythm feats+t+H+logH, Bayes logit", horizon_feature=True)

DESIGNS: tuple[Design, ...] = (
    Design("replica of BEFORE in this driver (H=30)", horizon="30", **_BEFORE),  # type: ignore[arg-type]
    Design("BEFORE but H=rhythm", **_BEFORE),  # type: ignore[arg-type]
    Design("SGD, census+rhythm+t+H, labels as they arrive", learner="logreg",
           tie_break="arrival"),
    Design("SGD, census+rhythm+t+H, interleaved", learner="logreg"),
    Design("Bayes, activity+current feats, at resolve", selection="activity",
           label_at="resolve", features="current"),
    Design("Bayes, activity+rhythm feats, at resolve", selection="activity",
           label_at="resolve"),
    Design("Bayes, activity+rhythm feats, t+H", selection="activity"),
    Design("Bayes, census+current feats, t+H", features="current"),
    Design("Bayes, census+rhythm feats, t+H (no logH)"),
    WINNER,
    replace(WINNER, name="winner, learn at resolve", label_at="resolve"),
    replace(WINNER, name="winner, per-horizon weights", weighting="per_horizon"),
    replace(WINNER, name="winner, class-balanced", class_weight=True),
    replace(WINNER, name="winner, labels as they arrive", tie_break="arrival"),
    replace(WINNER, name="winner, forget after 20k", learner="bayes-forget"),
    replace(WINNER, name="winner, activity selection", selection="activity"),
    replace(WINNER, name="winner + BG/NBD P(alive) term", features="rhythm+missed"),
    Design("Bayes census rhythm, fixed H=132", horizon="132"),
    Design("Bayes census rhythm, fixed H=90", horizon="90"),
    Design("Bayes census rhythm, fixed H=60", horizon="60"),
)


def ceiling(sp: Split) -> list[dict[str, Any]]:
    """Batch models on the winner's cutoff features, 5-fold CV on churn_39w: the data's limit."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    drv = StudyDriver(WINNER, sp.calibration[0].ts)
    for n, o in enumerate(sp.calibration):
        drv.order(o, n)
    drv.advance(sp.cutoff)
    rows = []
    for cid in sp.customers:
        view = ProfileView(cid, sp.cutoff, drv.profiles.states[cid])
        x = rhythm_features(view, typical_gap_days=drv.rhythm.typical_gap_days())
        x["missed"] = _missed_orders(view, drv.rhythm.typical_gap_days())
        x["log_items_per_order"] = math.log1p(view.get("it") / max(1.0, view.get("o")))
        rows.append(x)
    y = sp.churn_within(sp.holdout_days)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    out = []
    for name, cols in (("rhythm features", RHYTHM_FEATURES),
                       ("+ P(alive) term + items per order",
                        (*RHYTHM_FEATURES, "missed", "log_items_per_order"))):
        x_arr = np.array([[r[c] for c in cols] for r in rows])
        for kind, model in (
            ("batch LR", make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))),
            ("gradient boosting", HistGradientBoostingClassifier(max_depth=3,
                                                                 learning_rate=0.05,
                                                                 random_state=0)),
        ):
            p = cross_val_predict(model, x_arr, y, cv=folds, method="predict_proba")[:, 1]
            out.append({"design": f"{kind}, {name} (CV)", "auc_39w": roc_auc(p, y)})
    return out


ROBUSTNESS_CUTOFFS = ("1997-06-30", "1997-09-30", "1997-12-31")


def robustness(orders: Sequence[Order]) -> list[dict[str, Any]]:
    """BEFORE, the winner and the baselines at three cutoffs (the choices must not hinge on one)."""
    rows: list[dict[str, Any]] = []
    for day in ROBUSTNESS_CUTOFFS:
        cutoff = datetime.strptime(day, "%Y-%m-%d").replace(hour=23, minute=59, second=59,
                                                            tzinfo=UTC)
        sp = split(orders, cutoff)
        p0, _ = run_before(sp)
        win = run_design(WINNER, sp)
        h = win.horizon_days
        bg = bgnbd_baselines(sp, h)
        lr_h = logistic_baseline(sp, sp.churn_within(h))
        lr_hold = logistic_baseline(sp, sp.churn_within(sp.holdout_days))
        recency = rfm_table(sp)["days_since_last"]
        for name, prob, rank, value in (
            ("BEFORE (H=30)", p0, p0, None),
            ("BG/NBD (+GG)", bg["pH"], bg["p39"], bg["value39"]),
            ("batch LR RFM+tenure", lr_h, lr_hold, None),
            ("recency alone", None, recency, None),
            ("WINNER", win.p, win.p, win.value),
        ):
            row = churn_row(name, prob, rank, sp, 30.0 if name.startswith("BEFORE") else h)
            row = {"cutoff": day, "holdout_days": sp.holdout_days, **row}
            if value is not None:
                row.update({k: v for k, v in value_row(name, value, sp).items() if k != "design"})
            rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Run the baselines, the current model and every design; print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--only", default=None, help="run only designs whose name contains this")
    ap.add_argument("--cutoff", default="1997-09-30",
                    help="calibration cutoff (a robustness check; the protocol's is 1997-09-30)")
    ap.add_argument("--robustness", action="store_true",
                    help="only BEFORE, the winner and the baselines, at three cutoffs")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.robustness:
        rows = robustness(load_orders(sample_path()))
        print_table(rows, ["cutoff", "holdout_days", "design", "H_days", "auc_39w",
                           "pr_auc_39w", "brier_H", "base_rate_H", "mean_p",
                           "calib_max_dev_H", "spearman", "top10_share"])
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1, default=str))
        return
    cutoff = datetime.strptime(args.cutoff, "%Y-%m-%d").replace(
        hour=23, minute=59, second=59, tzinfo=UTC)
    sp = split(load_orders(sample_path()), cutoff)
    y39 = sp.churn_within(sp.holdout_days)
    print(f"CDNOW sample: {len(sp.customers)} customers, {len(sp.calibration)} orders up to "
          f"{args.cutoff}; holdout {sp.holdout_days:.0f} days, churn base rate {y39.mean():.3f}")
    churn_rows: list[dict[str, Any]] = []
    value_rows: list[dict[str, Any]] = []
    info_rows: list[dict[str, Any]] = []
    t = rfm_table(sp)

    def baselines(h: float, tag: str) -> None:
        bg = bgnbd_baselines(sp, h)
        churn_rows.append(churn_row(f"BG/NBD [{tag}]", bg["pH"], bg["p39"], sp, h))
        lr_h = logistic_baseline(sp, sp.churn_within(h))
        lr_39 = logistic_baseline(sp, y39)
        row = churn_row(f"batch LR RFM+tenure [{tag}]", lr_h, lr_39, sp, h)
        churn_rows.append(row)
        churn_rows.append(churn_row(f"recency alone [{tag}]", None, t["days_since_last"], sp, h))
        if not value_rows:
            value_rows.append(value_row("BG/NBD + Gamma-Gamma (39 w)", bg["value39"], sp))
            value_rows.append(value_row("past spend", t["spend"], sp))

    orders = load_orders(sample_path())
    alert_table: list[dict[str, Any]] = []
    p0, info0 = run_before(sp, 30.0)
    alert_table += [r for r in alert_rows("BEFORE (its own policy: threshold 0.7, 14-day "
                                          "cooldown)", info0.pop("alert_list"), orders, sp)
                    if r["threshold"] == 0.7]
    baselines(30.0, "H=30")
    churn_rows.append(churn_row("BEFORE: Replay+Trainer defaults (H=30)", p0, p0, sp, 30.0))
    info_rows.append({"design": "BEFORE", **info0})
    seen_h: set[float] = {30.0}
    for d in DESIGNS:
        if args.only and args.only not in d.name:
            continue
        run = run_design(d, sp)
        h = round(run.horizon_days, 1)
        if h not in seen_h:
            baselines(h, f"H={h:g}")
            seen_h.add(h)
        churn_rows.append(churn_row(d.name, run.p, run.p, sp, run.horizon_days))
        value_rows.append(value_row(d.name, run.value, sp))
        if d is WINNER:
            alert_table += alert_rows(d.name + ", one per episode", run.alerts, orders, sp)
        info_rows.append({"design": d.name, "labels": run.labels,
                          "label_positive_rate": run.positive_rate,
                          "top5pct_customers_weight": run.weight_share_top5pct,
                          "horizon_path": run.horizons[-4:]})
    cols = ["design", "H_days", "auc_39w", "pr_auc_39w", "auc_H", "brier_H", "base_rate_H",
            "mean_p", "calib_max_dev_H", "alert_share", "alert_precision_H"]
    print("\nChurn (ROC/PR AUC on churn_39w; Brier and calibration on churn_H)")
    print_table(churn_rows, cols)
    print("\nTraining labels per design")
    print_table(info_rows, ["design", "labels", "label_positive_rate",
                            "top5pct_customers_weight", "horizon_path"])
    print("\nAlerts raised while streaming up to the cutoff (precision: no order within H after)")
    print_table(alert_table, ["design", "threshold", "alerts", "per_customer",
                              "customers_alerted", "precision_H", "precision_last_30d"])
    print("\nCeiling: batch models fitted at the cutoff on the same features")
    print_table(ceiling(sp), ["design", "auc_39w"])
    print("\nValue (holdout spend over 39 weeks)")
    print_table(value_rows, ["design", "spearman", "top10_share"])
    for r in churn_rows:
        if "deciles_H" in r:
            print(f"deciles {r['design']}: {r['deciles_H']}")
    if args.json:
        args.json.write_text(json.dumps({"churn": churn_rows, "value": value_rows,
                                         "labels": info_rows, "alerts": alert_table},
                                        indent=1, default=str))


if __name__ == "__main__":
    main()
