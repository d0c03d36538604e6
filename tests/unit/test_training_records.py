"""Training-topic records: examples batched per record, read back in order, old records too."""

from __future__ import annotations

import orjson
import pytest

from streamproc.core.features import MODEL_FEATURES
from streamproc.core.labels import LabelledExample, Snapshot
from streamproc.runtime.scoring import (
    _label_example,
    _profile_example,
    parse_training_record,
    training_records,
)


def _features(seed: float) -> dict[str, float]:
    return {name: seed + i for i, name in enumerate(MODEL_FEATURES)}


def test_examples_round_trip_in_order_across_records() -> None:
    examples = []
    for n in range(7):
        if n % 3 == 2:
            snap = Snapshot(f"c-{n}", 1_000.0 + n, _features(n), 4)
            examples.append(_label_example(LabelledExample(snap, n % 2, 2_000.0 + n)))
        else:
            examples.append(_profile_example(f"c-{n}", 1_000.0 + n, _features(n)))
    records = training_records(examples, per_record=3)
    assert len(records) == 3
    parsed = [pair for raw in records for pair in parse_training_record(raw)]
    assert [kind for kind, _ in parsed] == ["profile", "profile", "label"] * 2 + ["profile"]
    _, (cid, at, features) = parsed[0]
    assert (cid, at, features) == ("c-0", 1_000.0, _features(0))
    _, label = parsed[2]
    assert label == LabelledExample(Snapshot("c-2", 1_002.0, _features(2), 4), 0, 2_002.0)


def test_no_examples_means_no_record() -> None:
    assert training_records([]) == []


def test_a_one_example_record_from_an_earlier_version_still_parses() -> None:
    legacy = orjson.dumps(_profile_example("c-1", 5.0, _features(1.0)))
    assert parse_training_record(legacy) == [("profile", ("c-1", 5.0, _features(1.0)))]


@pytest.mark.parametrize("raw", [b"[]", b'{"kind": "batch", "examples": 3}',
                                 b'{"kind": "profile"}', b"not json"])
def test_malformed_records_raise_what_the_trainer_skips(raw: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        parse_training_record(raw)
