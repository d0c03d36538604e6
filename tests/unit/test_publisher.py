"""The retrying publisher: nothing is skipped, nothing acknowledged is sent twice.

A fake producer stands in for Kafka (pure retry logic); the real broker's refusals are
exercised in tests/integration/test_publish_failures.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable

import pytest
from prometheus_client import CollectorRegistry

from streamproc.core.outputs import DeadLetter
from streamproc.metrics import Metrics, create_metrics
from streamproc.runtime.pipeline import IngestPipeline, OutRecord, RawMessage, RetryingPublisher
from streamproc.settings import Settings


class Refused(Exception):
    """What the fake broker answers instead of an acknowledgement."""


class FakeProducer:
    """Refuses each value a scripted number of times, at hand-over or at ack, then acks it."""

    def __init__(self, *, refuse_at_hand: dict[bytes, int] | None = None,
                 refuse_at_ack: dict[bytes, int] | None = None) -> None:
        self.refuse_at_hand = Counter(refuse_at_hand or {})
        self.refuse_at_ack = Counter(refuse_at_ack or {})
        self.handed: list[bytes] = []
        self.acked: list[bytes] = []

    async def hand(self, record: OutRecord) -> Awaitable[object]:
        self.handed.append(record.value)
        if self.refuse_at_hand[record.value] > 0:
            self.refuse_at_hand[record.value] -= 1
            raise Refused("MessageSizeTooLargeError")
        ack: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if self.refuse_at_ack[record.value] > 0:
            self.refuse_at_ack[record.value] -= 1
            ack.set_exception(Refused("INVALID_RECORD"))
        else:
            self.acked.append(record.value)
            ack.set_result(None)
        return ack


def _publisher(producer: FakeProducer) -> tuple[RetryingPublisher, Metrics, list[bool]]:
    metrics = create_metrics(CollectorRegistry())
    states: list[bool] = []
    return (RetryingPublisher(producer, metrics, max_backoff_s=0.01, on_state=states.append),
            metrics, states)


def _errors(metrics: Metrics, topic: str) -> float:
    return metrics.publish_errors.labels(topic)._value.get()


async def test_failed_records_are_sent_again_until_acknowledged_and_only_they() -> None:
    producer = FakeProducer(refuse_at_hand={b"dl": 2}, refuse_at_ack={b"alert": 3})
    publisher, metrics, states = _publisher(producer)
    acked: list[str] = []
    records = [OutRecord("dead", None, b"dl", lambda: acked.append("dl")),
               OutRecord("alerts", None, b"alert", lambda: acked.append("alert")),
               OutRecord("changes", None, b"ok", lambda: acked.append("ok"))]

    await (await publisher.send(records))

    assert sorted(producer.acked) == [b"alert", b"dl", b"ok"]
    assert Counter(producer.handed) == {b"dl": 3, b"alert": 4, b"ok": 1}  # "ok" never again
    assert sorted(acked) == ["alert", "dl", "ok"]  # each counted once, on its ack
    assert (_errors(metrics, "dead"), _errors(metrics, "alerts")) == (2, 3)
    assert _errors(metrics, "changes") == 0
    assert states == [False, True]


async def test_the_acks_awaitable_waits_while_a_record_is_refused() -> None:
    producer = FakeProducer(refuse_at_ack={b"dl": 10**9})  # a topic that refuses for good
    publisher, metrics, states = _publisher(producer)
    acked: list[bytes] = []
    settle = asyncio.ensure_future(await publisher.send(
        [OutRecord("dead", None, b"dl", lambda: acked.append(b"dl"))]))
    await asyncio.sleep(0.2)
    assert not settle.done()  # so the batch's offsets are never acknowledged
    assert acked == []
    assert states == [False]
    assert _errors(metrics, "dead") >= 5
    settle.cancel()  # a stopping worker: the batch is redelivered to the next owner
    with pytest.raises(asyncio.CancelledError):
        await settle


async def test_readiness_comes_back_only_when_no_send_is_failing() -> None:
    producer = FakeProducer(refuse_at_ack={b"a": 2, b"b": 6})
    publisher, _, states = _publisher(producer)
    # Every backoff is 0.01 s: "a" is acknowledged after 2 of them, "b" after 6.
    first = asyncio.ensure_future(await publisher.send([OutRecord("t", None, b"a")]))
    second = asyncio.ensure_future(await publisher.send([OutRecord("t", None, b"b")]))
    await first
    assert states[-1] is False  # "b" is still being refused
    await second
    assert states[-1] is True
    assert states.count(True) == 1


async def test_no_records_no_wait() -> None:
    publisher, _, states = _publisher(FakeProducer())
    await (await publisher.send([]))
    assert states == []


async def test_a_dead_letter_is_counted_when_the_broker_acknowledges_it() -> None:
    settings = Settings(models={"signing_key": "k" * 32})
    producer = FakeProducer(refuse_at_ack={})
    publisher, metrics, _ = _publisher(producer)
    pipeline = IngestPipeline(settings, None, publisher,  # type: ignore[arg-type]
                              metrics, retrier=None)  # type: ignore[arg-type]
    batch = pipeline.prepare([RawMessage(settings.topics.clickstream, 0, 5, b"c-1",
                                         b"[" + b" " * 900_000 + b"]")])
    counted = metrics.dead_letters.labels(settings.topics.clickstream, "not_object")
    assert [r.topic for r in batch.out] == [settings.topics.dead_letter]
    assert counted._value.get() == 0  # decided, not published yet
    producer.refuse_at_ack[batch.out[0].value] = 2
    await (await publisher.send(batch.out))
    assert counted._value.get() == 1
    letter = DeadLetter.from_bytes(batch.out[0].value)
    assert letter.original_truncated
    assert letter.original_size == 900_002
