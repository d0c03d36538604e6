"""Expected spend: recursive least squares is the exact ridge fit; the hurdle combines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamproc.core.value import BayesLinear, ValueModel


def _rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = 3.0 + x @ np.array([0.5, -2.0]) + rng.normal(scale=0.3, size=n)
    return x, y


def test_recursive_least_squares_equals_the_batch_ridge_solution_in_any_order() -> None:
    x, y = _rows(300, 3)
    design = np.column_stack([np.ones(len(y)), x])
    ridge = np.linalg.solve(design.T @ design + np.eye(3), design.T @ y)
    for order in (range(len(y)), np.argsort(y)):
        model = BayesLinear(["u", "v"])
        for i in order:
            model.learn_one({"u": x[i, 0], "v": x[i, 1]}, float(y[i]))
        assert np.allclose(model.mean, ridge, atol=1e-8)


def test_value_is_probability_times_log_normal_mean_of_buyers_spend() -> None:
    model = ValueModel(["u"])
    assert model.predict({"u": 0.0}, 0.5) == 0.0  # nothing learned: no value claimed
    rng = np.random.default_rng(4)
    for _ in range(2000):
        u = float(rng.normal())
        model.learn({"u": u}, 0.0)  # non-buyers do not teach the spend regression
        model.learn({"u": u}, math.exp(2.0 + 0.5 * u + rng.normal(scale=0.5)))
    assert model.examples == 4000
    assert model.buyers == 2000
    expected = math.exp(2.0 + 0.5 * 1.0 + 0.25 / 2)
    assert model.spend_if_ordered({"u": 1.0}) == pytest.approx(expected, rel=0.05)
    assert model.predict({"u": 1.0}, 0.4) == pytest.approx(0.4 * expected, rel=0.05)


def test_bad_input_is_refused() -> None:
    model = ValueModel(["u"])
    with pytest.raises(ValueError, match="spend_after"):
        model.learn({"u": 0.0}, -1.0)
    with pytest.raises(ValueError, match="p_order"):
        model.predict({"u": 0.0}, 1.5)


def test_frozen_value_matches_the_live_model_in_a_batch() -> None:
    from streamproc.core.bayes_logit import BayesLogit
    from streamproc.core.value import score_value

    rng = np.random.default_rng(6)
    churn, value = BayesLogit(["u"]), ValueModel(["u"])
    for _ in range(500):
        u = float(rng.normal())
        churn.learn_one({"u": u}, int(rng.random() < 0.5))
        value.learn({"u": u}, math.exp(1.0 + u))
    xs = [{"u": -1.0}, {"u": 0.0}, {"u": 2.0}]
    p, spend = score_value(churn.freeze(), value.freeze(), xs)
    for i, x in enumerate(xs):
        assert p[i] == pytest.approx(churn.predict_proba_one(x))
        assert spend[i] == pytest.approx(value.predict(x, 1.0 - churn.predict_proba_one(x)))
    with pytest.raises(ValueError, match="same features"):
        score_value(churn.freeze(), ValueModel(["v"]).freeze(), xs)
    assert ValueModel(["u"]).freeze().expected_spend(np.zeros((2, 1)), np.zeros(2)).tolist() == [
        0.0, 0.0]
