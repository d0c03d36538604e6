"""Segmentation features, frozen centres, naming and the ARI metric."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from river import preprocessing

from streamproc.core.features import MODEL_FEATURES
from streamproc.core.modelset import Trainer
from streamproc.core.segments import (
    SEGMENT_FEATURES,
    FrozenCentres,
    ProfileSample,
    adjusted_rand_index,
    clusterer_centres,
    feature_matrix,
    make_clusterer,
    name_segments,
    segment_features,
    segment_matrix,
)


def random_features(rng: random.Random) -> dict[str, float]:
    return {f: rng.uniform(0.0, 5.0) for f in MODEL_FEATURES}


def test_vectorised_segment_features_match_the_dict_version() -> None:
    rng = random.Random(3)
    rows = [random_features(rng) for _ in range(50)]
    x = np.array([[r[f] for f in MODEL_FEATURES] for r in rows])
    expected = feature_matrix([segment_features(r) for r in rows])
    assert np.allclose(segment_matrix(x), expected, rtol=1e-12, atol=1e-12)


def _learn(kind: str, seed: int, points: list[dict[str, float]]) -> dict[int, dict[str, float]]:
    scaler = preprocessing.StandardScaler()
    model = make_clusterer(kind, 3, seed)
    for p in points:
        scaler.learn_one(p)
        model.learn_one(scaler.transform_one(p))
    return clusterer_centres(model, 3)


def _blobs(seed: int, n: int = 900) -> tuple[list[dict[str, float]], list[int]]:
    rng = random.Random(seed)
    centres = [rng.choice((-4.0, 0.0, 4.0)) for _ in SEGMENT_FEATURES]
    points, truth = [], []
    for i in range(n):
        k = i % 3
        points.append(
            {
                f: (k - 1) * 4.0 + c * 0 + rng.gauss(0, 0.5)
                for f, c in zip(SEGMENT_FEATURES, centres, strict=True)
            }
        )
        truth.append(k)
    return points, truth


def test_kmeans_is_deterministic_under_a_seed_and_finds_blobs() -> None:
    points, truth = _blobs(1)
    a = _learn("kmeans", 7, points)
    assert a == _learn("kmeans", 7, points)
    scaler = preprocessing.StandardScaler()
    for p in points:
        scaler.learn_one(p)
    frozen = FrozenCentres.build(scaler.means, scaler.vars, a, 3)
    assigned = np.argmin(frozen.distances(feature_matrix(points)), axis=1)
    assert adjusted_rand_index(truth, assigned.tolist()) > 0.9


def test_frozen_centres_without_training_are_usable() -> None:
    frozen = FrozenCentres.build({}, {}, {}, 4)
    d = frozen.distances(np.zeros((2, len(SEGMENT_FEATURES))))
    assert d.shape == (2, 4)
    assert frozen.ids == (0, 1, 2, 3)


def _profile(**kw: float) -> dict[str, float]:
    base = {
        "recency_days": 1.0,
        "orders": 5.0,
        "net_spend": 300.0,
        "average_order_value": 60.0,
        "conversion_rate": 0.3,
        "cart_abandonment_rate": 0.4,
        "tenure_days": 200.0,
    }
    return {**base, **kw}


def test_names_follow_business_rules_and_are_unique() -> None:
    profiles = {
        0: _profile(recency_days=90.0),
        1: _profile(tenure_days=10.0, orders=1.0),
        2: _profile(orders=0.0, average_order_value=0.0, net_spend=0.0),
        3: _profile(average_order_value=200.0, net_spend=2000.0),
        4: _profile(average_order_value=20.0, net_spend=200.0),
        5: _profile(average_order_value=18.0, net_spend=100.0),
        6: _profile(recency_days=20.0),
    }
    names = name_segments(profiles, list(range(8)))
    assert names[0] == "lapsed"
    assert names[1] == "new"
    assert names[2] == "window shoppers"
    assert names[3] == "high-value loyal"
    assert names[4] == "bargain hunters (higher spend)"
    assert names[5] == "bargain hunters (lower spend)"
    assert names[6] == "at risk"
    assert names[7] == "segment 7 (empty)"  # only without a profile: bundles give centres
    assert len(set(names.values())) == len(names)


def test_look_alikes_are_told_apart_only_by_a_difference_that_is_true() -> None:
    # Two window-shopper segments with the same (zero) spend: "higher spend" would be a lie.
    idle = {"orders": 0.0, "average_order_value": 0.0, "net_spend": 0.0}
    profiles = {0: _profile(**idle, recency_days=3.0), 1: _profile(**idle, recency_days=9.0)}
    assert name_segments(profiles, [1, 0]) == {0: "window shoppers (more recent)",
                                                1: "window shoppers (less recent)"}
    three = {i: _profile(average_order_value=20.0, net_spend=100.0 * (i + 1)) for i in range(3)}
    names = name_segments(three, [0, 1, 2])
    assert names == {2: "regulars (spend rank 1)", 1: "regulars (spend rank 2)",
                     0: "regulars (spend rank 3)"}
    same = {i: _profile(average_order_value=20.0, net_spend=100.0) for i in range(2)}
    assert name_segments(same, [0, 1]) == {0: "regulars (1)", 1: "regulars (2)"}


def test_profile_sample_is_bounded_and_counts_customers_once() -> None:
    rng = random.Random(5)
    sample = ProfileSample(capacity=10)
    for i in range(30):
        f = random_features(rng)
        f["recency_days"] = float(i)
        sample.add(f"c{i % 15}", f)
        sample.add(f"c{i % 15}", f)
    assert len(sample.rows) == 10
    profiles = sample.profiles(lambda x: np.zeros(len(x), dtype=int))
    assert profiles[0]["customers"] == 10.0


@given(st.lists(st.integers(0, 4), min_size=2, max_size=60), st.permutations(range(5)))
def test_ari_is_one_for_relabelled_partitions(labels: list[int], perm: list[int]) -> None:
    relabelled = [perm[x] for x in labels]
    assert adjusted_rand_index(labels, relabelled) == pytest.approx(1.0)


def test_ari_near_zero_for_random_labels() -> None:
    rng = random.Random(0)
    a = [rng.randrange(5) for _ in range(5000)]
    b = [rng.randrange(5) for _ in range(5000)]
    assert abs(adjusted_rand_index(a, b)) < 0.02
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)


def test_a_segment_without_sampled_customers_is_named_from_its_centre() -> None:
    rng = random.Random(3)
    rows = [random_features(rng) for _ in range(40)]
    seg = [segment_features(f) for f in rows]
    means = {k: float(np.mean([r[k] for r in seg])) for k in SEGMENT_FEATURES}
    variances = {k: float(np.var([r[k] for r in seg])) + 1e-9 for k in SEGMENT_FEATURES}
    # A centre exactly where one customer's features standardise to.
    target = rows[0]
    z = {k: (segment_features(target)[k] - means[k]) / math.sqrt(variances[k])
         for k in SEGMENT_FEATURES}
    centres = FrozenCentres.build(means, variances, {0: z}, 1)
    [(sid, prof)] = centres.centre_profiles().items()
    assert sid == 0
    assert prof["recency_days"] == pytest.approx(target["recency_days"], rel=1e-6, abs=1e-6)
    assert prof["orders"] == pytest.approx(math.expm1(target["log_orders"]), abs=1e-6)
    assert prof["customers"] == 0.0
    trainer = Trainer(n_segments=4, seed=1)
    for i, f in enumerate(rows[:3]):
        trainer.learn_profile_features(f"c{i}", f, 1e9)
    names = [s.name for s in trainer.bundle().segments.values()]
    assert not any("empty" in n for n in names)
    assert len(set(names)) == len(names)
