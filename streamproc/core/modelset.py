"""The trainer (single owner that learns) and the model bundle (read-only scoring copy).

:class:`Trainer` learns the segmentation, the RFM quintiles and the churn model.
:meth:`Trainer.bundle` freezes them into a versioned :class:`ModelBundle` of numpy
arrays and plain values, which every worker scores with: the same bundle and the
same features give the same answer everywhere, and scoring a batch is vectorised.

Snapshots cross process boundaries as signed blobs (:func:`sign`,
:func:`verify_and_load`): HMAC-SHA256 over header and payload, checked before a
single byte is unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import pickle
import struct
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
from river import preprocessing

from streamproc.core.churn import (
    FrozenLogit,
    QualityTracker,
    feature_row,
    make_churn_model,
    top_reasons,
)
from streamproc.core.features import MODEL_FEATURES, ProfileView, model_features
from streamproc.core.labels import LabelledExample
from streamproc.core.lifecycle import ValueTier, value_cuts, value_tier
from streamproc.core.outputs import SegmentInfo
from streamproc.core.rfm import RFMCuts, RFMLearner, tier_name
from streamproc.core.segments import (
    FrozenCentres,
    NamingRules,
    ProfileSample,
    clusterer_centres,
    make_clusterer,
    name_segments,
    segment_features,
    segment_matrix,
)
from streamproc.core.training import feature_set

_COL: Final[dict[str, int]] = {f: i for i, f in enumerate(MODEL_FEATURES)}
_N_REASONS: Final = 3
#: The trainer cuts its first version after this many examples (or every-N, if fewer), so
#: a new deployment scores with a model soon; then every N examples.
FIRST_VERSION_AFTER: Final = 200


def version_due(version: int, since_last: int, every: int) -> bool:
    """Whether a trainer at ``version`` should cut the next one, ``since_last`` examples on.

    Versions are cut by example count, not by a clock, so the same example sequence gives
    the same version sequence (in the trainer service and in the in-memory replay).
    """
    return since_last >= (every if version else min(FIRST_VERSION_AFTER, every))


@dataclass(frozen=True, slots=True)
class Score:
    """One customer's segment, RFM tier and churn risk under one bundle."""

    segment_id: int
    segment_name: str
    segment_profile: dict[str, float]
    distances: dict[int, float]
    rfm_tier: str
    rfm_scores: tuple[int, int, int]
    churn_probability: float
    reasons: list[tuple[str, float, str]]  # (feature, contribution to the logit, text)
    #: Expected spend over the next ``horizon_days`` (see :func:`interim_expected_value`).
    expected_value: float
    #: The horizon the expected value is over (the churn horizon).
    horizon_days: float


def interim_expected_value(churn_probability: float, features: Mapping[str, float],
                           horizon_days: float) -> float:
    """Expected spend over the horizon until a learned value model scores it.

    ``(1 - churn probability) x average order value x orders per horizon``, the last two
    from the customer's own history (orders per 30 days of tenure, scaled to the horizon):
    an interim estimate, the shape of the hurdle model of :mod:`streamproc.core.value`.
    """
    aov = math.expm1(features["log_aov"])
    per_horizon = max(features["orders_per_30d_tenure"], 0.0) * horizon_days / 30.0
    # Whoever orders within the horizon orders at least once.
    return round((1.0 - churn_probability) * aov * max(per_horizon, 1.0), 2)


@dataclass(frozen=True, slots=True, eq=False)
class ModelBundle:
    """An immutable, versioned scoring copy of the trainer's models."""

    version: int
    #: Event time of the last example the trainer learned before this bundle.
    created_at: float
    churn_ready: bool
    labels_seen: int
    quality: dict[str, float]
    churn_threshold: float
    segments: dict[int, SegmentInfo]
    centres: FrozenCentres
    rfm: RFMCuts
    #: The frozen logistic model, or None when a non-linear River model scores (no reasons then).
    logit: FrozenLogit | None
    #: :func:`~streamproc.core.training.feature_set` of the features it was learned on.
    feature_set: str
    model: Any = None
    #: The churn horizon the labels were cut with (expected value is over it).
    horizon_days: float = 30.0
    #: Expected-value cut points of the value tiers (:func:`~streamproc.core.lifecycle.value_cuts`).
    value_cuts: tuple[float, float] = (0.0, 0.0)

    def value_tier(self, expected_value: float) -> ValueTier:
        """The value tier of an expected value under this bundle's frozen cut points."""
        return value_tier(expected_value, self.value_cuts)

    def score(self, view: ProfileView) -> Score:
        """Score one profile (same code path, same numbers as :meth:`score_many`)."""
        return self.score_features_many([model_features(view)])[0]

    def score_many(self, views: Sequence[ProfileView]) -> list[Score]:
        """Score a batch of profiles."""
        return self.score_features_many([model_features(v) for v in views])

    def score_features(self, features: Mapping[str, float]) -> Score:
        """Score one :func:`model_features` dict (e.g. a snapshot's frozen features)."""
        return self.score_features_many([features])[0]

    def score_features_many(self, rows: Sequence[Mapping[str, float]]) -> list[Score]:
        """Score :func:`model_features` dicts, vectorised over the batch."""
        if not rows:
            return []
        x = np.array([feature_row(r) for r in rows], dtype=np.float64)
        dist = self.centres.distances(segment_matrix(x))
        nearest = np.argmin(dist, axis=1)
        probs, contrib = self._churn(x, rows)
        r, f, m = self._rfm_scores(x)
        ids = self.centres.ids
        out: list[Score] = []
        for i, feats in enumerate(rows):
            sid = ids[int(nearest[i])]
            seg = self.segments[sid]
            rfm = (int(r[i]), int(f[i]), int(m[i]))
            p = float(probs[i])
            out.append(
                Score(
                    segment_id=sid,
                    segment_name=seg.name,
                    segment_profile=dict(seg.profile),
                    distances=dict(zip(ids, dist[i].tolist(), strict=True)),
                    rfm_tier=tier_name(*rfm),
                    rfm_scores=rfm,
                    churn_probability=p,
                    reasons=[] if contrib is None else top_reasons(contrib[i], feats, _N_REASONS),
                    expected_value=interim_expected_value(p, feats, self.horizon_days),
                    horizon_days=self.horizon_days,
                )
            )
        return out

    def _churn(
        self, x: np.ndarray, rows: Sequence[Mapping[str, float]]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if self.logit is not None:
            contrib = self.logit.contributions(x)
            return self.logit.probabilities(contrib), contrib
        probs = [float(self.model.predict_proba_one(dict(r)).get(1, 0.0)) for r in rows]
        return np.array(probs, dtype=np.float64), None

    def _rfm_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        recency = x[:, _COL["recency_days"]]
        orders = np.round(np.expm1(x[:, _COL["log_orders"]]))
        spend = np.round(np.expm1(x[:, _COL["log_net_spend"]]), 2)
        r = 5 - np.searchsorted(np.asarray(self.rfm.recency), recency, side="left")
        f = 1 + np.searchsorted(np.asarray(self.rfm.frequency), orders, side="left")
        m = 1 + np.searchsorted(np.asarray(self.rfm.monetary), spend, side="left")
        return r, f, m

    def to_bytes(self, key: bytes) -> bytes:
        """A signed snapshot of this bundle."""
        return sign(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL), key)

    @classmethod
    def from_bytes(cls, blob: bytes, key: bytes) -> ModelBundle:
        """Verify and load a bundle snapshot; raises :class:`SnapshotRejected`."""
        obj = verify_and_load(blob, key)
        if not isinstance(obj, ModelBundle):
            raise SnapshotRejected("not a model bundle")
        return obj


class Trainer:
    """The single owner of the learning models; :meth:`bundle` publishes scoring copies."""

    def __init__(
        self,
        *,
        n_segments: int = 5,
        seed: int = 42,
        churn_threshold: float = 0.7,
        min_labels: int = 500,
        clusterer: str = "kmeans",
        churn_model: str = "logreg",
        quality_window: int = 5000,
        profile_sample: int = 4096,
        naming: NamingRules | None = None,
        horizon_days: float = 30.0,
    ) -> None:
        if n_segments < 1:
            raise ValueError("n_segments must be >= 1")
        self.n_segments = n_segments
        self.horizon_days = horizon_days
        self.seed = seed
        self.churn_threshold = churn_threshold
        self.min_labels = min_labels
        self.churn_kind = churn_model
        self.naming = naming or NamingRules()
        self.version = 0
        self.last_event_time = -math.inf
        self.profiles_seen = 0
        self._scaler: Any = preprocessing.StandardScaler()
        self._clusterer = make_clusterer(clusterer, n_segments, seed)
        self._rfm = RFMLearner()
        self._sample = ProfileSample(profile_sample)
        #: Latest features of the most recent customers, for the value-tier cut points.
        self._value_sample: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._value_capacity = profile_sample
        self._churn = make_churn_model(churn_model, seed)
        self.quality = QualityTracker(churn_threshold, quality_window)
        #: The feature set this trainer learns (a state of another one is not resumed).
        self.feature_set = feature_set()

    @property
    def labels_seen(self) -> int:
        """Delayed labels learned so far."""
        return self.quality.labels_seen

    def learn_profile(self, view: ProfileView) -> None:
        """Learn segmentation, RFM quintiles and segment profiles from one profile."""
        self.learn_profile_features(view.customer_id, model_features(view), view.as_of)

    def learn_profile_features(
        self, customer_id: str, features: Mapping[str, float], as_of: float
    ) -> None:
        """:meth:`learn_profile` from an already computed :func:`model_features` dict."""
        seg = segment_features(features)
        self._scaler.learn_one(seg)
        self._clusterer.learn_one(self._scaler.transform_one(seg))
        self._rfm.learn(features)
        self._sample.add(customer_id, features)
        self._value_sample[customer_id] = dict(features)
        self._value_sample.move_to_end(customer_id)
        while len(self._value_sample) > self._value_capacity:
            self._value_sample.popitem(last=False)
        self.profiles_seen += 1
        self.last_event_time = max(self.last_event_time, as_of)

    def predict_churn(self, features: Mapping[str, float]) -> float:
        """The live (unfrozen) model's churn probability."""
        proba = self._churn.predict_proba_one(dict(features))
        return float(proba.get(1, proba.get(True, 0.0)))

    def learn_label(self, example: LabelledExample) -> None:
        """Progressive validation: score with the current model, then learn the label."""
        features = dict(example.snapshot.features)
        self.quality.update(self.predict_churn(features), example.label)
        self._churn.learn_one(features, example.label)
        self.last_event_time = max(self.last_event_time, example.labelled_at)

    def bundle(self) -> ModelBundle:
        """Freeze the current models into the next bundle version."""
        self.version += 1
        centres = FrozenCentres.build(
            self._scaler.means,
            self._scaler.vars,
            clusterer_centres(self._clusterer, self.n_segments),
            self.n_segments,
        )
        ids = np.asarray(centres.ids)
        sampled = self._sample.profiles(lambda x: ids[np.argmin(centres.distances(x), axis=1)])
        # A segment no sampled customer is nearest to is named by where its centre lies.
        profiles = {**centres.centre_profiles(), **sampled}
        names = name_segments(profiles, centres.ids, self.naming)
        segments = {
            sid: SegmentInfo(segment_id=sid, name=names[sid], profile=dict(profiles.get(sid, {})))
            for sid in centres.ids
        }
        if self.churn_kind.startswith("logreg"):
            logit: FrozenLogit | None = FrozenLogit.from_pipeline(self._churn)
            model = None
        else:
            logit = None
            model = pickle.loads(pickle.dumps(self._churn))  # noqa: S301 - our own bytes
        bundle = ModelBundle(
            version=self.version,
            created_at=self.last_event_time,
            churn_ready=self.labels_seen >= self.min_labels,
            labels_seen=self.labels_seen,
            quality=self.quality.summary(),
            churn_threshold=self.churn_threshold,
            segments=segments,
            centres=centres,
            rfm=self._rfm.freeze(),
            logit=logit,
            feature_set=self.feature_set,
            model=model,
            horizon_days=self.horizon_days,
        )
        # Tiers cut against the expected values this very bundle gives the sample.
        sample = list(self._value_sample.values())
        values = [sc.expected_value for sc in bundle.score_features_many(sample)]
        return replace(bundle, value_cuts=value_cuts(values))

    def state_bytes(self, key: bytes) -> bytes:
        """The trainer's full state, signed, for restart."""
        return sign(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL), key)

    @classmethod
    def from_state_bytes(cls, blob: bytes, key: bytes) -> Trainer:
        """Restore a trainer from :meth:`state_bytes`; raises :class:`SnapshotRejected`."""
        obj = verify_and_load(blob, key)
        if not isinstance(obj, Trainer):
            raise SnapshotRejected("not a trainer state")
        return obj


# ---------------------------------------------------------------- signed snapshots

MAGIC: Final = b"SPMS"
#: 2: bundles and trainer states carry their feature set.
FORMAT_VERSION: Final = 2
_HEADER: Final = struct.Struct(">4sB8sQ")  # magic, format version, key id, payload length
_MAC_LEN: Final = hashlib.sha256().digest_size


class SnapshotRejected(Exception):
    """A snapshot blob failed verification; ``reason`` says why. Nothing was unpickled."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def key_id(key: bytes) -> bytes:
    """A short public fingerprint of a signing key (derived with HMAC, not the key itself)."""
    if not key:
        raise ValueError("signing key must not be empty")
    return hmac.new(key, b"streamproc-model-key-id", hashlib.sha256).digest()[:8]


def sign(payload: bytes, key: bytes) -> bytes:
    """``header | HMAC-SHA256(key, header | payload) | payload``."""
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, key_id(key), len(payload))
    mac = hmac.new(key, header + payload, hashlib.sha256).digest()
    return header + mac + payload


def verify(blob: bytes, key: bytes) -> bytes:
    """The payload of a signed blob; raises :class:`SnapshotRejected` if it is not authentic."""
    if len(blob) < _HEADER.size + _MAC_LEN:
        raise SnapshotRejected("truncated")
    magic, fmt, kid, length = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise SnapshotRejected("bad magic")
    if fmt != FORMAT_VERSION:
        raise SnapshotRejected(f"unsupported format version {fmt}")
    if not hmac.compare_digest(kid, key_id(key)):
        raise SnapshotRejected("signed with a foreign key")
    header = blob[: _HEADER.size]
    mac = blob[_HEADER.size : _HEADER.size + _MAC_LEN]
    payload = blob[_HEADER.size + _MAC_LEN :]
    if len(payload) != length:
        raise SnapshotRejected("length mismatch")
    expected = hmac.new(key, header + payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise SnapshotRejected("bad signature")
    return payload


def verify_and_load(blob: bytes, key: bytes) -> ModelBundle | Trainer:
    """Verify a signed snapshot, then unpickle it; only bundles and trainers are accepted."""
    payload = verify(blob, key)
    try:
        obj = pickle.loads(payload)  # noqa: S301 - authenticated by the HMAC check above
    except Exception as exc:  # a signed but unloadable payload (e.g. code changed)
        raise SnapshotRejected(f"unloadable payload: {type(exc).__name__}") from exc
    if not isinstance(obj, ModelBundle | Trainer):
        raise SnapshotRejected(f"unexpected payload type {type(obj).__name__}")
    return obj
