"""Catch-up batching: when a batch waits for more, collecting takes, merging batches."""

from __future__ import annotations

from dataclasses import asdict

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamproc.metrics import create_metrics
from streamproc.runtime.catchup import CatchUpLimits, Collector, keep_collecting
from streamproc.runtime.pipeline import IngestPipeline, PreparedBatch, RawMessage
from streamproc.settings import Settings

DAY = 86_400.0


@pytest.mark.parametrize(
    ("messages", "events", "waiting", "collecting_s", "expected"),
    [
        (80, 80, 10_000, 0.02, True),   # backlogged: grow
        (80, 80, 80, 0.02, True),       # as many waiting as the batch holds: grow
        (80, 80, 79, 0.02, False),      # fewer waiting than held: keeping up, stage now
        (480, 480, 20, 0.02, True),     # nearly full: the room left is waiting
        (480, 480, 19, 0.02, False),
        (80, 80, 0, 0.02, False),       # live stream: never wait
        (500, 500, 10_000, 0.02, False),  # full in messages
        (40, 2000, 10_000, 0.02, False),  # full in events (envelopes)
        (80, 80, 10_000, 0.25, False),  # waited long enough (delivery stalled)
    ],
)
def test_keep_collecting(messages: int, events: int, waiting: int, collecting_s: float,
                         expected: bool) -> None:
    assert keep_collecting(messages=messages, events=events, waiting=waiting,
                           collecting_s=collecting_s, span_s=60.0, max_messages=500,
                           max_events=2000, max_wait_s=0.25, max_span_s=DAY) is expected


def test_zero_wait_turns_catch_up_batching_off() -> None:
    assert not keep_collecting(messages=1, events=1, waiting=10**6, collecting_s=0.0,
                               span_s=0.0, max_messages=500, max_events=2000,
                               max_wait_s=0.0, max_span_s=DAY)


def test_a_batch_spanning_the_snapshot_gap_stops_growing() -> None:
    # A replay of history: backlogged, room left, but the batch already covers a day.
    grow = dict(messages=80, events=80, waiting=10_000, collecting_s=0.01, max_messages=500,
                max_events=2000, max_wait_s=0.25, max_span_s=DAY)
    assert keep_collecting(span_s=DAY - 1, **grow)  # type: ignore[arg-type]
    assert not keep_collecting(span_s=DAY, **grow)  # type: ignore[arg-type]


def test_event_span_follows_absorbed_batches() -> None:
    settings = Settings(models={"signing_key": "k" * 32})
    pipeline = IngestPipeline(settings, None, None,  # type: ignore[arg-type]
                              create_metrics(CollectorRegistry()), retrier=None,  # type: ignore[arg-type]
                              clock=lambda: 1796040000.0)
    messages = _messages(settings)
    assert pipeline.prepare([]).event_span_s() == 0.0
    first = pipeline.prepare(messages[:3])  # page views at 10:00:00-02
    assert first.event_span_s() == 2.0
    first.absorb(pipeline.prepare(messages[-1:]))  # the order at 09:00:00
    assert first.event_span_s() == 3602.0


def _messages(settings: Settings) -> list[RawMessage]:
    topics = settings.topics
    out = []
    for i in range(12):
        customer = f"c-{i % 3}"
        value: dict[str, object] = {
            "event_id": f"e-{i}", "customer_id": customer, "event_type": "page_view",
            "timestamp": f"2026-11-30T10:00:{i:02d}Z", "url": "/"}
        if i == 5:
            value["event_type"] = "teleport"  # a dead letter in the first part
        if i == 9:
            value = {"customer_id": customer, "events": [value, {**value, "event_id": "e-9b"}]}
        out.append(RawMessage(topics.clickstream, i % 2, 100 + i, customer.encode(),
                              orjson.dumps(value)))
    out.append(RawMessage(topics.purchases, 0, 7, b"c-1", orjson.dumps({
        "event_id": "o-1", "customer_id": "c-1", "order_id": "o-1", "type": "order",
        "timestamp": "2026-11-30T09:00:00Z", "total": 5.0, "currency": "EUR",
        "items": [{"product_id": "p", "quantity": 1, "unit_price": 5.0}]})))
    return out


def _view(batch: PreparedBatch) -> dict[str, object]:
    return {"events": batch.events, "origins": [(o.message, o.index, o.kind) for o in
                                                batch.origins],
            "partitions": batch.partitions, "out": [(r.topic, r.key) for r in batch.out],
            "marks": batch.marks, "oldest": batch.oldest, "outcome": asdict(batch.outcome)}


def test_absorbed_batches_equal_one_batch_prepared_together() -> None:
    settings = Settings(models={"signing_key": "k" * 32})
    now = 1796040000.0  # 2026-11-30T12:00Z, after every event below
    pipeline = IngestPipeline(settings, None, None,  # type: ignore[arg-type]
                              create_metrics(CollectorRegistry()), retrier=None,  # type: ignore[arg-type]
                              clock=lambda: now)
    messages = _messages(settings)
    whole = pipeline.prepare(messages)
    merged = pipeline.prepare(messages[:7])
    merged.absorb(pipeline.prepare(messages[7:]))
    assert _view(merged) == _view(whole)
    assert whole.outcome.dead_letters == 1
    assert whole.outcome.messages == len(messages)
    assert len(whole.events) == len(messages)  # 13 messages - 1 rejected + 1 extra in the envelope


class _Takes:
    """Prepares takes of the sample messages and counts the lag look-ups."""

    def __init__(self, waiting: int) -> None:
        self.now = 1796040000.0
        self.waiting = waiting
        self.lookups = 0
        settings = Settings(models={"signing_key": "k" * 32})
        self.pipeline = IngestPipeline(settings, None, None,  # type: ignore[arg-type]
                                       create_metrics(CollectorRegistry()),
                                       retrier=None,  # type: ignore[arg-type]
                                       clock=lambda: self.now)
        self.messages = _messages(settings)

    def lag(self, batch: PreparedBatch) -> int:
        self.lookups += 1
        return self.waiting

    def collector(self, max_wait_s: float = 0.25, max_messages: int = 5) -> Collector:
        return Collector(CatchUpLimits(max_messages=max_messages, max_wait_s=max_wait_s,
                                       max_span_s=DAY),
                         waiting=self.lag, clock=lambda: self.now)

    def take(self, start: int, stop: int) -> tuple[PreparedBatch, list[str]]:
        return (self.pipeline.prepare(self.messages[start:stop]),
                [f"m{i}" for i in range(start, stop)])


def test_with_catch_up_off_every_take_is_staged_and_no_lag_is_read() -> None:
    takes = _Takes(waiting=10_000)
    collector = takes.collector(max_wait_s=0)
    for start in (0, 2, 4):
        [(batch, events)] = collector.add(*takes.take(start, start + 2))
        assert events == [f"m{start}", f"m{start + 1}"]
        assert batch.outcome.messages == 2
    assert takes.lookups == 0
    assert collector.slots == 0


def test_a_caught_up_worker_stages_each_take_at_once() -> None:
    takes = _Takes(waiting=0)
    collector = takes.collector()
    [(_, events)] = collector.add(*takes.take(0, 2))
    assert events == ["m0", "m1"]
    assert collector.held is None
    assert collector.slots == 1


def test_a_backlogged_batch_grows_until_the_next_take_would_not_fit() -> None:
    takes = _Takes(waiting=10_000)
    collector = takes.collector(max_messages=5)
    assert collector.add(*takes.take(0, 2)) == []
    assert collector.add(*takes.take(2, 4)) == []  # 4 held, room for 1: still growing
    # 4 + 2 > 5: the held batch goes first, and the new take starts the next one.
    [(batch, events)] = collector.add(*takes.take(4, 6))
    assert events == ["m0", "m1", "m2", "m3"]
    assert _view(batch) == _view(takes.pipeline.prepare(takes.messages[0:4]))
    assert collector.held_events == ["m4", "m5"]


def test_a_batch_that_waited_long_enough_is_staged_although_backlogged() -> None:
    takes = _Takes(waiting=10_000)
    collector = takes.collector(max_wait_s=0.25)
    assert collector.add(*takes.take(0, 1)) == []
    takes.now += 0.25  # delivery stalled
    [(_, events)] = collector.add(*takes.take(1, 2))
    assert events == ["m0", "m1"]
    assert collector.held is None
