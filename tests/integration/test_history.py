"""History is not news, through a real worker on the real broker's settings and redis-server.

A worker whose wall clock is injected scores an event from months ago (history: its
profile and training example are stored and published, but no segment change, lifecycle
change or alert; counted in ``streamproc_history_suppressed_total``) and an event from an
hour ago (news: published).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamproc.adapters.model_store import ModelStore
from streamproc.adapters.redis_store import RedisScoringStore
from streamproc.core import features as features_module
from streamproc.core.eventclock import PartitionClock
from streamproc.core.features import ProfileView
from streamproc.core.modelset import Trainer
from streamproc.runtime.app import Worker, create_worker
from streamproc.runtime.pipeline import RawMessage
from streamproc.settings import Settings
from tests.conftest import SIGNING_KEY
from tests.integration.test_idle_sweep import Collect

pytestmark = pytest.mark.integration

WALL = datetime(2026, 11, 1, 12, 0, tzinfo=UTC).timestamp()


async def _view(worker: Worker, settings: Settings, cid: str, n: int, at: float) -> None:
    stamp = datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    event = {"event_id": f"e-{cid}-{n}", "customer_id": cid, "event_type": "page_view",
             "timestamp": stamp, "url": "/"}
    batch = worker.pipeline.prepare([RawMessage(settings.topics.clickstream, 0, n,
                                                cid.encode(), orjson.dumps(event))])
    await (await worker.pipeline.stage(batch))


async def test_history_updates_profiles_and_training_but_publishes_no_news(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(models={"history_lag_hours": 24.0})
    worker = create_worker(settings, CollectorRegistry())
    publisher = Collect()
    worker.pipeline.publisher = publisher
    worker.scorer.clock_for = lambda _p: PartitionClock(-math.inf, math.inf)
    worker.scorer.clock = lambda: WALL  # the injected wall clock
    client = worker.pipeline.store.client
    models = ModelStore(client, settings.redis.key_prefix, SIGNING_KEY.encode())
    trainer = Trainer(seed=1)
    for i in range(50):
        trainer.learn_profile_features(f"c-{i}", features_module.model_features(
            ProfileView(f"c-{i}", 1e9, {"la": 1e9 - i * 86_400.0, "fs": 9e8})), 1e9)
    await models.publish(trainer.bundle(), trainer, 0.0)
    topics = settings.topics
    news = {topics.segment_changes, topics.lifecycle_changes, topics.churn_alerts}
    try:
        await worker.guard.verify()
        await _view(worker, settings, "c-old", 0, WALL - 120 * 86_400.0)
        assert [r for r in publisher.records if r.topic in news] == []
        suppressed = worker.metrics.history_suppressed._value.get()
        assert suppressed == 2  # its first segment and its first lifecycle stage
        [stored] = await RedisScoringStore.from_settings(client, settings.redis).read(["c-old"])
        assert stored.profile is not None
        assert stored.state is not None
        assert stored.state.segment is not None  # the state moved: later news builds on it
        assert stored.state.stage is not None
        # Its census (the snapshots the churn model learns from) is scheduled like news'.
        assert stored.state.last_activity == WALL - 120 * 86_400.0

        await _view(worker, settings, "c-new", 1, WALL - 3600.0)
        published = {r.topic for r in publisher.records if r.topic in news}
        assert published == {topics.segment_changes, topics.lifecycle_changes}
        assert worker.metrics.history_suppressed._value.get() == suppressed
    finally:
        await client.aclose()
