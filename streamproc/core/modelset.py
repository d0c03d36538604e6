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

from streamproc.core.bayes_logit import BayesLogit, FrozenLinearLogit
from streamproc.core.churn import QualityTracker, top_reasons
from streamproc.core.features import DAY, MODEL_FEATURES, ProfileView, model_features
from streamproc.core.labels import LabelledExample
from streamproc.core.lifecycle import ValueTier, value_cuts, value_tier
from streamproc.core.outputs import SegmentInfo
from streamproc.core.rfm import RFMCuts, RFMLearner, tier_name
from streamproc.core.rhythm import GapQuantile, horizon_days
from streamproc.core.rhythm_features import CHURN_FEATURES
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
from streamproc.core.value import FrozenValue, ValueModel

_COL: Final[dict[str, int]] = {f: i for i, f in enumerate(MODEL_FEATURES)}
_CHURN_COLS: Final = np.array([_COL[f] for f in CHURN_FEATURES])
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
    """One customer's segment, RFM tier, churn risk and expected value under one bundle."""

    segment_id: int
    segment_name: str
    segment_profile: dict[str, float]
    distances: dict[int, float]
    rfm_tier: str
    rfm_scores: tuple[int, int, int]
    churn_probability: float
    reasons: list[tuple[str, float, str]]  # (feature, contribution to the logit, text)
    #: Spend expected over the next ``horizon_days``, in the currency of the orders.
    expected_value: float
    #: The churn horizon in use: P(churn) is of no qualifying event within it.
    horizon_days: float


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
    churn: FrozenLinearLogit
    value: FrozenValue
    #: The churn horizon in use (the operator's, else learned from the purchase rhythm).
    horizon_days: float
    #: The base's median gap between order days: the expected gap of a one-order customer.
    typical_gap_days: float
    #: :func:`~streamproc.core.training.feature_set` of the features it was learned on.
    feature_set: str
    #: Expected-value cut points of the value tiers (:func:`~streamproc.core.lifecycle.value_cuts`).
    value_cuts: tuple[float, float] = (0.0, 0.0)

    @property
    def horizon_s(self) -> float:
        """:attr:`horizon_days` in seconds."""
        return self.horizon_days * DAY

    def features(self, view: ProfileView) -> dict[str, float]:
        """:func:`model_features` of a profile under this bundle's rhythm and horizon."""
        return model_features(view, typical_gap_days=self.typical_gap_days,
                              horizon_days=self.horizon_days)


    def value_tier(self, expected_value: float) -> ValueTier:
        """The value tier of an expected value under this bundle's frozen cut points."""
        return value_tier(expected_value, self.value_cuts)

    def score(self, view: ProfileView) -> Score:
        """Score one profile (same code path, same numbers as :meth:`score_many`)."""
        return self.score_many([view])[0]

    def score_many(self, views: Sequence[ProfileView]) -> list[Score]:
        """Score a batch of profiles."""
        return self.score_features_many([self.features(v) for v in views],
                                        [v.currency for v in views])

    def score_features_many(self, rows: Sequence[Mapping[str, float]],
                            currencies: Sequence[str | None] | None = None) -> list[Score]:
        """Score :meth:`features` dicts, vectorised over the batch; ``currencies``: each
        customer's order currency, for the amounts in reasons."""
        if not rows:
            return []
        x = np.array([[r[f] for f in MODEL_FEATURES] for r in rows], dtype=np.float64)
        dist = self.centres.distances(segment_matrix(x))
        nearest = np.argmin(dist, axis=1)
        churn_x = x[:, _CHURN_COLS]
        contrib = self.churn.contributions(churn_x)
        probs = self.churn.probabilities(contrib)
        values = self.value.expected_spend(churn_x, probs)
        r, f, m = self._rfm_scores(x)
        ids = self.centres.ids
        out: list[Score] = []
        for i, feats in enumerate(rows):
            sid = ids[int(nearest[i])]
            seg = self.segments[sid]
            rfm = (int(r[i]), int(f[i]), int(m[i]))
            currency = currencies[i] if currencies is not None else None
            out.append(Score(
                segment_id=sid, segment_name=seg.name, segment_profile=dict(seg.profile),
                distances=dict(zip(ids, dist[i].tolist(), strict=True)),
                rfm_tier=tier_name(*rfm), rfm_scores=rfm,
                churn_probability=float(probs[i]),
                reasons=top_reasons(contrib[i], CHURN_FEATURES, feats, currency, _N_REASONS),
                expected_value=round(float(values[i]), 2), horizon_days=self.horizon_days))
        return out

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
    """The single owner of the learning models; :meth:`bundle` publishes scoring copies.

    It learns the segmentation and RFM quintiles from profile snapshots, the base's
    purchase rhythm from the gaps between order days, and the churn and value models
    from delayed labels (an online Bayesian logistic regression and a hurdle model of
    spend over the horizon; see :mod:`streamproc.core.bayes_logit`, :mod:`streamproc.core.value`).
    """

    def __init__(
        self,
        *,
        n_segments: int = 5,
        seed: int = 42,
        churn_threshold: float = 0.7,
        min_labels: int = 500,
        horizon_days: float | None = None,
        clusterer: str = "kmeans",
        quality_window: int = 5000,
        profile_sample: int = 4096,
        naming: NamingRules | None = None,
    ) -> None:
        if n_segments < 1:
            raise ValueError("n_segments must be >= 1")
        if horizon_days is not None and horizon_days <= 0:
            raise ValueError("horizon_days must be > 0")
        self.n_segments = n_segments
        self.seed = seed
        self.churn_threshold = churn_threshold
        self.min_labels = min_labels
        #: The operator's horizon (None: learned from the rhythm).
        self.operator_horizon_days = horizon_days
        self.naming = naming or NamingRules()
        self.version = 0
        self.last_event_time = -math.inf
        self.profiles_seen = 0
        self._scaler: Any = preprocessing.StandardScaler()
        self._clusterer = make_clusterer(clusterer, n_segments, seed)
        self._rfm = RFMLearner()
        self._sample = ProfileSample(profile_sample)
        self.rhythm = GapQuantile()
        self._churn = BayesLogit(CHURN_FEATURES)
        self._value = ValueModel(CHURN_FEATURES)
        #: Latest features of the most recent customers, for the value-tier cut points.
        self._value_sample: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._value_capacity = profile_sample
        self.quality = QualityTracker(churn_threshold, quality_window)
        #: The feature set this trainer learns (a state of another one is not resumed).
        self.feature_set = feature_set()

    @property
    def labels_seen(self) -> int:
        """Delayed labels learned so far."""
        return self.quality.labels_seen

    @property
    def horizon_days(self) -> float:
        """The churn horizon in use: the operator's, else from the purchase rhythm."""
        return horizon_days(self.rhythm, operator_days=self.operator_horizon_days)

    def learn_profile(self, view: ProfileView) -> None:
        """Learn segmentation, RFM quintiles and segment profiles from one profile."""
        features = model_features(view, typical_gap_days=self.rhythm.typical_gap_days(),
                                  horizon_days=self.horizon_days)
        self.learn_profile_features(view.customer_id, features, view.as_of)

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

    def learn_gap(self, gap_days: float, at: float) -> None:
        """Learn one gap between a customer's consecutive qualifying events (days)."""
        self.rhythm.add(gap_days)
        self.last_event_time = max(self.last_event_time, at)

    def predict_churn(self, features: Mapping[str, float]) -> float:
        """The live (unfrozen) model's churn probability."""
        return self._churn.predict_proba_one(features)

    def learn_label(self, example: LabelledExample) -> None:
        """Progressive validation: score with the current model, then learn the label and
        the spend that followed the snapshot."""
        snap = example.snapshot
        self.quality.update(self.predict_churn(snap.features), example.label)
        self._churn.learn_one(snap.features, example.label)
        self._value.learn(snap.features, snap.spend_after)
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
            churn=self._churn.freeze(),
            value=self._value.freeze(),
            horizon_days=self.horizon_days,
            typical_gap_days=self.rhythm.typical_gap_days(),
            feature_set=self.feature_set,
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
