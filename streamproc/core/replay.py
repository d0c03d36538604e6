"""In-memory replay of the scoring and training loop, in event time, with no I/O.

It drives the pure core the way the runtime does: features from event ops, active
and idle snapshots, delayed labels against a watermark, a single trainer, a
model bundle refreshed on an event-time cadence, segment hysteresis and the alert
policy. Model-quality tests and ``load_tests/model_selection.py`` use it to run
generator traffic end to end in a few seconds.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from streamproc.core.features import (
    InMemoryProfiles,
    ProfileView,
    event_lane,
    event_ops,
    model_features,
)
from streamproc.core.labels import (
    DAY,
    LabelledExample,
    Snapshot,
    add_snapshot,
    next_idle_check,
    on_activity,
    on_watermark,
)
from streamproc.core.modelset import ModelBundle, Trainer
from streamproc.core.policies import (
    AlertDecision,
    AlertInput,
    AlertPolicy,
    AlertState,
    SegmentState,
    decide_alert,
    decide_segment,
)

_CLICK_DEFAULTS = {"session_id": None, "category": None, "quantity": None}


def event_namespace(value: Mapping[str, Any]) -> SimpleNamespace:
    """An event dict (contract field names) as the attribute object the feature code reads."""
    if "order_id" in value:
        items = [SimpleNamespace(**{"category": None, **item}) for item in value.get("items", [])]
        return SimpleNamespace(**{"session_id": None, **value, "items": items})
    return SimpleNamespace(**{**_CLICK_DEFAULTS, **value})


def event_time(value: Mapping[str, Any]) -> float:
    """Epoch seconds of an event dict's ISO-8601 timestamp."""
    return datetime.fromisoformat(str(value["timestamp"])).timestamp()


def is_qualifying(value: Mapping[str, Any]) -> bool:
    """Activity that counts against churn: anything but a refund."""
    return value.get("type") != "refund"


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """The snapshot, label, model-refresh and alert settings of a replay."""

    horizon_s: float = 21 * DAY
    min_gap_s: float = 1 * DAY
    check_interval_s: float = 7 * DAY
    max_pending: int = 16
    bundle_every_s: float = 1 * DAY
    hysteresis: float = 0.15
    alert_policy: AlertPolicy = field(default_factory=AlertPolicy)


@dataclass
class _Customer:
    pending: tuple[Snapshot, ...] = ()
    last_activity: float | None = None
    last_snapshot: float | None = None
    segment: SegmentState | None = None
    alert: AlertState | None = None


@dataclass
class Replay:
    """Feed events in event-time order with :meth:`feed`; read outcomes from the fields."""

    trainer: Trainer
    config: ReplayConfig = field(default_factory=ReplayConfig)
    record: bool = False
    profiles: InMemoryProfiles = field(default_factory=InMemoryProfiles.empty)
    watermark: float = float("-inf")
    bundle: ModelBundle | None = None
    alerts: list[AlertDecision] = field(default_factory=list)
    segment_changes: int = 0
    snapshots: int = 0
    dropped_snapshots: int = 0
    #: With ``record``: the profile stream the trainer learned and the labels, in order.
    profile_stream: list[tuple[str, dict[str, float]]] = field(default_factory=list)
    label_stream: list[LabelledExample] = field(default_factory=list)
    _customers: dict[str, _Customer] = field(default_factory=dict)
    _idle: list[tuple[float, str, float]] = field(default_factory=list)
    _expiry: list[tuple[float, str]] = field(default_factory=list)
    _next_bundle_at: float = float("-inf")

    def feed(self, customer_id: str, value: Mapping[str, Any], ts: float | None = None) -> None:
        """Process one event (events must arrive in event-time order)."""
        ts = event_time(value) if ts is None else ts
        self.advance(ts)
        event = event_namespace(value)
        self.profiles.apply(customer_id, str(value["event_id"]), event_ops(event, ts), ts,
                            event_lane(event))
        if not is_qualifying(value):
            return
        cust = self._customers.setdefault(customer_id, _Customer())
        pending, labelled = on_activity(cust.pending, ts, self.config.horizon_s)
        cust.pending = pending
        self._learn(labelled)
        if cust.last_activity is None or ts > cust.last_activity:
            cust.last_activity = ts
            due = next_idle_check(
                ts,
                ts,
                check_interval_s=self.config.check_interval_s,
                horizon_s=self.config.horizon_s,
            )
            if due is not None:
                heapq.heappush(self._idle, (due, customer_id, ts))
        if cust.last_snapshot is None or ts - cust.last_snapshot >= self.config.min_gap_s:
            self._snapshot(customer_id, cust, ts)

    def feed_all(self, events: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Feed ``(customer_id, event dict)`` pairs."""
        for customer_id, value in events:
            self.feed(customer_id, value)

    def advance(self, watermark: float) -> None:
        """Move the watermark: fire due idle checks, expire horizons, refresh the bundle."""
        if watermark <= self.watermark:
            return
        while self._idle and self._idle[0][0] <= watermark:
            due, cid, last = heapq.heappop(self._idle)
            self._expire(due)
            self._refresh(due)
            cust = self._customers[cid]
            if cust.last_activity != last:
                continue  # the customer came back: this schedule is stale
            self._snapshot(cid, cust, due)
            nxt = next_idle_check(
                last,
                due,
                check_interval_s=self.config.check_interval_s,
                horizon_s=self.config.horizon_s,
            )
            if nxt is not None:
                heapq.heappush(self._idle, (nxt, cid, last))
        self._expire(watermark)
        self._refresh(watermark)
        self.watermark = watermark

    def _expire(self, watermark: float) -> None:
        while self._expiry and self._expiry[0][0] <= watermark:
            _, cid = heapq.heappop(self._expiry)
            cust = self._customers[cid]
            cust.pending, labelled = on_watermark(cust.pending, watermark, self.config.horizon_s)
            self._learn(labelled)

    def _refresh(self, now: float) -> None:
        if self.bundle is None or now >= self._next_bundle_at:
            self.bundle = self.trainer.bundle()
            self._next_bundle_at = now + self.config.bundle_every_s

    def _learn(self, labelled: list[LabelledExample]) -> None:
        for example in labelled:
            self.trainer.learn_label(example)
            if self.record:
                self.label_stream.append(example)

    def _snapshot(self, customer_id: str, cust: _Customer, at: float) -> None:
        if self.bundle is None:
            self._refresh(at)
        assert self.bundle is not None
        view = ProfileView(customer_id, at, self.profiles.states[customer_id])
        features = model_features(view)
        snap = Snapshot(customer_id, at, features, self.bundle.version)
        before = len(cust.pending)
        cust.pending, added = add_snapshot(
            cust.pending, snap, max_pending=self.config.max_pending, min_gap_s=self.config.min_gap_s
        )
        if not added:
            return
        self.snapshots += 1
        self.dropped_snapshots += before + 1 - len(cust.pending)
        cust.last_snapshot = at
        heapq.heappush(self._expiry, (at + self.config.horizon_s, customer_id))
        self.trainer.learn_profile_features(customer_id, features, at)
        if self.record:
            self.profile_stream.append((customer_id, features))
        score = self.bundle.score_features(features)
        cust.segment, change = decide_segment(
            cust.segment, score.distances, at, hysteresis=self.config.hysteresis
        )
        if change is not None and change.previous_segment_id is not None:
            self.segment_changes += 1
        inp = AlertInput(
            customer_id, at, score.churn_probability, self.bundle.version, self.bundle.labels_seen
        )
        cust.alert, alert = decide_alert(cust.alert, inp, self.config.alert_policy)
        if alert is not None:
            self.alerts.append(alert)

    def views(self, as_of: float) -> list[ProfileView]:
        """Every customer's profile as of ``as_of``."""
        return [ProfileView(cid, as_of, state) for cid, state in self.profiles.states.items()]
