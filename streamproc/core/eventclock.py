"""Event-time progress of one partition across several input topics.

Clickstream and purchases are separate topics consumed at different speeds:
during a catch-up the sparse purchases topic can run months ahead of the
clickstream in event time. Order-dependent logic (churn snapshots, labels,
alerts) must then wait for the slowest input, the way stream processors hold a
watermark at the minimum over their inputs. An input that has caught up with
its log end cannot hold anything back: all it has is already in (an *idle*
input, in Flink's terms), so it is left out of the minimum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InputProgress:
    """One input topic-partition: the largest event time applied and the messages still unread.

    ``lag`` is None while the log end is not yet known (treated as behind).
    """

    max_event_time: float | None
    lag: int | None


@dataclass(frozen=True, slots=True)
class PartitionClock:
    """``watermark``: labels may expire and idle checks may fire up to it.

    ``gate``: fresh activity at or before it is scored at once; later activity
    waits (the customer's data from a lagging input may still be on its way).
    """

    watermark: float
    gate: float


def partition_clock(inputs: Sequence[InputProgress], lateness_s: float,
                    backlog: int = 0) -> PartitionClock:
    """The watermark and scoring gate of one partition from its inputs' progress.

    An input counts as behind only with more than ``backlog`` unread messages: on a
    live stream a few messages are always in flight, and they must not delay scoring.
    """
    behind = [i for i in inputs if i.lag is None or i.lag > backlog]
    if not behind:
        seen = [i.max_event_time for i in inputs if i.max_event_time is not None]
        watermark = max(seen) - lateness_s if seen else -math.inf
        return PartitionClock(watermark, math.inf)
    slowest = min(-math.inf if i.max_event_time is None else i.max_event_time for i in behind)
    return PartitionClock(slowest - lateness_s, slowest - lateness_s)

