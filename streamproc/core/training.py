"""Training examples and their wire format on the training topic; the feature-set identity.

The scoring step emits three kinds of example, in order: a :class:`GapExample` for each
gap between a customer's consecutive qualifying events (the trainer learns the purchase
rhythm, hence the default churn horizon, from them), a :class:`ProfileExample` for each
snapshot (segments and RFM quintiles) and a
:class:`~streamproc.core.labels.LabelledExample` for each delayed churn label (churn and
value). A
training-topic record is a JSON object ``{"fs": <feature set>, "examples": [...]}``
holding up to :data:`EXAMPLES_PER_RECORD` of them; features travel as a list in
``MODEL_FEATURES`` order, so every record names the feature set it was written with
and a reader of another feature set skips it instead of zipping the wrong names.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import orjson

from streamproc.core import features as _features
from streamproc.core.labels import LabelledExample, Snapshot

#: Training examples per training-topic record (~450 B each: far below Kafka's 1 MB limit).
EXAMPLES_PER_RECORD: Final = 500


@dataclass(frozen=True, slots=True)
class ProfileExample:
    """A customer's model features at a snapshot, for the unsupervised models."""

    customer_id: str
    at: float
    features: dict[str, float]


@dataclass(frozen=True, slots=True)
class GapExample:
    """The gap in days between a customer's qualifying event at ``at`` and the previous one."""

    customer_id: str
    at: float
    gap_days: float


TrainingExample = ProfileExample | GapExample | LabelledExample


@lru_cache(maxsize=8)
def _digest(names: tuple[str, ...]) -> str:
    return hashlib.sha256("\x1f".join(names).encode()).hexdigest()[:8]


def feature_set() -> str:
    """Identity of the running ``MODEL_FEATURES`` (names and order): 8 hex characters.

    Read at call time, so a test that patches ``features.MODEL_FEATURES`` sees the
    identity change as a new release would.
    """
    return _digest(tuple(_features.MODEL_FEATURES))


def feature_names() -> tuple[str, ...]:
    """The running ``MODEL_FEATURES``, read at call time (see :func:`feature_set`)."""
    return tuple(_features.MODEL_FEATURES)


def feature_list(features: Mapping[str, float]) -> list[float]:
    """A feature dict as a list in ``MODEL_FEATURES`` order."""
    return [features[n] for n in _features.MODEL_FEATURES]


def _example_doc(example: TrainingExample) -> dict[str, Any]:
    if isinstance(example, ProfileExample):
        return {"kind": "profile", "customer_id": example.customer_id, "at": example.at,
                "features": feature_list(example.features)}
    if isinstance(example, GapExample):
        return {"kind": "gap", "customer_id": example.customer_id, "at": example.at,
                "gap_days": example.gap_days}
    s = example.snapshot
    return {"kind": "label", "customer_id": s.customer_id, "scored_at": s.scored_at,
            "model_version": s.model_version, "horizon_s": s.horizon_s,
            "spend_after": s.spend_after, "label": example.label,
            "labelled_at": example.labelled_at, "features": feature_list(s.features)}


def encode_records(examples: Sequence[TrainingExample],
                   per_record: int = EXAMPLES_PER_RECORD) -> list[bytes]:
    """A batch's training examples as few training-topic records, in order.

    One Kafka record per example cost the producing worker and the trainer Faust's
    per-message overhead each time; the trainer reads these records in order, so
    batching them changes nothing it learns.
    """
    fs = feature_set()
    docs = [_example_doc(e) for e in examples]
    return [orjson.dumps({"fs": fs, "examples": docs[i:i + per_record]})
            for i in range(0, len(docs), per_record)]


@dataclass(frozen=True, slots=True)
class DecodedRecord:
    """A training record's examples, or how many were skipped for another feature set."""

    examples: list[TrainingExample]
    foreign: int = 0


def _parse_example(doc: Mapping[str, Any], names: tuple[str, ...]) -> TrainingExample:
    if doc["kind"] == "gap":
        return GapExample(str(doc["customer_id"]), float(doc["at"]), float(doc["gap_days"]))
    features = dict(zip(names, (float(v) for v in doc["features"]), strict=True))
    if doc["kind"] == "profile":
        return ProfileExample(str(doc["customer_id"]), float(doc["at"]), features)
    if doc["kind"] != "label":
        raise ValueError(f"unknown example kind {doc['kind']!r}")
    label = int(doc["label"])
    snap = Snapshot(str(doc["customer_id"]), float(doc["scored_at"]), features,
                    int(doc["model_version"]), float(doc["horizon_s"]), came_back=label == 0,
                    spend_after=float(doc["spend_after"]))
    return LabelledExample(snap, label, float(doc["labelled_at"]))


def decode_record(raw: bytes) -> DecodedRecord:
    """Decode a training-topic record written by :func:`encode_records`.

    A record of another feature set is not decoded: its examples are counted in
    ``foreign``. Raises ``ValueError``, ``KeyError`` or ``TypeError`` for a malformed one.
    """
    doc = orjson.loads(raw)
    if not isinstance(doc, dict):
        raise TypeError("a training record must be a JSON object")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise TypeError("a record's examples must be a list")
    if doc["fs"] != feature_set():
        return DecodedRecord([], foreign=len(examples))
    names = feature_names()
    return DecodedRecord([_parse_example(e, names) for e in examples])
