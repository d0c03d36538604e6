"""Catch-up batching: while the input is backlogged, consecutive takes join one batch.

One Redis call and one scoring pass then serve more events, so a worker that fell
behind catches up faster; a caught-up worker stages every take at once, so a live
stream waits no longer than without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamproc.runtime.pipeline import PreparedBatch

#: While backlogged a batch grows until it holds this many events (or the message cap).
#: It bounds the size of one Lua call and one scoring pass, and so the latency of the
#: events in a grown batch. 2,000 is the size catch-up batching was measured with
#: (load_tests/README.md, a9468a7) and was never tuned. Not a setting: what keeps a grown
#: batch's churn snapshots like the live stream's is the event-time span bound (the least
#: snapshot gap, a model setting), not this cap.
CATCHUP_MAX_EVENTS = 2000


def keep_collecting(*, messages: int, events: int, waiting: int, collecting_s: float,
                    span_s: float, max_messages: int, max_events: int, max_wait_s: float,
                    max_span_s: float) -> bool:
    """Whether a batch should wait for the next take instead of being staged now.

    It grows while at least as many messages are already waiting in Kafka (``waiting``,
    the lag behind the batch) as the batch holds, or as it has room for. ``max_wait_s``
    bounds the wait should delivery stall. A batch also stops growing once its events
    span ``max_span_s`` of event time: a customer is scored once per batch, so a replay
    of history in batches spanning days would take fewer churn snapshots than the live
    stream did.
    """
    room = max_messages - messages
    return (room > 0 and events < max_events and collecting_s < max_wait_s
            and span_s < max_span_s and waiting >= min(room, messages))


@dataclass(frozen=True, slots=True)
class CatchUpLimits:
    """When a growing batch is staged anyway; ``max_wait_s`` 0 turns catch-up off."""

    max_messages: int
    max_wait_s: float
    max_span_s: float
    max_events: int = CATCHUP_MAX_EVENTS


#: A batch ready to stage, with the Faust events whose offsets it acknowledges.
Ready = tuple[PreparedBatch, list[Any]]


class Collector:
    """Holds the batch still collecting across takes and says which batches are ready.

    ``waiting`` tells how many messages wait in Kafka behind a batch (its partitions'
    lag); it is asked only while catch-up batching is on. A batch held when the worker
    stops is simply never acknowledged, so it is redelivered.
    """

    def __init__(self, limits: CatchUpLimits, waiting: Callable[[PreparedBatch], int],
                 clock: Callable[[], float]) -> None:
        self.limits = limits
        self.waiting = waiting
        self.clock = clock
        self.held: PreparedBatch | None = None
        self.held_events: list[Any] = []

    @property
    def slots(self) -> int:
        """Batches taken but not handed over that may sit here: one while catch-up is on."""
        return 1 if self.limits.max_wait_s > 0 else 0

    def add(self, part: PreparedBatch, events: list[Any]) -> list[Ready]:
        """Add one take (``part`` prepared from ``events``); the batches to stage now, in order."""
        ready: list[Ready] = []
        held = self.held
        if held is not None and len(self.held_events) + len(events) > self.limits.max_messages:
            ready.append((held, self.held_events))
            held = None
        if held is None:
            held, self.held_events = part, list(events)
        else:
            held.absorb(part)
            self.held_events += events
        self.held = held
        if self._grows(held):
            return ready
        ready.append((held, self.held_events))
        self.held, self.held_events = None, []
        return ready

    def _grows(self, held: PreparedBatch) -> bool:
        limits = self.limits
        # With catch-up off no take waits, so no lag is looked up.
        return limits.max_wait_s > 0 and keep_collecting(
            messages=len(self.held_events), events=len(held.events),
            waiting=self.waiting(held), collecting_s=self.clock() - held.received,
            span_s=held.event_span_s(), max_messages=limits.max_messages,
            max_events=limits.max_events, max_wait_s=limits.max_wait_s,
            max_span_s=limits.max_span_s)
