"""``streamproc replay --wait``: return once the workers have processed what a replay sent.

Done means, for every input partition the replay wrote to:

1. the workers' consumer group has committed every offset the replay produced there
   (offsets are committed only after a batch's Redis writes and outputs are acknowledged);
2. a worker has swept the partition with a watermark at or past ``T_p - lateness``, where
   ``T_p`` is the latest event time the replay sent to that partition and ``lateness`` is
   ``STREAMPROC_INGEST__ALLOWED_LATENESS_S`` (the partition's watermark is its max event
   time minus the lateness; workers store it in ``<prefix>:event_time`` after each sweep);
3. no idle check or label expiry is due at or before that watermark (``<prefix>:checks:p``)
   and no scoring deferred for a lagging input waits (``<prefix>:deferred:p``).

That is the honest meaning of "the idle checks due up to the last event time are done":
a worker may only run a check once its watermark passed it, i.e. once it may assume no
earlier event is still to come. Checks and label expiries due in the last ``lateness``
before ``T_p``, or later, run only when later events move that partition's event time on.
Each partition has its own watermark, so a partition whose last replayed event is early
stops early too.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streamproc.adapters import keys
from streamproc.adapters.event_time import partition_watermarks
from streamproc.adapters.redis_store import make_client
from streamproc.commands import CommandError
from streamproc.commands.replay import Produced
from streamproc.core.store import schedule_name
from streamproc.settings import Settings
from streamproc.times import iso_utc

#: Seconds without a new record after which an output topic counts as read to its end
#: (end offsets are not trusted: Tansu reports the last batch's base offset + 1).
OUTPUT_IDLE_S = 1.0


@dataclass(frozen=True, slots=True)
class PartitionTarget:
    """How far the workers must get on one input partition number."""

    partition: int
    newest: float  # latest event time the replay sent to this partition (any input topic)
    watermark: float  # newest - allowed lateness: idle checks are done up to here


def targets(produced: Produced, lateness_s: float) -> dict[int, PartitionTarget]:
    """Per partition number, the event time its idle checks must be done up to."""
    newest: dict[int, float] = {}
    for (_, partition), got in produced.ranges.items():
        newest[partition] = max(newest.get(partition, got.newest), got.newest)
    return {p: PartitionTarget(p, t, t - lateness_s) for p, t in sorted(newest.items())}


@dataclass(frozen=True, slots=True)
class Observation:
    """One look at the workers' progress (read in this order: offsets first, then Redis)."""

    committed: Mapping[tuple[str, int], int | None]
    watermarks: Mapping[int, float]
    checks_due: Mapping[int, int]
    deferred: Mapping[int, int]


def outstanding(produced: Produced, goals: Mapping[int, PartitionTarget],
                seen: Observation) -> list[str]:
    """What still keeps the replay from being processed, in words; empty when done."""
    left: list[str] = []
    for (topic, partition), got in sorted(produced.ranges.items()):
        committed = seen.committed.get((topic, partition))
        if committed is None or committed <= got.last_offset:
            left.append(f"{topic}[{partition}]: committed offset {committed} of "
                        f"{got.last_offset + 1}")
    for p, goal in goals.items():
        stored = seen.watermarks.get(p)
        if stored is None or stored < goal.watermark:
            left.append(f"partition {p}: watermark {_when(stored)} short of "
                        f"{_when(goal.watermark)}")
        if seen.checks_due.get(p, 0):
            left.append(f"partition {p}: {seen.checks_due[p]} idle checks due")
        if seen.deferred.get(p, 0):
            left.append(f"partition {p}: {seen.deferred[p]} deferred scorings")
    return left


def _when(at: float | None) -> str:
    return "none" if at is None else iso_utc(at)


@dataclass
class WaitReport:
    """What the workers did with a replay."""

    goals: dict[int, PartitionTarget]
    dead_letters: Counter[str] = field(default_factory=Counter)
    churn_alerts: int = 0
    segment_changes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "checks_done_up_to": {str(p): _when(g.watermark) for p, g in self.goals.items()},
            "dead_letters": sum(self.dead_letters.values()),
            "dead_letter_reasons": dict(self.dead_letters),
            "churn_alerts": self.churn_alerts, "segment_changes": self.segment_changes,
            "seconds": round(self.seconds, 3)}


async def _observe(consumer: AIOKafkaConsumer, client: Any, prefix: str, produced: Produced,
                   goals: Mapping[int, PartitionTarget]) -> Observation:
    committed = {tp: await consumer.committed(TopicPartition(*tp)) for tp in produced.ranges}
    watermarks = await partition_watermarks(client, prefix)
    def due(kind: str, partition: int) -> str:
        return keys.schedule_key(prefix, schedule_name(kind, partition))

    checks = {p: int(await client.zcount(due("checks", p), "-inf", g.watermark))
              for p, g in goals.items()}
    deferred = {p: int(await client.zcount(due("deferred", p), "-inf", g.newest))
                for p, g in goals.items()}
    return Observation(committed, watermarks, checks, deferred)


async def wait_for_workers(settings: Settings, produced: Produced, *, stall_timeout_s: float,
                           poll_s: float = 0.5,
                           status: Callable[[str], None] | None = None) -> dict[int,
                                                                                PartitionTarget]:
    """Poll until the workers processed ``produced`` (see the module docstring).

    A CommandError when nothing moved for ``stall_timeout_s`` (no worker running, another
    consumer group, different lateness), naming what is still outstanding.
    """
    from streamproc.runtime.kafka import aiokafka_security

    goals = targets(produced, settings.ingest.allowed_lateness_s)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers,
                                group_id=settings.kafka.consumer_group,
                                enable_auto_commit=False, **aiokafka_security(settings.kafka))
    client = make_client(settings.redis)
    try:
        await consumer.start()
        last: list[str] | None = None
        moved_at = time.monotonic()
        while True:
            seen = await _observe(consumer, client, settings.redis.key_prefix, produced, goals)
            left = outstanding(produced, goals, seen)
            if not left:
                return goals
            if left != last:
                last, moved_at = left, time.monotonic()
                if status is not None:
                    status(f"waiting for the workers: {left[0]}"
                           + (f" (+{len(left) - 1} more)" if len(left) > 1 else ""))
            elif time.monotonic() - moved_at > stall_timeout_s:
                raise CommandError(
                    f"no progress for {stall_timeout_s:.0f}s waiting for consumer group "
                    f"{settings.kafka.consumer_group!r} (is a worker running with the same "
                    f"settings?): {'; '.join(left[:5])}")
            await asyncio.sleep(poll_s)
    finally:
        await consumer.stop()
        await client.aclose()


# --- the outputs a replay caused ------------------------------------------------------------


def _output_topics(settings: Settings) -> list[str]:
    t = settings.topics
    return [t.dead_letter, t.churn_alerts, t.segment_changes]


async def _assign_all(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> list[TopicPartition]:
    known = await consumer.topics()  # refreshes the cluster metadata
    tps = [TopicPartition(t, p) for t in topics if t in known
           for p in sorted(consumer.partitions_for_topic(t) or ())]
    consumer.assign(tps)
    return tps


async def _read_until_idle(consumer: AIOKafkaConsumer, idle_s: float) -> list[Any]:
    records: list[Any] = []
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < idle_s:
        batch = await consumer.getmany(timeout_ms=int(idle_s * 250))
        for got in batch.values():
            records += got
        if batch:
            quiet_since = time.monotonic()
    return records


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    from streamproc.runtime.kafka import aiokafka_security

    return AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=None,
                            enable_auto_commit=False, **aiokafka_security(settings.kafka))


async def output_marks(settings: Settings) -> dict[TopicPartition, int]:
    """The true end of every output partition now, so later records can be told apart."""
    consumer = _consumer(settings)
    await consumer.start()
    try:
        tps = await _assign_all(consumer, _output_topics(settings))
        if not tps:
            return {}
        ends = await consumer.end_offsets(tps)
        marks = dict(ends)
        for tp in tps:  # the reported end may be short by the last batch: read past it
            consumer.seek(tp, max(0, ends[tp] - 1))
        for record in await _read_until_idle(consumer, OUTPUT_IDLE_S / 2):
            tp = TopicPartition(record.topic, record.partition)
            marks[tp] = max(marks[tp], record.offset + 1)
        return marks
    finally:
        await consumer.stop()


async def count_outputs(settings: Settings, marks: Mapping[TopicPartition, int],
                        produced: Produced, report: WaitReport) -> None:
    """Dead letters of the replayed records, and alerts and segment changes since ``marks``."""
    consumer = _consumer(settings)
    await consumer.start()
    try:
        for tp in await _assign_all(consumer, _output_topics(settings)):
            consumer.seek(tp, marks.get(tp, 0))
        for record in await _read_until_idle(consumer, OUTPUT_IDLE_S):
            if record.topic == settings.topics.churn_alerts:
                report.churn_alerts += 1
            elif record.topic == settings.topics.segment_changes:
                report.segment_changes += 1
            else:
                _count_dead_letter(record.value, produced, report.dead_letters)
    finally:
        await consumer.stop()


def _count_dead_letter(raw: bytes | None, produced: Produced, counts: Counter[str]) -> None:
    try:
        doc = orjson.loads(raw or b"")
        source = (doc["source_topic"], int(doc["source_partition"]), int(doc["source_offset"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return  # not a dead letter this version writes: not one of ours
    if produced.holds(*source):
        counts[str(doc.get("reason", "unknown"))] += 1
