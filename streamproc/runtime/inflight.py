"""Batches in flight: their work overlaps, their completions happen in the order taken.

The ingest agent hands each decoded batch over here and goes back to collecting the
next one. A batch's work (Redis call, scoring, publishing, waiting for the broker's
acks) starts at once; its completion (acknowledging its Kafka offsets) waits for the
batch before it, so offsets only ever move in order and only over durable effects.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[None]]

#: Batches whose Redis call, scoring and publishing run at once while the next one is
#: collected and decoded. Two already hides one batch's round trips behind the next
#: batch's decode; more only queues Lua calls behind each other in Redis, which runs
#: them one at a time, and holds more unacknowledged messages.
INFLIGHT_BATCHES = 2


class InFlight:
    """Runs up to ``depth`` batches at once and completes them in dispatch order.

    A failed batch is raised exactly once, by the :meth:`dispatch` or :meth:`drain`
    that reaches it. Batches after it still run their work (it is already under way
    and is idempotent) but are not completed: their offsets stay unacknowledged, so
    they are redelivered to whoever consumes the partition next.
    """

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError("InFlight depth must be at least 1")
        self.depth = depth
        self._tasks: deque[asyncio.Task[bool]] = deque()

    def __len__(self) -> int:
        return len(self._tasks)

    async def dispatch(self, work: Step, complete: Step) -> None:
        """Start ``work`` now; run ``complete`` once it and every earlier batch completed.

        Waits first while ``depth`` batches are in flight; raises the failure of an
        earlier batch when it reaches one (and then starts nothing).
        """
        while self._tasks and (self._tasks[0].done() or len(self._tasks) >= self.depth):
            await self._tasks.popleft()
        previous = self._tasks[-1] if self._tasks else None
        self._tasks.append(asyncio.ensure_future(_run(work, complete, previous)))

    async def drain(self, grace_s: float) -> None:
        """Let the batches in flight finish within ``grace_s`` seconds, then cancel the rest.

        A batch cut between its Redis call and its send would lose its outputs for good
        (redelivered events are duplicates and score nothing), hence the grace period.
        """
        tasks, self._tasks = list(self._tasks), deque()
        if not tasks:
            return
        await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is not None:
                # Nobody else will retrieve it: the agent is already stopping.
                log.error("a batch failed while the agent stopped", exc_info=task.exception())


async def _run(work: Step, complete: Step, previous: asyncio.Task[bool] | None) -> bool:
    """One batch: its work, then, once the batch before completed, its completion.

    Returns whether the batch completed. An earlier batch that failed or was not
    completed leaves this one uncompleted too, without raising its error a second time.
    """
    await work()
    if previous is not None:
        await asyncio.wait([previous])  # does not raise what ``previous`` raised
        if previous.cancelled() or previous.exception() is not None or not previous.result():
            return False
    await complete()
    return True
