"""In-memory replay of the scoring and training loop, in event time, with no I/O.

The replay is the worker's second driver of the scoring step (``core/step.py``), on
the in-memory twin of its store: each tracker message is applied to the profiles
(``InMemoryProfiles``, the Lua script's twin) and its customer stepped with the new
activity, as a worker batch of one message would; then the watermark (newest event
time minus the allowed lateness) moves and every customer due by it is stepped, as the
worker's sweep does. Examples go straight to one :class:`Trainer`, which cuts a model
version every ``snapshot_every`` examples (``version_due``, the trainer service's rule).

Where it differs from a worker, by design: there is no lag between the inputs (so no
scoring waits for a lagging topic), every message is its own batch, the sweep runs after
every message instead of once a second, and a new version scores from the next step on
instead of after the workers' next reload. Model-quality tests and
``load_tests/model_selection.py`` use it to run generator traffic end to end in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from streamproc.core import seen
from streamproc.core.churn_definition import is_qualifying
from streamproc.core.features import ProfileView, event_lane, event_ops
from streamproc.core.labels import LabelledExample
from streamproc.core.modelset import ModelBundle, Trainer, version_due
from streamproc.core.step import (
    AlertOutcome,
    SegmentDecision,
    StepConfig,
    StepInput,
    step_many,
)
from streamproc.core.store import CustomerRecord, InMemoryStore, StateWrite, schedule_name
from streamproc.core.training import GapExample, ProfileExample, TrainingExample

_CLICK_DEFAULTS = {"session_id": None, "category": None, "quantity": None}
CHECKS = schedule_name("checks", 0)


def event_namespace(value: Mapping[str, Any]) -> SimpleNamespace:
    """An event dict (contract field names) as the attribute object the feature code reads."""
    if "order_id" in value:
        items = [SimpleNamespace(**{"category": None, **item}) for item in value.get("items", [])]
        return SimpleNamespace(**{"session_id": None, **value, "items": items})
    return SimpleNamespace(**{**_CLICK_DEFAULTS, **value})


def event_time(value: Mapping[str, Any]) -> float:
    """Epoch seconds of an event dict's ISO-8601 timestamp."""
    return datetime.fromisoformat(str(value["timestamp"])).timestamp()


@dataclass
class Replay:
    """Feed messages in event-time order with :meth:`feed_message`; read outcomes from fields.

    ``config`` and ``snapshot_every`` come from the settings (``ModelSettings.step_config()``
    and ``SNAPSHOT_EVERY_EXAMPLES``), ``lateness_s`` from ``INGEST__ALLOWED_LATENESS_S``.
    """

    trainer: Trainer
    config: StepConfig
    snapshot_every: int
    lateness_s: float = 0.0
    record: bool = False
    store: InMemoryStore = field(default_factory=InMemoryStore)
    #: The version scoring; None before the trainer's first one (as a cold worker).
    bundle: ModelBundle | None = None
    watermark: float = -math.inf
    newest: float = -math.inf
    alerts: list[AlertOutcome] = field(default_factory=list)
    segment_changes: list[SegmentDecision] = field(default_factory=list)
    snapshots: int = 0
    dropped_snapshots: int = 0
    #: With ``record``: the profile stream the trainer learned and the labels, in order.
    profile_stream: list[ProfileExample] = field(default_factory=list)
    label_stream: list[LabelledExample] = field(default_factory=list)
    _since_cut: int = 0

    def feed_message(self, customer_id: str, values: Sequence[Mapping[str, Any]]) -> None:
        """Process one tracker message: a customer's events (in event-time order overall)."""
        activity: list[tuple[float, float]] = []
        for value in values:
            ts = event_time(value)
            event = event_namespace(value)
            status = self.store.profiles.apply(customer_id, str(value["event_id"]),
                                               event_ops(event, ts), ts, event_lane(event))
            self.newest = max(self.newest, ts)
            kind = str(value.get("type") or value.get("event_type"))
            if status == seen.APPLIED and is_qualifying(kind, self.config.churn_definition):
                activity.append((ts, float(value.get("total", 0.0))))
        if activity:
            activity.sort()
            [rec] = self.store.read_now([customer_id])
            as_of = float((rec.profile or {}).get("lq", activity[-1][0]))
            self._step([(rec, StepInput(customer_id, rec.profile, tuple(activity),
                                        score_at=as_of))])
        self.advance(self.newest - self.lateness_s)

    def feed_messages(self, messages: Iterable[tuple[str, str, Mapping[str, Any]]]) -> None:
        """Feed ``(topic, customer_id, message)`` as ``generator.batch_envelopes`` yields them."""
        for _, customer_id, message in messages:
            events = message.get("events")
            self.feed_message(customer_id, [message] if events is None else events)

    def advance(self, watermark: float) -> None:
        """Move the watermark: step every customer due by it (labels, idle checks)."""
        if watermark <= self.watermark:
            return
        self.watermark = watermark
        due = self.store.due_now(CHECKS, watermark, len(self.store.states))
        if due:
            self._step([(rec, StepInput(rec.customer_id, rec.profile, watermark=watermark))
                        for rec in self.store.read_now(due)])

    def _step(self, work: Sequence[tuple[CustomerRecord, StepInput]]) -> None:
        stepped = step_many([(rec.state, inp) for rec, inp in work], self.bundle, self.config)
        writes = []
        for (rec, inp), (state, out) in zip(work, stepped, strict=True):
            writes.append(StateWrite(inp.customer_id, rec.token, state, {CHECKS: out.next_due}))
            self.alerts += out.alerts
            self.segment_changes += out.segment_changes
            self.dropped_snapshots += out.dropped_snapshots
            self._learn(out.examples)
        self.store.write_now(writes)

    def _learn(self, examples: Iterable[TrainingExample]) -> None:
        for example in examples:
            if isinstance(example, GapExample):
                self.trainer.learn_gap(example.gap_days, example.at)
            elif isinstance(example, ProfileExample):
                self.snapshots += 1
                self.trainer.learn_profile_features(example.customer_id, example.features,
                                                    example.at)
                if self.record:
                    self.profile_stream.append(example)
            else:
                self.trainer.learn_label(example)
                if self.record:
                    self.label_stream.append(example)
            self._since_cut += 1
            if version_due(self.trainer.version, self._since_cut, self.snapshot_every):
                self.bundle = self.trainer.bundle()
                self._since_cut = 0

    def views(self, as_of: float) -> list[ProfileView]:
        """Every customer's profile as of ``as_of``."""
        return [ProfileView(cid, as_of, state)
                for cid, state in self.store.profiles.states.items()]
