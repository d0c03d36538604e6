"""Online customer segmentation: features, clusterers, frozen centres and readable names.

The trainer learns a River clusterer over a few standardised, business-meaningful
features (recency, frequency, value, engagement, cart behaviour, tenure). For
scoring, the scaler and the centres are frozen into :class:`FrozenCentres` (numpy),
so distances are cheap, batchable and identical on every worker. Segment ids are
the clusterer's centre indices; names come from each segment's profile in business
units (:func:`name_segments`), unique within a model version.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from river import cluster

from streamproc.core.features import MODEL_FEATURES

#: The standardised inputs of the clusterer (see :func:`segment_features`).
SEGMENT_FEATURES: Final[tuple[str, ...]] = (
    "log_recency_weeks",
    "log_orders",
    "log_aov",
    "conversion_rate",
    "cart_abandonment_rate",
    "log_views",
    "log_tenure",
)

#: Business-unit profile kept per segment (medians), in the order shown to people.
PROFILE_FIELDS: Final[tuple[str, ...]] = (
    "recency_days",
    "orders",
    "net_spend",
    "average_order_value",
    "conversion_rate",
    "cart_abandonment_rate",
    "tenure_days",
)


def segment_features(features: Mapping[str, float]) -> dict[str, float]:
    """Clusterer inputs from a :func:`model_features` dict (long tails log-compressed).

    Recency is taken in weeks before the log so that a few days' gap between visits
    of an active customer weighs little next to weeks of silence.
    """
    return {
        "log_recency_weeks": math.log1p(features["recency_days"] / 7.0),
        "log_orders": features["log_orders"],
        "log_aov": features["log_aov"],
        "conversion_rate": features["conversion_rate"],
        "cart_abandonment_rate": features["cart_abandonment_rate"],
        "log_views": features["log_views"],
        "log_tenure": math.log1p(features["tenure_days"]),
    }


def business_profile(features: Mapping[str, float]) -> tuple[float, ...]:
    """The :data:`PROFILE_FIELDS` of one customer in business units."""
    return (
        features["recency_days"],
        math.expm1(features["log_orders"]),
        math.expm1(features["log_net_spend"]),
        math.expm1(features["log_aov"]),
        features["conversion_rate"],
        features["cart_abandonment_rate"],
        features["tenure_days"],
    )


def make_clusterer(kind: str, n_segments: int, seed: int) -> Any:
    """A River clusterer by name (the candidates ``load_tests/model_selection.py`` compares)."""
    if kind == "kmeans":
        return cluster.KMeans(n_clusters=n_segments, halflife=0.05, sigma=1.0, seed=seed)
    if kind == "kmeans-h0.2":
        return cluster.KMeans(n_clusters=n_segments, halflife=0.2, sigma=1.0, seed=seed)
    if kind == "kmeans-h0.01":
        return cluster.KMeans(n_clusters=n_segments, halflife=0.01, sigma=1.0, seed=seed)
    if kind == "streamkmeans":
        streamkmeans: Any = cluster.STREAMKMeans
        return streamkmeans(
            chunk_size=200, n_clusters=n_segments, halflife=0.05, sigma=1.0, seed=seed
        )
    if kind == "clustream":
        return cluster.CluStream(
            n_macro_clusters=n_segments, max_micro_clusters=50, time_gap=500, seed=seed
        )
    if kind == "dbstream":
        return cluster.DBSTREAM(clustering_threshold=1.5, fading_factor=0.001, cleanup_interval=500)
    raise ValueError(f"unknown clusterer {kind!r}")


def clusterer_centres(model: Any, n_segments: int) -> dict[int, dict[str, float]]:
    """The clusterer's centres as plain dicts (missing features read as 0)."""
    centers = getattr(model, "centers", None) or {}
    return {int(i): {f: float(c.get(f, 0.0)) for f in SEGMENT_FEATURES} for i, c in centers.items()}


@dataclass(frozen=True, slots=True)
class FrozenCentres:
    """Scaler and centres as numpy arrays: ``distances`` is pure and batchable."""

    mean: np.ndarray
    scale: np.ndarray  # 1/std, 0 where the variance is 0 (River's convention)
    centres: np.ndarray  # (k, d) in standardised space
    ids: tuple[int, ...]

    @classmethod
    def build(
        cls,
        means: Mapping[str, float],
        variances: Mapping[str, float],
        centres: Mapping[int, Mapping[str, float]],
        n_segments: int,
    ) -> FrozenCentres:
        """Freeze River state; segments without a centre yet sit at the origin."""
        mean = np.array([means.get(f, 0.0) for f in SEGMENT_FEATURES], dtype=np.float64)
        var = np.array([variances.get(f, 0.0) for f in SEGMENT_FEATURES], dtype=np.float64)
        scale = np.divide(1.0, np.sqrt(var), out=np.zeros_like(var), where=var > 0)
        ids = tuple(sorted(centres)) or tuple(range(n_segments))
        rows = [[float(centres.get(i, {}).get(f, 0.0)) for f in SEGMENT_FEATURES] for i in ids]
        return cls(mean, scale, np.array(rows, dtype=np.float64).reshape(len(ids), -1), ids)

    def centre_profiles(self) -> dict[int, dict[str, float]]:
        """Each centre in the business units of :data:`PROFILE_FIELDS` (``customers`` 0).

        Names a segment that no sampled customer is nearest to by where its centre is,
        rather than by a placeholder.
        """
        raw = np.where(self.scale > 0, self.centres / np.where(self.scale > 0, self.scale, 1.0),
                       0.0) + self.mean
        col = {f: j for j, f in enumerate(SEGMENT_FEATURES)}
        out: dict[int, dict[str, float]] = {}
        for i, sid in enumerate(self.ids):
            r = raw[i]
            orders = max(0.0, math.expm1(r[col["log_orders"]]))
            aov = max(0.0, math.expm1(r[col["log_aov"]]))
            out[sid] = {
                "recency_days": max(0.0, 7.0 * math.expm1(r[col["log_recency_weeks"]])),
                "orders": orders, "net_spend": orders * aov, "average_order_value": aov,
                "conversion_rate": float(r[col["conversion_rate"]]),
                "cart_abandonment_rate": float(r[col["cart_abandonment_rate"]]),
                "tenure_days": max(0.0, math.expm1(r[col["log_tenure"]])), "customers": 0.0,
            }
        return out

    def standardise(self, x: np.ndarray) -> np.ndarray:
        """Rows of raw segment features to standardised space."""
        z: np.ndarray = (x - self.mean) * self.scale
        return z

    def distances(self, x: np.ndarray) -> np.ndarray:
        """Euclidean distances (n, k) from raw feature rows (n, d) to each centre."""
        z = self.standardise(x)
        diff = z[:, None, :] - self.centres[None, :, :]
        out: np.ndarray = np.sqrt(np.sum(diff * diff, axis=2))
        return out


def feature_matrix(rows: Sequence[Mapping[str, float]]) -> np.ndarray:
    """Segment-feature rows (from :func:`segment_features`) as an (n, d) array."""
    return np.array([[r[f] for f in SEGMENT_FEATURES] for r in rows], dtype=np.float64).reshape(
        len(rows), len(SEGMENT_FEATURES)
    )


# ---------------------------------------------------------------- profiles and names


@dataclass
class ProfileSample:
    """Latest segment features and business profile of the most recently learned customers.

    Bounded (LRU by customer) so one very active customer counts once; medians per
    segment are recomputed against the current centres when a bundle is made.
    """

    capacity: int = 4096
    rows: OrderedDict[str, tuple[tuple[float, ...], tuple[float, ...]]] = field(
        default_factory=OrderedDict
    )

    def add(self, customer_id: str, features: Mapping[str, float]) -> None:
        """Record (or refresh) one customer."""
        seg = segment_features(features)
        self.rows[customer_id] = (
            tuple(seg[f] for f in SEGMENT_FEATURES),
            business_profile(features),
        )
        self.rows.move_to_end(customer_id)
        while len(self.rows) > self.capacity:
            self.rows.popitem(last=False)

    def profiles(self, assign: Callable[[np.ndarray], np.ndarray]) -> dict[int, dict[str, float]]:
        """Median business profile (plus ``customers``, the sample count) per segment id."""
        if not self.rows:
            return {}
        x = np.array([r[0] for r in self.rows.values()], dtype=np.float64)
        b = np.array([r[1] for r in self.rows.values()], dtype=np.float64)
        seg = assign(x)
        out: dict[int, dict[str, float]] = {}
        for sid in np.unique(seg):
            rows = b[seg == sid]
            prof = {f: float(np.median(rows[:, j])) for j, f in enumerate(PROFILE_FIELDS)}
            prof["customers"] = float(len(rows))
            out[int(sid)] = prof
        return out


@dataclass(frozen=True, slots=True)
class NamingRules:
    """Thresholds (business units) for naming a segment from its median profile."""

    lapsed_days: float = 45.0
    at_risk_days: float = 14.0
    new_days: float = 30.0
    high_value_aov_ratio: float = 1.5
    bargain_aov_ratio: float = 0.6
    window_shopper_orders: float = 0.5


def _base_name(p: Mapping[str, float], buyers_aov: float, rules: NamingRules) -> str:
    if p["recency_days"] >= rules.lapsed_days:
        return "lapsed"
    if p["tenure_days"] <= rules.new_days:
        return "new"
    if p["recency_days"] >= rules.at_risk_days:
        return "at risk"
    if p["orders"] < rules.window_shopper_orders:
        return "window shoppers"
    if buyers_aov > 0 and p["average_order_value"] >= rules.high_value_aov_ratio * buyers_aov:
        return "high-value loyal"
    if buyers_aov > 0 and p["average_order_value"] <= rules.bargain_aov_ratio * buyers_aov:
        return "bargain hunters"
    return "regulars"


def name_segments(
    profiles: Mapping[int, Mapping[str, float]],
    ids: Sequence[int],
    rules: NamingRules | None = None,
) -> dict[int, str]:
    """A unique readable name per segment id; look-alikes are told apart by spend."""
    rules = rules or NamingRules()
    buyers = [p["average_order_value"] for p in profiles.values() if p["orders"] >= 1]
    buyers_aov = float(np.median(buyers)) if buyers else 0.0
    base: dict[int, str] = {}
    for sid in ids:
        p = profiles.get(sid)
        base[sid] = f"segment {sid} (empty)" if p is None else _base_name(p, buyers_aov, rules)
    names: dict[int, str] = {}
    for name in dict.fromkeys(base.values()):
        same = [s for s in ids if base[s] == name]
        if len(same) == 1:
            names[same[0]] = name
            continue
        names.update(_told_apart(name, same, profiles))
    return names


#: What tells look-alike segments apart, in order of preference: (profile field, sort
#: sign, the two-way labels, the rank word). A label must be true of the medians, so a
#: field is used only when it separates every one of the look-alikes.
_SEPARATORS: Final = (
    ("net_spend", -1.0, ("higher spend", "lower spend"), "spend rank"),
    ("orders", -1.0, ("more orders", "fewer orders"), "orders rank"),
    ("recency_days", 1.0, ("more recent", "less recent"), "recency rank"),
)


def _told_apart(name: str, same: Sequence[int],
                profiles: Mapping[int, Mapping[str, float]]) -> dict[int, str]:
    """Names for segments whose base name is the same, by a measured difference."""
    for field_name, sign, pair, word in _SEPARATORS:
        values = [round(profiles.get(s, {}).get(field_name, 0.0), 2) for s in same]
        if len(set(values)) < len(values):
            continue  # a tie: "higher" would not be true of one of them
        ranked = sorted(same, key=lambda s: sign * profiles.get(s, {}).get(field_name, 0.0))
        if len(ranked) == 2:
            return {sid: f"{name} ({pair[i]})" for i, sid in enumerate(ranked)}
        return {sid: f"{name} ({word} {i + 1})" for i, sid in enumerate(ranked)}
    return {sid: f"{name} ({i + 1})" for i, sid in enumerate(sorted(same))}


# ---------------------------------------------------------------- evaluation


def adjusted_rand_index(truth: Sequence[Any], predicted: Sequence[Any]) -> float:
    """Adjusted Rand index of two labelings (1 = identical partitions, ~0 = chance)."""
    if len(truth) != len(predicted):
        raise ValueError("labelings differ in length")
    n = len(truth)
    if n < 2:
        return 1.0
    _, t = np.unique(np.asarray(truth, dtype=object).astype(str), return_inverse=True)
    _, p = np.unique(np.asarray(predicted, dtype=object).astype(str), return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1), dtype=np.float64)
    np.add.at(table, (t, p), 1.0)

    def pairs(x: np.ndarray) -> float:
        return float(np.sum(x * (x - 1.0) / 2.0))

    index = pairs(table)
    a = pairs(table.sum(axis=1))
    b = pairs(table.sum(axis=0))
    expected = a * b / (n * (n - 1) / 2.0)
    top = (a + b) / 2.0
    if top == expected:
        return 1.0
    return (index - expected) / (top - expected)


def segment_matrix(x: np.ndarray) -> np.ndarray:
    """:func:`segment_features` for rows in :data:`MODEL_FEATURES` order, vectorised."""
    return np.column_stack(
        [
            np.log1p(x[:, _COL["recency_days"]] / 7.0),
            x[:, _COL["log_orders"]],
            x[:, _COL["log_aov"]],
            x[:, _COL["conversion_rate"]],
            x[:, _COL["cart_abandonment_rate"]],
            x[:, _COL["log_views"]],
            np.log1p(x[:, _COL["tenure_days"]]),
        ]
    )


_COL: Final[dict[str, int]] = {f: i for i, f in enumerate(MODEL_FEATURES)}
