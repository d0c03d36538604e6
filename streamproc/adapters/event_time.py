"""The deployment's current event time, kept in Redis for readers (API, commands, replay).

Workers know each partition's watermark (max event time seen minus the allowed lateness)
only in memory. After sweeping a partition, the worker stores that watermark in one
sorted set, ``<prefix>:event_time`` (member = partition number, score = watermark), with
``ZADD GT`` so a value never moves back, whichever worker owns the partition and however
late a rebalanced worker's memory starts. The deployment's event time is the largest one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from streamproc.adapters import keys
from streamproc.adapters.cluster import RedisClient


class EventTimeWriter:
    """Stores a worker's partition watermarks, skipping those that did not move."""

    def __init__(self, client: RedisClient, prefix: str) -> None:
        self.client = client
        self.key = keys.event_time_key(prefix)
        self._written: dict[int, float] = {}

    async def advance(self, watermarks: Mapping[int, float]) -> None:
        """Store the watermarks that moved forward since the last call (one round trip)."""
        moved = {p: w for p, w in watermarks.items()
                 if math.isfinite(w) and w > self._written.get(p, -math.inf)}
        if not moved:
            return
        await self.client.zadd(self.key, {str(p): w for p, w in moved.items()}, gt=True)
        self._written.update(moved)


async def partition_watermarks(client: RedisClient, prefix: str) -> dict[int, float]:
    """Each partition's stored watermark (seconds since the epoch); empty before any sweep."""
    rows = await client.zrange(keys.event_time_key(prefix), 0, -1, withscores=True)
    return {int(row[0]): float(row[1]) for row in rows}


async def current_event_time(client: RedisClient, prefix: str) -> float | None:
    """The deployment's event time: the largest stored watermark, None before any sweep."""
    top = await client.zrange(keys.event_time_key(prefix), -1, -1, withscores=True)
    return float(top[0][1]) if top else None
