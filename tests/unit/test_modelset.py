"""Trainer, bundle and signed snapshots."""

from __future__ import annotations

import math
import pickle
import random

import pytest

from streamproc.core.features import DAY, InMemoryProfiles, ProfileView, model_features
from streamproc.core.labels import LabelledExample, Snapshot
from streamproc.core.modelset import (
    ModelBundle,
    SnapshotRejected,
    Trainer,
    sign,
    verify_and_load,
)

KEY = b"k" * 32
T0 = 1_700_000_000.0


def view(rng: random.Random, i: int, t: float) -> ProfileView:
    orders = rng.randint(0, 12)
    raw = {
        "o": float(orders),
        "rv": orders * rng.uniform(10, 200),
        "fs": t - rng.uniform(1, 200) * DAY,
        "lq": t - rng.uniform(0, 60) * DAY,
        "se": float(orders + rng.randint(1, 20)),
        "os": float(orders),
        "pv": float(rng.randint(0, 100)),
        "cs": float(rng.randint(0, 10)),
    }
    if orders:
        raw["fo"] = raw["fs"]
        raw["lo"] = raw["lq"]
    return ProfileView(f"c{i}", t, raw)


def trained(seed: int = 1, n: int = 1500) -> Trainer:
    rng = random.Random(seed)
    trainer = Trainer(n_segments=4, seed=seed, min_labels=100)
    for i in range(n):
        v = view(rng, i, T0 + i)
        trainer.learn_profile(v)
        f = model_features(v)
        label = int(math.expm1(f["log_days_since_order"]) + rng.gauss(0, 5) > 25)
        spend = 0.0 if label else rng.uniform(10, 100)
        snap = Snapshot(v.customer_id, v.as_of, f, 0, 30 * DAY, came_back=not label,
                        spend_after=spend)
        trainer.learn_label(LabelledExample(snap, label, v.as_of))
    return trainer


def test_bundle_scores_deterministically_and_batch_equals_single() -> None:
    trainer = trained()
    bundle = trainer.bundle()
    assert bundle.version == 1
    assert bundle.churn_ready
    assert bundle.labels_seen == 1500
    assert bundle.quality["roc_auc"] > 0.8
    rng = random.Random(9)
    views = [view(rng, i, T0 + 10 * DAY) for i in range(64)]
    batch = bundle.score_many(views)
    for v, s in zip(views, batch, strict=True):
        assert bundle.score(v) == s
        assert 0.0 <= s.churn_probability <= 1.0
        assert s.segment_id in bundle.segments
        assert s.segment_name == bundle.segments[s.segment_id].name
        assert min(s.distances, key=lambda k: s.distances[k]) == s.segment_id
        assert all(1 <= x <= 5 for x in s.rfm_scores)
        assert len(s.reasons) <= 3
        assert all(c > 0 for _, c, _ in s.reasons)
        assert s.horizon_days == bundle.horizon_days == 30.0  # too few gaps: the fallback
        assert s.expected_value >= 0.0
    assert max(s.expected_value for s in batch) > 0.0
    # A reloaded copy scores identically.
    again = ModelBundle.from_bytes(bundle.to_bytes(KEY), KEY)
    assert again.score_many(views) == batch
    names = [s.name for s in bundle.segments.values()]
    assert len(set(names)) == len(names)


def test_bundle_is_isolated_from_further_learning() -> None:
    trainer = trained(n=600)
    bundle = trainer.bundle()
    rng = random.Random(4)
    v = view(rng, 0, T0)
    before = bundle.score(v)
    for i in range(300):
        w = view(rng, i, T0 + i)
        trainer.learn_profile(w)
        f = model_features(w)
        trainer.learn_label(LabelledExample(Snapshot("x", T0, f, 1, 30 * DAY), 1, T0 + i))
    assert bundle.score(v) == before
    assert trainer.bundle().version == 2


def test_untrained_trainer_bundles_and_is_not_ready() -> None:
    bundle = Trainer(n_segments=3).bundle()
    assert not bundle.churn_ready
    score = bundle.score(ProfileView("c", T0, {}))
    assert score.churn_probability == pytest.approx(0.5)
    assert score.expected_value == 0.0  # no spend learned yet
    assert "roc_auc" not in bundle.quality
    assert score.segment_id in (0, 1, 2)


def test_trainer_state_round_trip_continues_identically() -> None:
    trainer = trained(n=400)
    restored = Trainer.from_state_bytes(trainer.state_bytes(KEY), KEY)
    rng = random.Random(11)
    for i in range(100):
        v = view(rng, i, T0 + i)
        f = model_features(v)
        ex = LabelledExample(Snapshot("c", T0, f, 0, 30 * DAY, spend_after=i % 7), i % 2, T0 + i)
        for t in (trainer, restored):
            t.learn_profile(v)
            t.learn_label(ex)
    a, b = trainer.bundle(), restored.bundle()
    assert a.quality == b.quality or all(
        (math.isnan(x) and math.isnan(y)) or x == y
        for x, y in zip(a.quality.values(), b.quality.values(), strict=True)
    )
    views = [view(rng, i, T0) for i in range(20)]
    assert a.score_many(views) == b.score_many(views)


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, ("raise SystemExit('unpickled!')",))


def test_verify_rejects_before_unpickling() -> None:
    blob = sign(pickle.dumps(_Boom()), KEY)
    with pytest.raises(SnapshotRejected, match="foreign key"):
        verify_and_load(blob, b"other-key")
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(SnapshotRejected, match="bad signature"):
        verify_and_load(bytes(tampered), KEY)
    with pytest.raises(SnapshotRejected, match="truncated"):
        verify_and_load(blob[:10], KEY)
    with pytest.raises(SnapshotRejected, match="bad magic"):
        verify_and_load(b"XXXX" + blob[4:], KEY)
    with pytest.raises(SnapshotRejected, match="length"):
        verify_and_load(blob[:-1], KEY)


def test_signed_foreign_type_is_rejected() -> None:
    with pytest.raises(SnapshotRejected, match="unexpected payload type"):
        verify_and_load(sign(pickle.dumps({"a": 1}), KEY), KEY)
    bundle_blob = Trainer().bundle().to_bytes(KEY)
    with pytest.raises(SnapshotRejected, match="not a trainer"):
        Trainer.from_state_bytes(bundle_blob, KEY)


def test_empty_key_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        sign(b"x", b"")


def test_learn_profile_accepts_store_views() -> None:
    store = InMemoryProfiles.empty()
    trainer = Trainer()
    store.states["c1"] = {"la": T0, "lq": T0, "fs": T0 - DAY}
    trainer.learn_profile(ProfileView("c1", T0, store.states["c1"]))
    assert trainer.profiles_seen == 1
    assert trainer.bundle().created_at == T0


def test_the_horizon_is_the_operators_or_learned_from_the_rhythm() -> None:
    learned = Trainer()
    set_by_operator = Trainer(horizon_days=45.0)
    for i in range(400):  # gaps of 10..109 days: the 90 % quantile is about 100 days
        for t in (learned, set_by_operator):
            t.learn_gap(10.0 + i % 100, T0 + i)
    assert 99.0 <= learned.bundle().horizon_days <= 106.0
    assert set_by_operator.bundle().horizon_days == 45.0
    assert learned.bundle().typical_gap_days == pytest.approx(60.0, rel=0.06)


def test_reasons_state_amounts_in_the_customers_order_currency() -> None:
    bundle = trained().bundle()
    rng = random.Random(3)
    views = [view(rng, i, T0 + 10 * DAY) for i in range(200)]
    gbp = [ProfileView(v.customer_id, v.as_of, {**v.raw, "cur": "GBP"}) for v in views]
    texts = [t for s in bundle.score_many(gbp) for f, _, t in s.reasons if f == "log_aov"]
    assert texts
    assert all(t.endswith(" GBP") for t in texts)
    assert all("EUR" not in t for s in bundle.score_many(views) for _, _, t in s.reasons)
