"""The idle sweep on a real redis-server: due customers are re-scored, expired ones forgotten."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamproc.adapters import keys
from streamproc.core.eventclock import PartitionClock
from streamproc.runtime.app import create_worker
from streamproc.runtime.pipeline import OutRecord, RawMessage, no_acks
from streamproc.settings import Settings

pytestmark = pytest.mark.integration


class Collect:
    """A publisher that keeps what it is handed (the sweep's outputs are not under test)."""

    def __init__(self) -> None:
        self.records: list[OutRecord] = []

    async def send(self, records: Sequence[OutRecord]) -> Any:
        self.records += records
        return no_acks()


async def test_sweep_rescores_due_customers_and_forgets_expired_ones(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    worker = create_worker(settings, CollectorRegistry())
    publisher = Collect()
    worker.pipeline.publisher = publisher
    client = worker.pipeline.store.client
    prefix = settings.redis.key_prefix
    checks = keys.schedule_key(prefix, "checks:0")
    # No Faust consumer here: the event-time clock is set by hand (nothing lags).
    worker.scorer.clock_for = lambda _p: PartitionClock(-math.inf, math.inf)
    try:
        await worker.guard.verify()  # what the running app does first: Redis calls wait for it
        assert worker.guard.is_open
        event = {"event_id": "e-1", "customer_id": "c-live", "event_type": "page_view",
                 "timestamp": "2026-11-01T10:00:00Z", "url": "/"}
        batch = worker.pipeline.prepare([RawMessage(settings.topics.clickstream, 0, 0,
                                                    b"c-live", orjson.dumps(event))])
        await (await worker.pipeline.stage(batch))
        assert await client.zscore(checks, "c-live") is not None  # its idle check is scheduled
        # A customer whose key expired (profile TTL) while its idle check was pending.
        await client.zadd(checks, {"c-gone": 0.0})
        live_before = await client.get(keys.profile_key(prefix, "c-live"))

        # Event time 12 weeks and a half on: every check of that time is due (and c-gone).
        later = datetime(2026, 11, 1, 10, tzinfo=UTC).timestamp() + 84.5 * 86_400.0
        worker.scorer.clock_for = lambda _p: PartitionClock(later, math.inf)
        await (await worker.scorer.sweep(0, publisher.send))

        assert await client.exists(keys.profile_key(prefix, "c-gone")) == 0
        assert await client.zscore(checks, "c-gone") is None
        assert await client.zscore(keys.schedule_key(prefix, "deferred:0"), "c-gone") is None
        live_after = await client.get(keys.profile_key(prefix, "c-live"))
        assert live_after != live_before  # the live customer's idle check ran and was stored
        # The census check of every week since the activity (days 7, 14, ..., 84). Census
        # checks go on while the customer's key lives (profile TTL), whatever they did.
        assert worker.metrics.idle_checks._value.get() == 12
    finally:
        await client.aclose()
