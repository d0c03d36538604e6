"""The stored scoring state: bfloat16 pending features, the feature set, the CAS token."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.adapters.scoring_codec import (
    decode_state,
    encode_state,
    pack_features,
    state_token,
    unpack_features,
)
from streamproc.core import features as features_module
from streamproc.core.features import DAY, MODEL_FEATURES
from streamproc.core.labels import Snapshot
from streamproc.core.policies import AlertState, SegmentState
from streamproc.core.step import ScoringState
from streamproc.core.store import stored_precision

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
    values = [0.0, 1.0, 7.0, 14.0, 21.0, 0.25, 0.375, -3.25, 100.0, 255.0]
    values += [2.0] * (len(MODEL_FEATURES) - len(values))
    features = dict(zip(MODEL_FEATURES, values, strict=True))
    assert unpack_features(pack_features(features)) == features


def test_huge_values_stay_finite() -> None:
    features = dict.fromkeys(MODEL_FEATURES, 3.4e38)
    assert all(math.isfinite(v) for v in unpack_features(pack_features(features)).values())


def _features(offset: float = 0.0) -> dict[str, float]:
    return {n: float(i) + offset for i, n in enumerate(MODEL_FEATURES)}


def test_encoded_state_round_trips() -> None:
    state = ScoringState(
        segment=SegmentState(3, 1.0e9), alert=AlertState(None, 0.25),
        pending=(Snapshot("c-1", 1.0e9, _features(), 4, 30 * DAY),
                 Snapshot("c-1", 1.1e9, _features(), 5, 132 * DAY, came_back=True,
                          spend_after=42.25)),
        last_activity=1.1e9, last_snapshot=1.1e9, owner=2, spread=True,
        ahead=Snapshot("c-1", 1.2e9, _features(), 5, 132 * DAY),
        recent=((1.15e9, 12.5), (1.16e9, 0.0)))
    assert decode_state("c-1", encode_state(state)) == (state, 0)
    assert decode_state("c-1", encode_state(ScoringState())) == (ScoringState(), 0)
    assert decode_state("c-1", None) == (None, 0)


def test_the_in_memory_twin_keeps_the_stored_precision() -> None:
    state = ScoringState(pending=(Snapshot("c-1", 1.0e9, _features(0.1), 4, 30 * DAY),))
    stored, _ = decode_state("c-1", encode_state(state))
    assert stored == stored_precision(state)
    assert stored != state  # 0.1 is not a bfloat16


def test_pending_snapshots_of_another_feature_set_are_dropped_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    state = ScoringState(segment=SegmentState(1, 5.0), alert=AlertState(5.0, 0.8),
                         pending=(Snapshot("c-1", 1.0e9, _features(), 4, 30 * DAY),),
                         last_activity=9.0, last_snapshot=9.0, owner=0)
    blob = encode_state(state)
    monkeypatch.setattr(features_module, "MODEL_FEATURES", (*MODEL_FEATURES, "returns_30d"))
    again, stale = decode_state("c-1", blob)
    assert stale == 1
    assert again == ScoringState(segment=SegmentState(1, 5.0), alert=AlertState(5.0, 0.8),
                                 last_activity=9.0, last_snapshot=9.0, owner=0)


def test_the_token_names_the_stored_bytes() -> None:
    blob = encode_state(ScoringState(last_activity=1.0))
    assert state_token(None) == state_token(b"") == ""
    assert state_token(blob) == state_token(bytes(blob))
    assert state_token(blob) != state_token(encode_state(ScoringState(last_activity=2.0)))
