"""Scoring stage: the worker's driver of the per-customer step (``core/step.py``).

After a batch's features are durable in Redis, every customer with fresh activity is
stepped; a timer sweeps each partition's schedules (deferred activity, idle checks and
horizon ends) as event time allows. This module only chooses the step's inputs (the
partition's event-time clock), moves state through the :class:`ScoringStore`, and turns
the step's outputs into records and metrics.

Writes are conditional: a customer whose state another worker changed since it was read
(its two input topics on two partitions) is read again and stepped again, up to
:data:`WRITE_ATTEMPTS` times, never overwritten.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, Protocol

from streamproc.adapters.model_store import ModelStore
from streamproc.core.churn_definition import DEFAULT_CHURN_DEFINITION, ChurnDefinition
from streamproc.core.eventclock import PartitionClock
from streamproc.core.labels import LabelledExample
from streamproc.core.modelset import ModelBundle, SnapshotRejected
from streamproc.core.step import (
    ScoringState,
    StepInput,
    StepOutput,
    churn_alert,
    lifecycle_changed,
    segment_changed,
    step_many,
)
from streamproc.core.store import CustomerRecord, ScoringStore, StateWrite, schedule_name
from streamproc.core.training import encode_records, feature_set
from streamproc.metrics import Metrics, set_segment_names
from streamproc.runtime.pipeline import ActivityBatch, OutRecord, Retrier, Sender, no_acks
from streamproc.settings import Settings

log = logging.getLogger(__name__)
SWEEP_LIMIT = 500
REFUSED_RETRY_S = 30.0
#: Writes of one customer before giving up when other workers keep changing it meanwhile.
WRITE_ATTEMPTS = 5
CHECKS, DEFERRED = "checks", "deferred"


class ModelSource(Protocol):
    """Where the scorer gets the model version it scores with."""

    bundle: ModelBundle | None

    async def refresh(self) -> bool:
        """Load a newer version if there is one; True if the model changed."""
        ...


class ModelHolder:
    """The worker's read-only copy of the current model version, hot-reloaded."""

    def __init__(self, store: ModelStore, metrics: Metrics, clock: Callable[[], float],
                 definition: ChurnDefinition = DEFAULT_CHURN_DEFINITION) -> None:
        self.store = store
        self.metrics = metrics
        self.clock = clock
        #: The churn definition, the label of the quality gauges.
        self.definition = definition
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
        if loaded.bundle.feature_set != feature_set():
            self._refused[version] = self.clock()
            self.metrics.feature_set_mismatches.labels("model").inc()
            log.error("model v%s was learned on another feature set (%s, running %s); keeping "
                      "v%s", version, loaded.bundle.feature_set, feature_set(), current)
            return False
        self.bundle, self.published_at = loaded.bundle, loaded.published_at
        set_segment_names(self.metrics, {s: i.name for s, i in loaded.bundle.segments.items()})
        log.info("scoring with model v%s", version)
        self._report()
        return True

    def forget(self) -> None:
        """Drop the model in hand: Redis was replaced (an operator accepted a new deployment
        marker), so whatever it publishes next is loaded, the same version number too."""
        self.bundle, self.published_at = None, 0.0
        self._refused.clear()
        self.metrics.model_version.set(0)
        self._report()

    def _report(self) -> None:
        b = self.bundle
        if b is None:
            self.metrics.churn_model_ready.set(0)
            return
        self.metrics.model_version.set(b.version)
        self.metrics.model_snapshot_timestamp_seconds.set(self.published_at)
        self.metrics.model_snapshot_age_seconds.set(max(0.0, self.clock() - self.published_at))
        self.metrics.churn_model_ready.set(1 if b.churn_ready else 0)
        m = self.metrics
        definition = self.definition
        m.churn_horizon_seconds.labels(definition).set(b.horizon_s)
        q = b.quality
        for gauge, name in ((m.churn_roc_auc, "roc_auc"), (m.churn_log_loss, "log_loss"),
                            (m.churn_brier, "brier"), (m.churn_base_rate, "base_rate"),
                            (m.churn_predicted_positive_rate, "predicted_positive_rate"),
                            (m.churn_precision, "precision"), (m.churn_recall, "recall")):
            if name in q:
                gauge.labels(definition).set(q[name])
            else:
                gauge.clear()


def _reason_code(reason: str) -> str:
    # Bounded label values: the first words of the reason ("bad signature", "foreign key"...).
    for code in ("signature", "foreign", "magic", "truncated", "length", "format", "unloadable",
                 "not found", "type", "not a"):
        if code in reason:
            return code.replace(" ", "_")
    return "other"


@dataclass(frozen=True, slots=True)
class _Job:
    """One customer to step: which partition's batch or sweep brings it, and what arrived."""

    customer_id: str
    partition: int
    clock: PartitionClock
    kind: Literal["batch", "deferred", "idle"]
    activity: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class _Decided:
    """A stepped customer: its conditional write, and what it publishes once written."""

    write: StateWrite
    output: StepOutput
    bundle: ModelBundle | None
    stale_snapshots: int = 0
    spread_now: bool = False


class Scorer:
    """Drives the scoring step for this worker's batches and partitions."""

    def __init__(self, settings: Settings, store: ScoringStore, models: ModelSource,
                 metrics: Metrics, retrier: Retrier,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.models = models
        self.metrics = metrics
        self.retrier = retrier
        self.clock = clock
        self.config = settings.models.step_config()
        self.lock = asyncio.Lock()
        self._loaded_once = False
        #: partition -> event-time clock; the Faust layer replaces it with one that knows lag.
        self.clock_for: Callable[[int], PartitionClock] = \
            lambda _p: PartitionClock(-math.inf, math.inf)

    async def on_batch(self, batch: ActivityBatch) -> list[OutRecord]:
        """Step every customer active in the batch, then whoever its event time made due.

        The caller (IngestPipeline.stage) holds :attr:`lock` around the update and this call.
        Due customers are stepped in the same pass as the batch that moved event time past
        them rather than at the next timer sweep, so what is decided does not depend on the
        timer (the replay, which sweeps after every message, decides alike).
        """
        if not self._loaded_once:
            self._loaded_once = True
            await self.retrier.call("load_model", self.models.refresh)
        clocks = {p: self.clock_for(p) for p in sorted(set(batch.partitions.values()))}
        jobs: dict[str, _Job] = {}
        records: dict[str, CustomerRecord] = {}
        for update in batch.updates:
            cid = update.customer_id
            if cid in batch.activity:
                partition = batch.partitions.get(cid, 0)
                jobs[cid] = _Job(cid, partition, clocks[partition], "batch",
                                 tuple(batch.activity[cid]))
                records[cid] = update.scoring
        out = await self._settle(jobs, records) if jobs else []
        for partition, clock in clocks.items():
            out += await self._sweep_due(partition, clock)
        return out

    async def sweep(self, partition: int, send: Sender) -> Awaitable[None]:
        """Step deferred activity and due customers of one partition as event time allows.

        The timer's pass: it finds what waits for a lagging input to catch up, and a
        partition whose input stopped. The outputs are handed to ``send`` before the lock
        is released, so they reach their topics in order with the batches' outputs; returns
        the awaitable of their acks.
        """
        async with self.lock:
            out = await self._sweep_due(partition, self.clock_for(partition))
            return await send(out) if out else no_acks()

    async def _sweep_due(self, partition: int, clock: PartitionClock) -> list[OutRecord]:
        """Step the partition's deferred customers its gate passed and those due by its
        watermark (the caller holds the lock)."""
        if clock.watermark == -math.inf and clock.gate == -math.inf:
            return []
        ready = await self.retrier.call("sweep", partial(
            self.store.due, schedule_name(DEFERRED, partition), clock.gate, SWEEP_LIMIT))
        idle = await self.retrier.call("sweep", partial(
            self.store.due, schedule_name(CHECKS, partition), clock.watermark, SWEEP_LIMIT))
        jobs = {cid: _Job(cid, partition, clock, "idle") for cid in idle}
        jobs.update((cid, _Job(cid, partition, clock, "deferred")) for cid in ready)
        if not jobs:
            return []
        read = await self.retrier.call("sweep", partial(self.store.read, list(jobs)))
        return await self._settle(jobs, {r.customer_id: r for r in read})

    async def _settle(self, jobs: Mapping[str, _Job],
                      records: Mapping[str, CustomerRecord]) -> list[OutRecord]:
        """Step, write conditionally, and step again whoever another worker wrote meanwhile."""
        committed: list[_Decided] = []
        store = self.store
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            decided = self._decide([(jobs[cid], rec) for cid, rec in records.items()])
            writes = [d.write for d in decided]
            refused = set(await self.retrier.call("write_scoring_state",
                                                  partial(store.write, writes)))
            committed += [d for d in decided if d.write.customer_id not in refused]
            if not refused:
                break
            if attempt == WRITE_ATTEMPTS:
                self.metrics.scoring_conflicts.labels("gave_up").inc(len(refused))
                log.error("gave up scoring %d customers: other workers kept changing their "
                          "state (%d attempts)", len(refused), WRITE_ATTEMPTS)
                break
            self.metrics.scoring_conflicts.labels("retried").inc(len(refused))
            read = await self.retrier.call("read_scoring_state",
                                           partial(store.read, list(refused)))
            records = {r.customer_id: r for r in read}
        return self._publish(committed)

    def _decide(self, work: Sequence[tuple[_Job, CustomerRecord]]) -> list[_Decided]:
        bundle = self.models.bundle  # the timer may load another version while we write
        inputs = [(rec.state, self._input(job, rec)) for job, rec in work]
        stepped = step_many(inputs, bundle, self.config)
        return [self._write(job, rec, state, output, bundle)
                for (job, rec), (state, output) in zip(work, stepped, strict=True)]

    def _input(self, job: _Job, rec: CustomerRecord) -> StepInput:
        profile, now = rec.profile, self.clock()
        if job.kind == "batch":
            # Batches label by activity only: the sweep moves the watermark.
            return StepInput(job.customer_id, profile, job.activity,
                             score_at=None if self._waits(job, rec) else self._as_of(job, rec),
                             now=now)
        score_at = None
        if job.kind == "deferred" and profile is not None and not self._waits(job, rec):
            score_at = self._as_of(job, rec)
        return StepInput(job.customer_id, profile, score_at=score_at,
                         watermark=job.clock.watermark, now=now)

    @staticmethod
    def _as_of(job: _Job, rec: CustomerRecord) -> float:
        # The profile as of its last qualifying event (lq), which may be newer than the
        # activity in hand when another batch of the customer's landed first.
        fallback = job.activity[-1][0] if job.activity else 0.0
        return float((rec.profile or {}).get("lq", fallback))

    def _waits(self, job: _Job, rec: CustomerRecord) -> bool:
        # Another input lags behind the customer's latest event: the profile may still miss
        # events before it, so scoring waits for the sweep.
        return self._as_of(job, rec) > job.clock.gate

    def _write(self, job: _Job, rec: CustomerRecord, state: ScoringState,
               output: StepOutput, bundle: ModelBundle | None) -> _Decided:
        cid, partition = job.customer_id, job.partition
        if rec.profile is None and rec.state is None:
            # The customer's key expired (profile TTL): nothing to label or score, and
            # writing a state would bring back a key with no profile. It leaves the schedules.
            gone = {schedule_name(CHECKS, partition): None,
                    schedule_name(DEFERRED, partition): None}
            return _Decided(StateWrite(cid, rec.token, None, gone), StepOutput(), bundle)
        # One owner per customer: the partition that scored it first holds its idle checks.
        owner = state.owner if state.owner is not None else partition
        spread_now = owner != partition and not state.spread
        state = replace(state, owner=owner, spread=state.spread or spread_now)
        schedules: dict[str, float | None] = {schedule_name(CHECKS, owner): output.next_due}
        if job.kind == "idle" and owner != partition:  # never more than one schedule
            schedules[schedule_name(CHECKS, partition)] = None
        deferred = schedule_name(DEFERRED, partition)
        if job.kind == "batch" and self._waits(job, rec):
            schedules[deferred] = self._as_of(job, rec)
        elif job.kind == "deferred":
            schedules[deferred] = self._as_of(job, rec) if self._waits(job, rec) else None
        return _Decided(StateWrite(cid, rec.token, state, schedules), output, bundle,
                        rec.stale_snapshots, spread_now)

    def _publish(self, committed: Iterable[_Decided]) -> list[OutRecord]:
        """Records and metrics of the written customers' outputs."""
        topics, m = self.settings.topics, self.metrics
        now = datetime.fromtimestamp(self.clock(), UTC)
        out: list[OutRecord] = []
        examples: list[Any] = []
        for d in committed:
            o = d.output
            examples += o.examples
            for label in (e for e in o.examples if isinstance(e, LabelledExample)):
                m.churn_labels.labels(str(label.label)).inc()
            for p in o.probabilities:
                m.churn_probability.observe(p)
            if o.idle_checks:
                m.idle_checks.inc(o.idle_checks)
            if d.stale_snapshots:
                m.feature_set_mismatches.labels("pending_snapshot").inc(d.stale_snapshots)
            if d.spread_now:
                m.multi_partition_customers.inc()
            bundle = d.bundle
            if bundle is None:
                continue
            for change in o.segment_changes:
                moved = segment_changed(change, bundle, now)
                out.append(OutRecord(topics.segment_changes, moved.customer_id.encode(),
                                     moved.to_bytes()))
                m.segment_changes.inc()
                if change.change.previous_segment_id is not None:
                    m.segment_customers.labels(str(change.change.previous_segment_id)).dec()
                m.segment_customers.labels(str(change.change.segment_id)).inc()
            if o.history_suppressed:
                m.history_suppressed.inc(o.history_suppressed)
            for stage in o.stage_changes:
                staged = lifecycle_changed(stage, bundle, now)
                out.append(OutRecord(topics.lifecycle_changes, staged.customer_id.encode(),
                                     staged.to_bytes()))
                m.lifecycle_changes.labels(staged.stage).inc()
            for alert in o.alerts:
                record = churn_alert(alert, bundle, self.config.alert_policy.threshold, now)
                body = record.to_bytes()
                out.append(OutRecord(topics.churn_alerts, record.customer_id.encode(), body))
                if record.value.priority == 1:
                    out.append(OutRecord(topics.priority_alerts, record.customer_id.encode(),
                                         body))
                m.churn_alerts.labels(record.risk_level).inc()
        out += [OutRecord(topics.training_examples, None, r) for r in encode_records(examples)]
        return out


def iter_partitions(assigned: Iterable[Any], topic: str) -> set[int]:
    """Partition numbers of ``topic`` in a consumer assignment."""
    return {tp.partition for tp in assigned if tp.topic == topic}
