"""The online Bayesian logistic regression: recovers the truth, ignores label order."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamproc.core.bayes_logit import BayesLogit


def _data(n: int, seed: int) -> tuple[list[dict[str, float]], list[int]]:
    rng = np.random.default_rng(seed)
    a = rng.normal(2.0, 1.0, n)  # not centred: the model must not need a scaler
    b = rng.normal(0.0, 3.0, n)
    logit = -1.0 + 1.5 * (a - 2.0) - 0.5 * b
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return [{"a": float(u), "b": float(v)} for u, v in zip(a, b, strict=True)], y.tolist()


def test_recovers_the_generating_weights() -> None:
    xs, ys = _data(20_000, 1)
    model = BayesLogit(["a", "b"])
    for x, y in zip(xs, ys, strict=True):
        model.learn_one(x, y)
    assert model.weights["a"] == pytest.approx(1.5, abs=0.1)
    assert model.weights["b"] == pytest.approx(-0.5, abs=0.05)
    assert model.intercept == pytest.approx(-1.0 - 1.5 * 2.0, abs=0.25)


def test_weekly_bursts_sorted_by_class_give_about_the_shuffled_model() -> None:
    # Delayed labels arrive in bursts: each week, the comebacks (0), then the whole expired
    # week (1). The fit must not follow the last burst (constant-step SGD does).
    xs, ys = _data(10_000, 2)
    bursty, mixed = BayesLogit(["a", "b"]), BayesLogit(["a", "b"])
    for week in range(0, len(ys), 500):
        for i in sorted(range(week, week + 500), key=lambda i: ys[i]):
            bursty.learn_one(xs[i], ys[i])
    for x, y in zip(xs, ys, strict=True):
        mixed.learn_one(x, y)
    probe = xs[:500]
    diff = [abs(bursty.predict_proba_one(x) - mixed.predict_proba_one(x)) for x in probe]
    assert max(diff) < 0.05
    base = sum(ys) / len(ys)
    mean_p = sum(bursty.predict_proba_one(x) for x in xs) / len(xs)
    assert mean_p == pytest.approx(base, abs=0.02)


def test_weight_two_is_about_the_same_example_twice() -> None:
    x = {"a": 1.0, "b": -1.0}
    once, twice = BayesLogit(["a", "b"]), BayesLogit(["a", "b"])
    once.learn_one(x, 1, w=2.0)
    twice.learn_one(x, 1)
    twice.learn_one(x, 1)
    assert once.predict_proba_one(x) == pytest.approx(twice.predict_proba_one(x), abs=0.02)
    assert once.examples == twice.examples == 2.0


def test_forgetting_follows_a_changed_base_rate() -> None:
    x = {"a": 0.0, "b": 0.0}
    keep, forget = BayesLogit(["a", "b"]), BayesLogit(["a", "b"], forget_after=500)
    for y in [0] * 5000 + [1] * 5000:
        keep.learn_one(x, y)
        forget.learn_one(x, y)
    assert forget.predict_proba_one(x) > 0.99
    assert forget.predict_proba_one(x) > keep.predict_proba_one(x)


def test_bad_input_is_refused() -> None:
    model = BayesLogit(["a"])
    with pytest.raises(ValueError, match="label"):
        model.learn_one({"a": 1.0}, 2)
    with pytest.raises(ValueError, match="weight"):
        model.learn_one({"a": 1.0}, 1, w=0.0)
    with pytest.raises(ValueError, match="finite"):
        model.learn_one({"a": math.nan}, 1)
    with pytest.raises(ValueError, match="prior_var"):
        BayesLogit(["a"], prior_var=0.0)
    assert model.examples == 0.0


def test_frozen_copy_scores_like_the_live_model_and_contributions_add_up() -> None:
    xs, ys = _data(2000, 5)
    model = BayesLogit(["a", "b"])
    for x, y in zip(xs, ys, strict=True):
        model.learn_one(x, y)
    frozen = model.freeze()
    rows = frozen.rows(xs[:50])
    contrib = frozen.contributions(rows)
    probs = frozen.probabilities(contrib)
    live = np.array([model.predict_proba_one(x) for x in xs[:50]])
    assert np.allclose(probs, live, atol=1e-12)
    logit = np.log(probs / (1 - probs))
    assert np.allclose(contrib.sum(axis=1) + frozen.reference_logit, logit, atol=1e-9)
    # The reference is the average example: an average customer has no contributions.
    mean_row = {f: float(np.mean([x[f] for x in xs])) for f in ("a", "b")}
    assert np.allclose(frozen.contributions(frozen.rows([mean_row])), 0.0, atol=1e-9)
    model.learn_one(xs[0], 1)  # the frozen copy does not move with the live model
    assert np.allclose(frozen.probabilities(frozen.contributions(rows)), probs)
