"""Training-topic records: examples batched per record, read back in order, feature set named."""

from __future__ import annotations

import orjson
import pytest

from streamproc.core import features as features_module
from streamproc.core.features import MODEL_FEATURES
from streamproc.core.labels import LabelledExample, Snapshot
from streamproc.core.training import (
    DecodedRecord,
    GapExample,
    ProfileExample,
    TrainingExample,
    decode_record,
    encode_records,
    feature_set,
)


def _features(seed: float) -> dict[str, float]:
    return {name: seed + i for i, name in enumerate(MODEL_FEATURES)}


def _examples(n: int) -> list[TrainingExample]:
    out: list[TrainingExample] = []
    for i in range(n):
        if i % 3 == 2:
            label = i % 2
            snap = Snapshot(f"c-{i}", 1_000.0 + i, _features(i), 4, 90.0 * 86_400,
                            came_back=label == 0, spend_after=0.0 if label else 12.5 * i)
            out.append(LabelledExample(snap, label, 2_000.0 + i))
        elif i % 4 == 1:
            out.append(GapExample(f"c-{i}", 1_000.0 + i, 3.5 + i))
        else:
            out.append(ProfileExample(f"c-{i}", 1_000.0 + i, _features(i)))
    return out


def test_examples_round_trip_in_order_across_records() -> None:
    examples = _examples(7)
    records = encode_records(examples, per_record=3)
    assert len(records) == 3
    assert [e for raw in records for e in decode_record(raw).examples] == examples
    assert all(orjson.loads(raw)["fs"] == feature_set() for raw in records)


def test_no_examples_means_no_record() -> None:
    assert encode_records([]) == []


def test_records_of_another_feature_set_are_skipped_and_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    [old] = encode_records(_examples(5))
    before = feature_set()
    monkeypatch.setattr(features_module, "MODEL_FEATURES", (*MODEL_FEATURES, "returns_30d"))
    assert feature_set() != before
    assert decode_record(old) == DecodedRecord([], foreign=5)


@pytest.mark.parametrize("raw", [b"[]", b'{"fs": "x", "examples": 3}', b'{"examples": []}',
                                 b'{"kind": "profile"}', b"not json"])
def test_malformed_records_raise_what_the_trainer_skips(raw: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        decode_record(raw)


def test_an_unknown_example_kind_is_malformed() -> None:
    example = {"kind": "other", "features": [0.0] * len(MODEL_FEATURES)}
    doc = {"fs": feature_set(), "examples": [example]}
    with pytest.raises(ValueError, match="unknown example kind"):
        decode_record(orjson.dumps(doc))
