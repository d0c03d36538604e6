"""The trainer agent's protocol: learn a take, store, then ack only what a stored state holds.

The training topic has one partition, so one worker in the group runs this. A record
is acked only once a stored trainer state holds all of it; until then it waits here,
and a crash or a stop redelivers it (the trainer skips what it already learned). Only
the Redis calls are retried, so a retry never relearns.

A rebalance releases the trainer (:meth:`TrainerAgent.on_revoked`) and Faust then sends
every unacked record again from the committed offset: records held from before it are
dropped unacked (the partition may be another worker's now), and a take that a release
made stale stops learning.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from typing import Any, Protocol

from streamproc.runtime.pipeline import Retrier

#: Most training records learned per take, and the longest a partial take waits. One
#: record holds a whole ingest batch's examples, so a take is seconds of learning at
#: most; the wait only bounds how long a lone record sits before it is learned.
TAKE_RECORDS = 1000
TAKE_WITHIN_S = 0.5


class Learner(Protocol):
    """What the agent needs of :class:`~streamproc.runtime.trainer.TrainerService`."""

    @property
    def generation(self) -> int: ...
    @property
    def trainer(self) -> object | None: ...
    def load(self, topic: str) -> Awaitable[object | None]: ...
    def learn(self, records: Sequence[tuple[int, bytes | None]]) -> int: ...
    def flush(self) -> Awaitable[None]: ...
    def covered(self, offsets: Sequence[int]) -> int: ...
    def release(self) -> None: ...


class RecordStream(Protocol):
    """The part of a Faust stream the agent uses (taking without acking, acking)."""

    def noack_take(self, max_: int, within: float) -> AsyncIterator[list[Any]]: ...
    async def ack(self, event: Any) -> bool: ...


class TrainerAgent:
    """Runs the trainer over its topic's stream and releases it when the partition moves."""

    def __init__(self, learner: Learner, retrier: Retrier, topic: str) -> None:
        self.learner = learner
        self.retrier = retrier
        self.topic = topic
        #: Revocations of the training partition seen, so a take can tell it went stale.
        self.revokes = 0

    async def run(self, stream: RecordStream) -> None:
        """The agent body: learn each take, store, ack the records a stored state holds."""
        learner = self.learner
        pending: deque[Any] = deque()  # learned, not acked yet, in delivery order
        seen_revokes = self.revokes
        async for events in stream.noack_take(TAKE_RECORDS, TAKE_WITHIN_S):
            if self.revokes != seen_revokes:
                # Revoked between takes: what is held came before it (Faust redelivers it
                # from the committed offset), but this take came after and may be acked.
                seen_revokes = self.revokes
                pending.clear()
            generation = learner.generation
            await self.retrier.call("train", lambda: learner.load(self.topic))
            for event in events:
                if learner.generation != generation or learner.trainer is None:
                    break
                learner.learn([(event.message.offset, event.message.value)])
                pending.append(event)
                # A record holds up to 500 examples: let the ingest agent run between.
                await asyncio.sleep(0)
            await self.retrier.call("train", learner.flush)
            if self.revokes != seen_revokes:
                seen_revokes = self.revokes
                pending.clear()
                continue
            for _ in range(learner.covered([e.message.offset for e in pending])):
                await stream.ack(pending.popleft())

    def on_revoked(self, revoked: Iterable[tuple[str, int]]) -> None:
        """Partitions were revoked; release the trainer if the training partition was.

        Another worker may own it next and store newer states; a trainer kept in memory
        would go on from a stale one if the partition came back.
        """
        if any(topic == self.topic for topic, _ in revoked):
            self.revokes += 1
            self.learner.release()
