"""The trainer agent's protocol: learn, store, ack only what a stored state holds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import TP
from prometheus_client import CollectorRegistry

from streamproc.metrics import create_metrics
from streamproc.runtime.pipeline import Retrier
from streamproc.runtime.trainer_agent import TrainerAgent

TOPIC = "training"


@dataclass(frozen=True)
class _Message:
    offset: int
    value: bytes


@dataclass(frozen=True, eq=False)  # two copies of a record are two deliveries
class _Event:
    message: _Message


def _events(*offsets: int) -> list[_Event]:
    return [_Event(_Message(o, b"record %d" % o)) for o in offsets]


class _Learner:
    """A trainer whose stored state covers what :attr:`store_upto` says at each flush."""

    def __init__(self) -> None:
        self.generation = 0
        self.trainer: object | None = None
        self.learned: list[int] = []
        self.stored_upto = 0  # records below this offset are held by the stored state
        self.store_upto: Callable[[list[int]], int] = lambda learned: max(learned) + 1
        #: Runs while one record is learned (to model a release mid-take).
        self.during_learn: Callable[[int], None] = lambda offset: None

    async def load(self, topic: str) -> object | None:
        assert topic == TOPIC
        if self.trainer is None:
            self.trainer = object()
        return self.trainer

    def learn(self, records: Sequence[tuple[int, bytes | None]]) -> int:
        for offset, _ in records:
            self.learned.append(offset)
            self.during_learn(offset)
        return len(records)

    async def flush(self) -> None:
        if self.trainer is not None and self.learned:
            self.stored_upto = self.store_upto(self.learned)

    def covered(self, offsets: Sequence[int]) -> int:
        n = 0
        for offset in offsets:
            if offset >= self.stored_upto:
                break
            n += 1
        return n

    def release(self) -> None:
        self.generation += 1
        self.trainer = None


class _Stream:
    """Delivers takes in order and records the acks."""

    def __init__(self, *takes: list[_Event]) -> None:
        self.takes = takes
        self.acked: list[int] = []
        self.acked_events: list[Any] = []

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list[Any]]:
        for take in self.takes:
            yield list(take)

    async def ack(self, event: Any) -> bool:
        self.acked.append(event.message.offset)
        self.acked_events.append(event)
        return True


def _agent(learner: _Learner) -> TrainerAgent:
    retrier = Retrier(create_metrics(CollectorRegistry()), 0.01)
    return TrainerAgent(learner, retrier, TOPIC)


async def test_records_are_acked_in_order_once_a_stored_state_holds_them() -> None:
    learner = _Learner()
    # The stored state lags one record behind what was learned until the third take.
    stored = iter([2, 4, 6])
    learner.store_upto = lambda learned: next(stored)
    stream = _Stream(_events(0, 1, 2), _events(3, 4), _events(5))
    await _agent(learner).run(stream)
    assert learner.learned == [0, 1, 2, 3, 4, 5]
    assert stream.acked == [0, 1, 2, 3, 4, 5]


async def test_records_no_stored_state_holds_stay_unacked() -> None:
    learner = _Learner()
    learner.store_upto = lambda learned: 2
    stream = _Stream(_events(0, 1, 2, 3))
    await _agent(learner).run(stream)
    assert stream.acked == [0, 1]


async def test_a_revoke_drops_held_records_unacked_and_later_takes_go_on() -> None:
    learner = _Learner()
    learner.store_upto = lambda learned: 1  # record 1 waits for a later store
    agent = _agent(learner)

    def revoke_during_take_2(offset: int) -> None:
        if len(learner.learned) == 3:  # take 2 learns its first record
            agent.on_revoked({TP(TOPIC, 0)})
            learner.store_upto = lambda learned: max(learned) + 1

    learner.during_learn = revoke_during_take_2
    first, redelivered = _events(0, 1), _events(1, 2)
    stream = _Stream(first, _events(2), redelivered)
    await agent.run(stream)
    assert stream.acked == [0, 1, 2]
    # The copy of record 1 held from before the revoke is never acked; its redelivered
    # copy is, once a state stored after the revoke holds it.
    assert first[1] not in stream.acked_events
    assert stream.acked_events == [first[0], *redelivered]
    assert learner.generation == 1


async def test_a_revoke_of_another_topic_keeps_the_trainer() -> None:
    learner = _Learner()
    agent = _agent(learner)
    learner.trainer = object()
    agent.on_revoked({TP("clickstream", 0)})
    assert (learner.generation, agent.revokes) == (0, 0)
    assert learner.trainer is not None


async def test_a_take_made_stale_by_a_release_stops_learning() -> None:
    learner = _Learner()
    agent = _agent(learner)

    def release_at_1(offset: int) -> None:
        if offset == 1:
            agent.on_revoked({TP(TOPIC, 0)})

    learner.during_learn = release_at_1
    stream = _Stream(_events(0, 1, 2, 3))
    await agent.run(stream)
    assert learner.learned == [0, 1]  # 2 and 3 belong to a released trainer
    assert stream.acked == []  # and nothing learned before the release is acked


class _RevokingStream(_Stream):
    """Revokes the training partition between its first and second take."""

    def __init__(self, agent: TrainerAgent, *takes: list[_Event]) -> None:
        super().__init__(*takes)
        self.agent = agent

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list[Any]]:
        for n, take in enumerate(self.takes):
            if n == 1:
                self.agent.on_revoked({TP(TOPIC, 0)})
            yield list(take)


async def test_a_take_after_a_revoke_between_takes_is_acked_once_stored() -> None:
    learner = _Learner()
    learner.store_upto = lambda learned: 1  # record 1 waits for a later store
    agent = _agent(learner)
    first, redelivered = _events(0, 1), _events(1, 2)
    learner.store_upto = lambda learned: 1 if len(learned) <= 2 else max(learned) + 1
    stream = _RevokingStream(agent, first, redelivered)
    await agent.run(stream)
    # Record 1 held from before the revoke is dropped; the take delivered after it is
    # acked (a gap would stall the training topic's commits until the next restart).
    assert stream.acked_events == [first[0], *redelivered]
    assert learner.generation == 1
