"""Pending churn snapshots keep their features as bfloat16: half the bytes, same model."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streamproc.core.features import MODEL_FEATURES
from streamproc.core.labels import Snapshot
from streamproc.runtime.scoring import CustomerScoringState, pack_features, unpack_features

finite = st.floats(min_value=-1e30, max_value=1e30, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=len(MODEL_FEATURES), max_size=len(MODEL_FEATURES)))
def test_round_trip_is_within_bfloat16_rounding(values: list[float]) -> None:
    features = dict(zip(MODEL_FEATURES, values, strict=True))
    blob = pack_features(features)
    assert len(blob) == 2 * len(MODEL_FEATURES)
    back = unpack_features(blob)
    for name, value in features.items():
        # Below float32's normal range (~1.2e-38) bfloat16 keeps fewer bits: absolute there.
        assert math.isclose(back[name], value, rel_tol=2**-8, abs_tol=1e-37)


def test_small_integers_and_halves_are_exact() -> None:
    # Counts, days and rates like 0.25 are what the features mostly are.
    values = [0.0, 1.0, 7.0, 14.0, 21.0, 0.25, 0.375, -3.25, 100.0, 255.0] + [2.0] * 9
    features = dict(zip(MODEL_FEATURES, values, strict=True))
    assert unpack_features(pack_features(features)) == features


def test_huge_values_stay_finite() -> None:
    features = dict.fromkeys(MODEL_FEATURES, 3.4e38)
    assert all(math.isfinite(v) for v in unpack_features(pack_features(features)).values())


def test_states_stored_as_float32_before_still_decode() -> None:
    values = [float(i) + 0.1 for i in range(len(MODEL_FEATURES))]
    legacy = np.asarray(values, dtype=np.float32).tobytes()
    state = CustomerScoringState.decode("c-1", {"pend": [[1.0e9, 3, legacy]]})
    (snap,) = state.pending
    assert snap.features == dict(zip(MODEL_FEATURES, np.float32(values).tolist(), strict=True))
    assert snap.model_version == 3


def test_encoded_state_round_trips_pending_snapshots() -> None:
    features = dict(zip(MODEL_FEATURES, [float(i) for i in range(len(MODEL_FEATURES))],
                        strict=True))
    state = CustomerScoringState(pending=(Snapshot("c-1", 1.0e9, features, 4),))
    again = CustomerScoringState.decode("c-1", state.encode())
    assert again.pending == state.pending
