"""Scoring stage: segments, churn alerts, delayed-label snapshots and idle checks.

Runs after a batch's features are durable in Redis. Per customer it keeps a
small *output state* next to the profile (segment, alert cooldown, pending
snapshots awaiting their churn label, last activity) and writes it back in one
pipelined round trip. Every decision is a pure function from ``streamproc.core``;
this module only moves state in and out of Redis and turns decisions into records.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from streamproc.adapters import keys
from streamproc.adapters.model_store import ModelStore
from streamproc.adapters.redis_store import RedisProfileStore
from streamproc.core.eventclock import PartitionClock
from streamproc.core.features import MODEL_FEATURES, ProfileView, model_features
from streamproc.core.labels import (
    LabelledExample,
    Snapshot,
    add_snapshot,
    next_idle_check,
    on_activity,
    on_watermark,
)
from streamproc.core.modelset import ModelBundle, Score, SnapshotRejected
from streamproc.core.outputs import ChurnAlert, Reason, SegmentChanged, SegmentInfo
from streamproc.core.policies import (
    AlertInput,
    AlertPolicy,
    AlertState,
    SegmentState,
    decide_alert,
    decide_segment,
)
from streamproc.metrics import Metrics, set_segment_names
from streamproc.runtime.pipeline import ActivityBatch, OutRecord, Retrier, Sender, no_acks
from streamproc.settings import Settings

log = logging.getLogger(__name__)
DAY = 86_400.0
MIN_SNAPSHOT_GAP_S = 1 * DAY
MAX_PENDING = 8
SWEEP_LIMIT = 500
#: Training examples per training-topic record (~450 B each: far below Kafka's 1 MB limit).
EXAMPLES_PER_RECORD = 500
REFUSED_RETRY_S = 30.0


_Work = tuple[str, "CustomerScoringState", ProfileView | None, list[LabelledExample]]


def _text(member: bytes | str) -> str:
    return member.decode() if isinstance(member, bytes) else member


_BFLOAT16_MAX = 3.3895313892515355e38  # 0x7F7F0000, the largest finite one


def pack_features(features: Mapping[str, float]) -> bytes:
    """Model features in ``MODEL_FEATURES`` order as bfloat16, 2 bytes each (pending state).

    bfloat16 is the upper half of a float32, rounded to nearest even: float32's range
    (spend never overflows, as it would in float16) with 8 significant bits, a relative
    error below 0.4 %, far inside the noise an online churn model learns through. A
    customer holds up to ``MAX_PENDING`` snapshots for a horizon, so this halves the
    largest part of a heavy customer's scoring state (19 features: 38 bytes, not 76).
    """
    # Clipped first: rounding up must not turn a large finite value into inf.
    f32 = np.clip(np.asarray([features[n] for n in MODEL_FEATURES], dtype=np.float64),
                  -_BFLOAT16_MAX, _BFLOAT16_MAX).astype(np.float32)
    bits = f32.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def unpack_features(blob: bytes) -> dict[str, float]:
    """Inverse of :func:`pack_features`; also reads the float32 blobs stored before it."""
    if len(blob) == 4 * len(MODEL_FEATURES):
        values = np.frombuffer(blob, dtype=np.float32).tolist()
    else:
        halves = np.frombuffer(blob, dtype="<u2").astype(np.uint32) << 16
        values = halves.view(np.float32).tolist()
    return dict(zip(MODEL_FEATURES, values, strict=True))


@dataclass
class CustomerScoringState:
    """The decoded output state of one customer."""

    segment: SegmentState | None = None
    alert: AlertState | None = None
    pending: tuple[Snapshot, ...] = ()
    last_activity: float | None = None
    last_snapshot: float | None = None

    @classmethod
    def decode(cls, customer_id: str, raw: Mapping[str, Any] | None) -> CustomerScoringState:
        """From the msgpack mapping stored in Redis."""
        if not raw:
            return cls()
        seg = raw.get("seg")
        al = raw.get("al")
        pending = tuple(Snapshot(customer_id, float(t), unpack_features(f), int(v))
                        for t, v, f in raw.get("pend", ()))
        return cls(
            segment=SegmentState(int(seg[0]), float(seg[1])) if seg else None,
            alert=AlertState(None if al[0] is None else float(al[0]), float(al[1]))
            if al else None,
            pending=pending,
            last_activity=raw.get("la"),
            last_snapshot=raw.get("ls"),
        )

    def encode(self) -> dict[str, Any]:
        """To the msgpack mapping stored in Redis."""
        out: dict[str, Any] = {
            "pend": [[s.scored_at, s.model_version, pack_features(s.features)]
                     for s in self.pending],
        }
        if self.segment is not None:
            out["seg"] = [self.segment.segment_id, self.segment.since]
        if self.alert is not None:
            out["al"] = [self.alert.last_alert_at, self.alert.last_probability]
        if self.last_activity is not None:
            out["la"] = self.last_activity
        if self.last_snapshot is not None:
            out["ls"] = self.last_snapshot
        return out


class ModelHolder:
    """The worker's read-only copy of the current model version, hot-reloaded."""

    def __init__(self, store: ModelStore, metrics: Metrics, clock: Callable[[], float]) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.bundle: ModelBundle | None = None
        self.published_at = 0.0
        #: version -> wall time it was refused; retried after REFUSED_RETRY_S in case the
        #: trainer legitimately republishes that version number (e.g. after a restore).
        self._refused: dict[int, float] = {}

    async def refresh(self) -> bool:
        """Load a newer published version if there is one; True if the model changed."""
        version = await self.store.current_version()
        current = self.bundle.version if self.bundle else 0
        refused_at = self._refused.get(version)
        if version == current or (refused_at is not None
                                  and self.clock() - refused_at < REFUSED_RETRY_S):
            self._report()
            return False
        try:
            loaded = await self.store.load_bundle(version)
        except SnapshotRejected as exc:
            self._refused[version] = self.clock()
            self.metrics.model_rejected_snapshots.labels(_reason_code(exc.reason)).inc()
            log.error("refused model snapshot v%s: %s; keeping v%s", version, exc.reason, current)
            return False
        self.bundle, self.published_at = loaded.bundle, loaded.published_at
        set_segment_names(self.metrics, {s: i.name for s, i in loaded.bundle.segments.items()})
        log.info("scoring with model v%s", version)
        self._report()
        return True

    def _report(self) -> None:
        b = self.bundle
        if b is None:
            self.metrics.churn_model_ready.set(0)
            return
        self.metrics.model_version.set(b.version)
        self.metrics.model_snapshot_timestamp_seconds.set(self.published_at)
        self.metrics.model_snapshot_age_seconds.set(max(0.0, self.clock() - self.published_at))
        self.metrics.churn_model_ready.set(1 if b.churn_ready else 0)
        q = b.quality
        for gauge, name in ((self.metrics.churn_roc_auc, "roc_auc"),
                            (self.metrics.churn_log_loss, "log_loss"),
                            (self.metrics.churn_precision, "precision"),
                            (self.metrics.churn_recall, "recall")):
            if name in q:
                gauge.set(q[name])


def _reason_code(reason: str) -> str:
    # Bounded label values: the first words of the reason ("bad signature", "foreign key"...).
    for code in ("signature", "foreign", "magic", "truncated", "length", "format", "unloadable",
                 "not found", "type", "not a"):
        if code in reason:
            return code.replace(" ", "_")
    return "other"


class Scorer:
    """Turns updated profiles into segment changes, churn alerts and training examples."""

    def __init__(self, settings: Settings, profiles: RedisProfileStore, models: ModelHolder,
                 metrics: Metrics, retrier: Retrier,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.profiles = profiles
        self.models = models
        self.metrics = metrics
        self.retrier = retrier
        self.clock = clock
        m = settings.models
        self.horizon_s = m.churn_horizon_days * DAY
        self.check_interval_s = m.check_interval_days * DAY
        self.hysteresis = m.segment_hysteresis
        self.policy = AlertPolicy(threshold=m.churn_threshold,
                                  cooldown_s=max(m.alert_cooldown_days * DAY, 1.0),
                                  min_labels=m.min_labels_before_alerts)
        self.lock = asyncio.Lock()
        self._loaded_once = False
        #: partition -> event-time clock; the Faust layer replaces it with one that knows lag.
        self.clock_for: Callable[[int], PartitionClock] = \
            lambda _p: PartitionClock(-math.inf, math.inf)

    # ------------------------------------------------------------ batch path

    async def on_batch(self, batch: ActivityBatch) -> list[OutRecord]:
        """Score every customer active in the batch; persist their scoring state."""
        if not self._loaded_once:
            self._loaded_once = True
            await self.retrier.call("load_model", self.models.refresh)
        active = [u for u in batch.updates if u.customer_id in batch.activity]
        if not active:
            return []
        # The caller (IngestPipeline.process) holds self.lock around the update and this call.
        work: list[_Work] = []
        deferred: dict[str, float] = {}
        gates = {p: self.clock_for(p).gate for p in set(batch.partitions.values())}
        for update in active:
            cid = update.customer_id
            st = CustomerScoringState.decode(cid, update.output_state)
            examples: list[LabelledExample] = []
            for t in batch.activity[cid]:
                # Activity after a snapshot resolves it whatever order the inputs arrive in.
                st.pending, labelled = on_activity(st.pending, t, self.horizon_s)
                examples += labelled
            as_of = float(update.state.get("lq", max(batch.activity[cid])))
            st.last_activity = max(st.last_activity or as_of, as_of)
            if as_of > gates.get(batch.partitions.get(cid, 0), math.inf):
                # Another input lags behind this customer's latest event: the profile may
                # still miss events before as_of, so scoring waits for the sweep.
                deferred[cid] = as_of
                work.append((cid, st, None, examples))
            else:
                work.append((cid, st, ProfileView(cid, as_of, update.state), examples))
        out, states, schedule = self._decide(work, snapshot_gap=MIN_SNAPSHOT_GAP_S)
        await self._persist(states, schedule, batch.partitions, deferred)
        return out

    # ------------------------------------------------------------ idle path

    async def sweep(self, partition: int, send: Sender) -> Awaitable[None]:
        """Score deferred activity and idle customers of one partition as event time allows.

        The outputs are handed to ``send`` before the lock is released, so they reach their
        topics in order with the batches' outputs; returns the awaitable of their acks.
        """
        clock = self.clock_for(partition)
        prefix = self.profiles.prefix
        client = self.profiles.client
        if clock.watermark == -math.inf and clock.gate == -math.inf:
            return no_acks()

        def due(key: str, upto: float) -> Callable[[], Awaitable[list[Any]]]:
            return lambda: client.zrangebyscore(key, "-inf", upto, start=0, num=SWEEP_LIMIT)

        ready = await self.retrier.call(
            "sweep", due(keys.deferred_key(prefix, partition), clock.gate))
        idle = await self.retrier.call(
            "sweep", due(keys.checks_key(prefix, partition), clock.watermark))
        ids = list(dict.fromkeys(_text(m) for m in [*ready, *idle]))
        if not ids:
            return no_acks()
        was_deferred = {_text(m) for m in ready}
        async with self.lock:
            states, outs = await self.retrier.call("sweep",
                                                   lambda: self.profiles.get_customers(ids))
            work: list[_Work] = []
            still_deferred: dict[str, float] = {}
            gone: list[str] = []
            for cid, state, raw in zip(ids, states, outs, strict=True):
                if state is None and raw is None:
                    # The customer's key expired (profile TTL): nothing to label or score,
                    # and writing a state would bring back a key with no profile.
                    gone.append(cid)
                    continue
                st = CustomerScoringState.decode(cid, raw)
                st.pending, examples = on_watermark(st.pending, clock.watermark, self.horizon_s)
                view: ProfileView | None = None
                if state is not None and cid in was_deferred:
                    as_of = float(state.get("lq", 0.0))
                    if as_of <= clock.gate:
                        view = ProfileView(cid, as_of, state)
                    else:
                        still_deferred[cid] = as_of
                elif state is not None:
                    idle_at = self._next_idle(st)
                    if idle_at is not None and idle_at <= clock.watermark:
                        self.metrics.idle_checks.inc()
                        view = ProfileView(cid, idle_at, state)
                work.append((cid, st, view, examples))
            gap = MIN_SNAPSHOT_GAP_S if was_deferred else 0.0
            out, new_states, schedule = self._decide(work, snapshot_gap=gap)
            await self._persist(new_states, schedule, dict.fromkeys(ids, partition),
                                still_deferred, resolved=was_deferred - set(still_deferred),
                                forget=gone)
            return await send(out) if out else no_acks()

    def _next_idle(self, st: CustomerScoringState) -> float | None:
        if st.last_activity is None:
            return None
        after = max(st.last_activity, st.last_snapshot or st.last_activity)
        return next_idle_check(st.last_activity, after, check_interval_s=self.check_interval_s,
                               horizon_s=self.horizon_s)

    def _next_due(self, st: CustomerScoringState) -> float | None:
        candidates = [s.scored_at + self.horizon_s for s in st.pending]
        idle = self._next_idle(st)
        if idle is not None:
            candidates.append(idle)
        return min(candidates) if candidates else None

    # ------------------------------------------------------------ shared

    def _decide(
        self,
        work: Sequence[_Work],
        *, snapshot_gap: float,
    ) -> tuple[list[OutRecord], dict[str, CustomerScoringState], dict[str, float | None]]:
        bundle = self.models.bundle
        version = bundle.version if bundle else 0
        now = datetime.fromtimestamp(self.clock(), UTC)
        topics = self.settings.topics
        out: list[OutRecord] = []
        states: dict[str, CustomerScoringState] = {}
        schedule: dict[str, float | None] = {}
        to_score: list[tuple[str, CustomerScoringState, ProfileView, dict[str, float]]] = []
        training: list[dict[str, Any]] = []
        for cid, st, view, examples in work:
            for ex in examples:
                training.append(_label_example(ex))
                self.metrics.churn_labels.labels(str(ex.label)).inc()
            if view is not None:
                features = model_features(view)
                if st.last_snapshot is None or view.as_of - st.last_snapshot >= snapshot_gap:
                    snap = Snapshot(cid, view.as_of, features, version)
                    st.pending, added = add_snapshot(st.pending, snap, max_pending=MAX_PENDING,
                                                     min_gap_s=snapshot_gap)
                    if added:
                        st.last_snapshot = view.as_of
                        training.append(_profile_example(cid, view.as_of, features))
                to_score.append((cid, st, view, features))
            states[cid] = st
        if bundle is not None and to_score:
            scores = bundle.score_features_many([f for _, _, _, f in to_score])
            for (cid, st, view, _), score in zip(to_score, scores, strict=True):
                out += self._outputs(bundle, cid, st, view, score, now)
        out += [OutRecord(topics.training_examples, None, record)
                for record in training_records(training)]
        for cid, st in states.items():
            schedule[cid] = self._next_due(st)
        return out, states, schedule

    def _outputs(self, bundle: ModelBundle, cid: str, st: CustomerScoringState,
                 view: ProfileView, score: Score, now: datetime) -> list[OutRecord]:
        topics = self.settings.topics
        out: list[OutRecord] = []
        event_time = datetime.fromtimestamp(view.as_of, UTC)
        self.metrics.churn_probability.observe(score.churn_probability)
        previous = st.segment
        st.segment, change = decide_segment(st.segment, score.distances, view.as_of,
                                            hysteresis=self.hysteresis)
        current = _segment_info(bundle, st.segment.segment_id)
        if change is not None:
            prev_info = (None if change.previous_segment_id is None
                         else _segment_info(bundle, change.previous_segment_id))
            record = SegmentChanged.build(
                customer_id=cid, previous=prev_info, current=current, rfm_tier=score.rfm_tier,
                model_version=bundle.version, event_time=event_time, emitted_at=now)
            out.append(OutRecord(topics.segment_changes, cid.encode(), record.to_bytes()))
            self.metrics.segment_changes.inc()
            if previous is not None:
                self.metrics.segment_customers.labels(str(previous.segment_id)).dec()
            self.metrics.segment_customers.labels(str(st.segment.segment_id)).inc()
        st.alert, decision = decide_alert(
            st.alert,
            AlertInput(cid, view.as_of, score.churn_probability, bundle.version,
                       bundle.labels_seen if bundle.churn_ready else 0),
            self.policy)
        if decision is not None:
            alert = ChurnAlert(
                alert_id=decision.alert_id, customer_id=cid,
                churn_probability=decision.churn_probability,
                threshold=self.policy.threshold, risk_level=decision.risk_level,
                customer_value=round(view.net_spend, 2), segment=current,
                reasons=[Reason(feature=f, contribution=c, text=t) for f, c, t in score.reasons],
                model_version=bundle.version, event_time=event_time, emitted_at=now)
            out.append(OutRecord(topics.churn_alerts, cid.encode(), alert.to_bytes()))
            self.metrics.churn_alerts.labels(decision.risk_level).inc()
        return out

    async def _persist(self, states: Mapping[str, CustomerScoringState],
                       schedule: Mapping[str, float | None],
                       partitions: Mapping[str, int],
                       deferred: Mapping[str, float] | None = None,
                       resolved: Iterable[str] = (),
                       forget: Iterable[str] = ()) -> None:
        prefix = self.profiles.prefix
        add: dict[str, dict[str, float]] = {}
        remove: dict[str, list[str]] = {}
        for cid in states:
            ckey = keys.checks_key(prefix, partitions.get(cid, 0))
            due = schedule.get(cid)
            if due is None:
                remove.setdefault(ckey, []).append(cid)
            else:
                add.setdefault(ckey, {})[cid] = due
        for cid, at in (deferred or {}).items():
            add.setdefault(keys.deferred_key(prefix, partitions.get(cid, 0)), {})[cid] = at
        for cid in resolved:
            remove.setdefault(keys.deferred_key(prefix, partitions.get(cid, 0)), []).append(cid)
        for cid in forget:  # customers whose key is gone leave both schedules
            partition = partitions.get(cid, 0)
            remove.setdefault(keys.checks_key(prefix, partition), []).append(cid)
            remove.setdefault(keys.deferred_key(prefix, partition), []).append(cid)
        encoded = {cid: st.encode() for cid, st in states.items()}

        async def write() -> None:
            await self.profiles.put_output_states(
                encoded, self.settings.redis.profile_ttl_s, add=add, remove=remove)

        await self.retrier.call("write_scoring_state", write)


def _segment_info(bundle: ModelBundle, segment_id: int) -> SegmentInfo:
    seg = bundle.segments.get(segment_id)
    if seg is None:
        return SegmentInfo(segment_id=segment_id, name=f"segment {segment_id}", profile={})
    return SegmentInfo(segment_id=segment_id, name=seg.name,
                       profile={k: float(v) for k, v in seg.profile.items()})


def _profile_example(cid: str, at: float, features: Mapping[str, float]) -> dict[str, Any]:
    return {"kind": "profile", "customer_id": cid, "at": at,
            "features": [features[n] for n in MODEL_FEATURES]}


def _label_example(ex: LabelledExample) -> dict[str, Any]:
    s = ex.snapshot
    return {"kind": "label", "customer_id": s.customer_id, "scored_at": s.scored_at,
            "model_version": s.model_version, "label": ex.label,
            "labelled_at": ex.labelled_at, "features": [s.features[n] for n in MODEL_FEATURES]}


def training_records(examples: Sequence[Mapping[str, Any]],
                     per_record: int = EXAMPLES_PER_RECORD) -> list[bytes]:
    """A batch's training examples as few training-topic records, in order.

    One Kafka record per example cost the producing worker and the trainer Faust's
    per-message overhead each time (0.14 training examples per input event at one
    event per message); the trainer reads these records in order, so batching them
    changes nothing it learns.
    """
    return [orjson.dumps({"kind": "batch", "examples": examples[i:i + per_record]})
            for i in range(0, len(examples), per_record)]


def _parse_example(doc: Mapping[str, Any]) -> tuple[str, Any]:
    features = dict(zip(MODEL_FEATURES, (float(v) for v in doc["features"]), strict=True))
    if doc["kind"] == "profile":
        return "profile", (doc["customer_id"], float(doc["at"]), features)
    snap = Snapshot(doc["customer_id"], float(doc["scored_at"]), features,
                    int(doc["model_version"]))
    return "label", LabelledExample(snap, int(doc["label"]), float(doc["labelled_at"]))


def parse_training_record(raw: bytes) -> list[tuple[str, Any]]:
    """Decode a training-topic record into ("profile", (cid, at, features)) / ("label", ex) pairs.

    Reads batch records and the one-example records earlier versions wrote, so a
    topic written before an upgrade still trains the model.
    """
    doc = orjson.loads(raw)
    if not isinstance(doc, dict):
        raise TypeError("a training record must be a JSON object")
    examples = doc["examples"] if doc.get("kind") == "batch" else [doc]
    if not isinstance(examples, list):
        raise TypeError("a batch's examples must be a list")
    return [_parse_example(e) for e in examples]


def iter_partitions(assigned: Iterable[Any], topic: str) -> set[int]:
    """Partition numbers of ``topic`` in a consumer assignment."""
    return {tp.partition for tp in assigned if tp.topic == topic}
