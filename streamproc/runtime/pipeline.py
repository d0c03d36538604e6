"""The ingest pipeline for one batch of Kafka messages, independent of Faust.

decode + validate (:meth:`IngestPipeline.prepare`) -> dead letters | one atomic Redis
call -> scoring -> send (:meth:`IngestPipeline.stage`). The caller acknowledges the
batch's offsets only once the awaitable ``stage`` returns has completed, i.e. once every
effect (Redis writes, published records) is durable, then calls ``finish``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, Protocol, TypeVar, cast

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamproc.adapters.redis_store import CustomerUpdate, PreparedEvent, RedisProfileStore
from streamproc.core import seen
from streamproc.core.churn_definition import is_qualifying
from streamproc.core.events import ClickstreamEvent, Event, Rejection, decode_message
from streamproc.core.features import (
    LANE_CLICKSTREAM,
    LANE_PURCHASES,
    clickstream_ops,
    purchase_ops,
)
from streamproc.core.outputs import DeadLetter
from streamproc.metrics import Metrics, observe_many
from streamproc.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One Kafka record as consumed, before decoding."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


# Not frozen: a frozen dataclass pays object.__setattr__ per field, and one is built per
# event (the event's line was 4.5 % of worker samples at 50 events/message).
@dataclass(slots=True)
class _Origin:
    """Where an accepted event came from, to count it and to dead-letter it if late."""

    message: RawMessage
    index: int | None  # position in its batch envelope; None for a single-event message
    kind: str
    #: Qualifying activity under the churn definition: the order total (0 for other
    #: events); None for an event that does not keep the customer from churning.
    activity_amount: float | None


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to publish."""

    topic: str
    key: bytes | None
    value: bytes
    #: Called once the broker acknowledged the record (counts it as published).
    on_ack: Callable[[], object] | None = None


class Publisher(Protocol):
    """Sends records to the broker."""

    async def send(self, records: Sequence[OutRecord]) -> Awaitable[None]:
        """Hand every record to the producer, in order; the result completes on their acks."""
        ...


class RecordProducer(Protocol):
    """The Kafka producer, one record at a time."""

    async def hand(self, record: OutRecord) -> Awaitable[object]:
        """Hand a record to the producer; the result completes on its ack, or raises."""
        ...


@dataclass(frozen=True, slots=True)
class ActivityBatch:
    """What the scoring stage sees of one processed batch."""

    updates: list[CustomerUpdate]
    #: customer -> sorted (event time, order total or 0) of the qualifying activity applied
    #: in this batch (see the churn definition)
    activity: dict[str, list[tuple[float, float]]]
    #: customer -> input partition the customer's events arrived on
    partitions: dict[str, int]
    received_at: float


class ScoringStage(Protocol):
    """Turns updated profiles into output records (segment changes, alerts, examples)."""

    #: Held from the feature update to the scoring-state write, so the idle sweep never
    #: interleaves with a batch (the Lua call returns the scoring state it must build on).
    lock: asyncio.Lock

    async def on_batch(self, batch: ActivityBatch) -> list[OutRecord]: ...


@dataclass
class BatchOutcome:
    """Counts for one processed batch."""

    messages: int = 0
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    dead_letters: int = 0
    outputs: int = 0


@dataclass
class PreparedBatch:
    """A decoded batch waiting for its Redis call (see :meth:`IngestPipeline.prepare`)."""

    received: float
    now: datetime
    outcome: BatchOutcome
    events: list[PreparedEvent] = field(default_factory=list)
    origins: list[_Origin] = field(default_factory=list)
    #: customer -> input partition the customer's events arrived on
    partitions: dict[str, int] = field(default_factory=dict)
    #: dead letters so far, then every output of the batch
    out: list[OutRecord] = field(default_factory=list)
    #: (topic, partition) -> (newest event time, last offset) in this batch
    marks: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict)
    #: oldest event time in this batch (inf while it holds none)
    oldest: float = math.inf

    def event_span_s(self) -> float:
        """Event time between the batch's oldest and newest event (0 while it holds none)."""
        newest = max((n for n, _ in self.marks.values()), default=-math.inf)
        return max(0.0, newest - self.oldest)  # -inf while empty: newest -inf, oldest inf

    def absorb(self, later: PreparedBatch) -> None:
        """Append a batch prepared after this one, as if both had been prepared together."""
        self.events += later.events
        self.origins += later.origins
        self.partitions.update(later.partitions)
        self.out += later.out
        for key, (newest, offset) in later.marks.items():
            old_newest, old_offset = self.marks.get(key, (newest, offset))
            self.marks[key] = (max(old_newest, newest), max(old_offset, offset))
        self.oldest = min(self.oldest, later.oldest)
        self.outcome.messages += later.outcome.messages
        self.outcome.dead_letters += later.outcome.dead_letters


_NO_LOCK = contextlib.nullcontext()


async def _nothing() -> None:
    return None


def no_acks() -> Awaitable[None]:
    """What :meth:`Publisher.send` returns for no records: an awaitable done at once."""
    return _nothing()


#: ``Publisher.send``: hands records to the producer in order, returns their acks' awaitable.
Sender = Callable[[Sequence[OutRecord]], Awaitable[Awaitable[None]]]


class Gate(Protocol):
    """Holds Redis calls while Redis may not be the one the worker wrote to
    (:class:`streamproc.adapters.deployment.DeploymentGuard`)."""

    @property
    def is_open(self) -> bool: ...

    async def wait_open(self) -> None: ...

    def refused(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a call the gate's check refused (the gate closes then)."""
        ...


class Retrier:
    """Retries Redis calls forever with capped, jittered exponential backoff.

    Redis is the source of truth: while it is away the batch waits (and its
    offsets stay uncommitted) rather than being dropped.
    """

    def __init__(self, metrics: Metrics, max_backoff_s: float,
                 on_state: Callable[[bool], None] | None = None,
                 gate: Gate | None = None) -> None:
        self.metrics = metrics
        self.max_backoff_s = max_backoff_s
        self.on_state = on_state
        self.gate = gate
        self._rng = random.Random()  # noqa: S311 - jitter, not crypto

    async def call(self, operation: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` until it succeeds, recording latency, errors and Redis health.

        With a gate, every attempt waits until the gate is open, and a call the gate
        refused is held there (not counted as a Redis error) until it opens again.
        """
        delay = 0.05
        gate = self.gate
        while True:
            if gate is not None and not gate.is_open:
                await gate.wait_open()
            started = time.perf_counter()
            try:
                result = await fn()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                self._failed(operation, exc)
            except RedisError as exc:
                if gate is not None and gate.refused(exc):
                    continue
                # BUSY/LOADING and friends are transient too; anything else (a script that
                # refuses a value, a bug) stalls the batch until it is fixed, so say what.
                transient = isinstance(exc, ReadOnlyError | TryAgainError) or str(
                    exc).startswith(_TRANSIENT_REPLIES)
                self._failed(operation, exc, detail=not transient)
            else:
                self.metrics.redis_seconds.labels(operation).observe(time.perf_counter() - started)
                self.metrics.redis_up.set(1)
                if self.on_state is not None:
                    self.on_state(True)
                return result
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(self.max_backoff_s, delay * 2)

    def _failed(self, operation: str, exc: BaseException, *, detail: bool = False) -> None:
        self.metrics.redis_errors.labels(operation).inc()
        self.metrics.redis_up.set(0)
        if self.on_state is not None:
            self.on_state(False)
        if not detail:
            log.warning("redis %s failed (%s); retrying", operation, type(exc).__name__)
            return
        # Error texts may name a customer's key: its hash tag is the customer id, which is
        # logged only at DEBUG.
        log.error("redis %s failed (%s: %s); retrying", operation, type(exc).__name__,
                  redact_keys(str(exc)))
        log.debug("redis %s failed: %s", operation, exc)


#: Cap of the backoff between two attempts to publish records the broker did not acknowledge.
PUBLISH_MAX_BACKOFF_S: Final = 5.0


class RetryingPublisher:
    """Publishes records until the broker has acknowledged every one of them.

    A record the producer refuses or the broker does not acknowledge is handed again after
    capped, jittered exponential backoff, for as long as it takes: its batch's offsets wait
    (the awaitable :meth:`send` returns completes only on every ack), so input is never
    skipped. Records already acknowledged are not sent again; a record is published twice
    only when the broker wrote it but its acknowledgement was lost. While any record is
    failing, ``on_state(False)`` (readiness) and every failure is counted by topic.
    """

    def __init__(self, producer: RecordProducer, metrics: Metrics, *,
                 max_backoff_s: float = PUBLISH_MAX_BACKOFF_S,
                 on_state: Callable[[bool], None] | None = None) -> None:
        self.producer = producer
        self.metrics = metrics
        self.max_backoff_s = max_backoff_s
        self.on_state = on_state
        self._failing = 0  # sends currently retrying
        self._rng = random.Random()  # noqa: S311 - jitter, not crypto

    async def send(self, records: Sequence[OutRecord]) -> Awaitable[None]:
        """Hand every record to the producer, in order; the result completes on their acks."""
        return self._settle([(record, await self._hand(record)) for record in records])

    async def _hand(self, record: OutRecord) -> Awaitable[object] | Exception:
        try:
            return await self.producer.hand(record)
        except Exception as exc:  # refused before reaching the broker: sent again
            return exc

    async def _settle(self, pending: list[tuple[OutRecord, Awaitable[object] | Exception]],
                      ) -> None:
        delay = 0.05
        failing = False
        try:
            while True:
                failed: list[tuple[OutRecord, Exception]] = []
                for record, ack in pending:
                    error = ack if isinstance(ack, Exception) else await _error_of(ack)
                    if error is not None:
                        failed.append((record, error))
                    elif record.on_ack is not None:
                        record.on_ack()
                if not failed:
                    return
                if not failing:
                    failing = True
                    self._failing += 1
                    if self.on_state is not None:
                        self.on_state(False)
                wait = min(self.max_backoff_s, delay * (0.5 + self._rng.random()))
                self._report(failed, wait)
                await asyncio.sleep(wait)
                delay = min(self.max_backoff_s, delay * 2)
                pending = [(record, await self._hand(record)) for record, _ in failed]
        finally:
            if failing:
                self._failing -= 1
                if self._failing == 0 and self.on_state is not None:
                    self.on_state(True)

    def _report(self, failed: Sequence[tuple[OutRecord, Exception]], wait: float) -> None:
        by_topic: dict[str, list[Exception]] = {}
        for record, exc in failed:
            by_topic.setdefault(record.topic, []).append(exc)
        for topic, errors in by_topic.items():
            self.metrics.publish_errors.labels(topic).inc(len(errors))
            # Producer errors name topics and sizes, never a record's content.
            log.error("publishing to %s failed (%s: %s); %d record(s) sent again in %.2fs, "
                      "their batch's offsets wait", topic, type(errors[0]).__name__,
                      str(errors[0])[:300], len(errors), wait)


async def _error_of(ack: Awaitable[object]) -> Exception | None:
    """What an acknowledgement failed with, None once the broker acknowledged."""
    try:
        await ack
    except Exception as exc:  # whatever it is, the record was not acknowledged
        return exc
    return None


class IngestPipeline:
    """Processes batches of raw messages into Redis profiles and output records."""

    def __init__(
        self,
        settings: Settings,
        store: RedisProfileStore,
        publisher: Publisher,
        metrics: Metrics,
        *,
        retrier: Retrier,
        scoring: ScoringStage | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.retrier = retrier
        self.scoring = scoring
        self.clock = clock
        self.limits = settings.ingest.validation_limits()
        topics = settings.topics
        self._sources: dict[str, Literal["clickstream", "purchases"]] = {
            topics.clickstream: "clickstream",
            topics.purchases: "purchases",
        }
        #: (topic, partition) -> largest event time / offset processed, for the event-time clock.
        self.watermarks: dict[tuple[str, int], float] = {}
        self.positions: dict[tuple[str, int], int] = {}

    def prepare(self, messages: Sequence[RawMessage]) -> PreparedBatch:
        """Decode and validate a batch and compute its feature ops: CPU only, no I/O.

        Nothing shared changes here, so the next batch can be prepared while the one
        before it waits for Redis and the broker (see :meth:`stage`).
        """
        received = self.clock()
        now = datetime.fromtimestamp(received, UTC)
        batch = PreparedBatch(received, now, BatchOutcome(messages=len(messages)))
        prepared, origins, partitions = batch.events, batch.origins, batch.partitions
        out, marks, outcome = batch.out, batch.marks, batch.outcome
        dl_topic = self.settings.topics.dead_letter
        definition = self.settings.models.churn_definition
        for msg in messages:
            source = self._sources.get(msg.topic, "clickstream")
            decoded = decode_message(msg.value, msg.key, source, limits=self.limits, now=now)
            for rejection in decoded.rejections:
                record = DeadLetter.from_rejection(
                    rejection, key=msg.key, topic=msg.topic, partition=msg.partition,
                    offset=msg.offset, received_at=now)
                out.append(OutRecord(dl_topic, record.key_bytes(), record.to_bytes(),
                                     self.metrics.dead_letters.labels(msg.topic,
                                                                      rejection.reason).inc))
                self.metrics.events.labels(msg.topic, "unknown", "rejected").inc()
                outcome.dead_letters += 1
            wm_key = (msg.topic, msg.partition)
            newest, offset = marks.get(wm_key, (float("-inf"), -1))
            positions = _accepted_positions(len(decoded.events), decoded.rejections)
            # A cast, not a copy: decode_message's union of Decoded types zips to BaseModel.
            events = cast(list[Event], decoded.events)
            for event, position in zip(events, positions, strict=True):
                ts = event.timestamp.timestamp()
                # Dispatch on the class: event_ops' attribute probes miss on pydantic models
                # and raise through BaseModel.__getattr__ (3.5 % of worker CPU in a profile).
                kind: str
                amount = 0.0
                if isinstance(event, ClickstreamEvent):
                    kind, ops, lane = event.event_type, clickstream_ops(event, ts), LANE_CLICKSTREAM
                else:
                    kind, ops, lane = event.type, purchase_ops(event, ts), LANE_PURCHASES
                    amount = float(event.total)
                prepared.append(PreparedEvent(event.customer_id, event.event_id, ts, ops, lane))
                origins.append(_Origin(msg, position, kind,
                                       amount if is_qualifying(kind, definition) else None))
                partitions[event.customer_id] = msg.partition
                if ts > newest:
                    newest = ts
                if ts < batch.oldest:
                    batch.oldest = ts
            marks[wm_key] = (newest, max(offset, msg.offset))
        return batch

    async def stage(self, batch: PreparedBatch) -> Awaitable[None]:
        """Apply a prepared batch to Redis, score it and send its outputs, in batch order.

        Returns an awaitable of the broker's acknowledgements: once it completes, every
        effect of the batch is durable. The scoring lock is the first thing awaited, so
        batches staged in order are applied in order, and their outputs are sent (not yet
        acknowledged) before the next batch's Redis call.
        """
        outcome, prepared, origins, out = batch.outcome, batch.events, batch.origins, batch.out
        async with self.scoring.lock if self.scoring is not None else _NO_LOCK:
            # The event-time clock moves only when the events behind it are applied.
            for key, (newest, offset) in batch.marks.items():
                if offset > self.positions.get(key, -1):
                    self.positions[key] = offset
                if newest > self.watermarks.get(key, float("-inf")):
                    self.watermarks[key] = newest
            updates: list[CustomerUpdate] = []
            if prepared:
                updates = await self.retrier.call("apply_batch",
                                                  lambda: self.store.apply_batch(prepared))
            activity, late = self._count(prepared, origins, updates, outcome)
            for i in late:
                out.append(self._late_letter(prepared[i], origins[i], batch.now))
            if self.scoring is not None and updates:
                try:
                    out += await self.scoring.on_batch(
                        ActivityBatch(updates, activity, batch.partitions, batch.received))
                except Exception:
                    # Features are already durable; a scoring bug must not stop ingestion or
                    # crash-loop the worker on the same batch. Loud in the log, outputs skipped.
                    log.exception("scoring failed for a batch of %d customers; outputs skipped",
                                  len(updates))
            acks = await self.publisher.send(out) if out else no_acks()
        outcome.outputs = len(out) - outcome.dead_letters - outcome.late
        return acks

    def finish(self, batch: PreparedBatch) -> BatchOutcome:
        """Record a batch's timings once its outputs are acknowledged; returns its counts."""
        self.metrics.batch_events.observe(len(batch.events))
        done = self.clock()
        self.metrics.batch_seconds.observe(done - batch.received)
        if batch.out:
            self.metrics.ingest_to_publish_seconds.observe(done - batch.received)
        observe_many(self.metrics.event_age_seconds,
                     [max(0.0, done - ev.ts) for ev in batch.events])
        return batch.outcome

    def _count(self, prepared: Sequence[PreparedEvent], origins: Sequence[_Origin],
               updates: Sequence[CustomerUpdate], outcome: BatchOutcome,
               ) -> tuple[dict[str, list[tuple[float, float]]], list[int]]:
        """Count each event's fate; returns activity per customer and the late events."""
        statuses: dict[str, list[int]] = {u.customer_id: u.statuses for u in updates}
        cursor: dict[str, int] = {}
        activity: dict[str, list[tuple[float, float]]] = {}
        late: list[int] = []
        counts: Counter[tuple[str, str, str]] = Counter()
        dupes: Counter[str] = Counter()
        for n, (ev, origin) in enumerate(zip(prepared, origins, strict=True)):
            i = cursor.get(ev.customer_id, 0)
            cursor[ev.customer_id] = i + 1
            status = statuses[ev.customer_id][i]
            topic = origin.message.topic
            if status == seen.APPLIED:
                counts[topic, origin.kind, "applied"] += 1
                outcome.applied += 1
                if origin.activity_amount is not None:
                    activity.setdefault(ev.customer_id, []).append(
                        (ev.ts, origin.activity_amount))
            elif status == seen.DUPLICATE:
                counts[topic, origin.kind, "duplicate"] += 1
                outcome.duplicates += 1
                dupes[topic] += 1
            else:
                counts[topic, origin.kind, "rejected"] += 1
                outcome.late += 1
                late.append(n)
        # One labels() lookup per label set and batch, not per event (5-7 % of worker CPU).
        for labels, count in counts.items():
            self.metrics.events.labels(*labels).inc(count)
        for topic, count in dupes.items():
            self.metrics.duplicates.labels(topic).inc(count)
        dropped = sum(u.links_dropped for u in updates)
        if dropped:
            self.metrics.cart_links_dropped.inc(dropped)
        for times in activity.values():
            times.sort()
        return activity, late

    def _late_letter(self, event: PreparedEvent, origin: _Origin, now: datetime) -> OutRecord:
        """A dead letter for an event the bounded dedupe cannot tell from a duplicate."""
        msg = origin.message
        raw = msg.value or b""
        if origin.index is not None:
            element = _envelope_element(raw, origin.index)
            raw = element if element is not None else raw
        detail = (f"event time {datetime.fromtimestamp(event.ts, UTC).isoformat()} is at or "
                  "before the oldest event id remembered for this customer on this topic: it "
                  "may be a duplicate, so it was not counted (raise STREAMPROC_INGEST__"
                  "DEDUPE_EVENTS or __DEDUPE_PURCHASES to accept events this late)")
        record = DeadLetter.from_rejection(
            Rejection("late_event", detail, origin.index, raw), key=msg.key, topic=msg.topic,
            partition=msg.partition, offset=msg.offset, received_at=now)
        return OutRecord(self.settings.topics.dead_letter, record.key_bytes(), record.to_bytes(),
                         self.metrics.dead_letters.labels(msg.topic, "late_event").inc)


def redact_keys(text: str) -> str:
    """``text`` with every Redis hash tag (``{customer id}`` in our keys) blanked out."""
    return _HASH_TAG.sub("{…}", text)


_HASH_TAG = re.compile(r"\{[^{}]*\}")
#: Error replies redis-py does not map to a class of their own that pass by themselves.
_TRANSIENT_REPLIES = ("BUSY", "MASTERDOWN")


def _accepted_positions(accepted: int, rejections: Sequence[Rejection]) -> list[int | None]:
    """Envelope positions of a message's accepted events (None for a single-event message)."""
    rejected = {r.index for r in rejections if r.index is not None}
    if accepted == 1 and not rejected:
        return [None]
    positions: list[int | None] = []
    i = 0
    while len(positions) < accepted:
        if i not in rejected:
            positions.append(i)
        i += 1
    return positions


def _envelope_element(raw: bytes, index: int) -> bytes | None:
    """One element of a batch envelope, re-serialised (as decoder rejections carry it)."""
    try:
        events = orjson.loads(raw)["events"]
        return orjson.dumps(events[index])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
