"""A release that adds a model feature: what earlier ones stored is skipped, never fatal.

A worker of the running release scores a customer and takes a census snapshot of it (its
pending snapshot is stored in Redis), publishes a training record and has a model version
published. Then one more
model feature is added (``MODEL_FEATURES`` patched longer, as a new release would have it)
and a new worker and trainer meet all of that on the same Redis: the old pending snapshot
is dropped, the old model version and trainer state are not loaded, the old training
record is skipped, each counted in ``streamproc_feature_set_mismatches_total``, and the
customer's batch is scored and stored under the new feature set.
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
from streamproc.core.training import ProfileExample, decode_record, feature_set
from streamproc.runtime.app import Worker, create_worker
from streamproc.runtime.pipeline import RawMessage
from streamproc.runtime.trainer import TrainerService
from streamproc.settings import Settings
from tests.conftest import SIGNING_KEY
from tests.integration.test_idle_sweep import Collect

pytestmark = pytest.mark.integration


async def _worker(settings: Settings, watermark_day: int) -> tuple[Worker, Collect]:
    """A worker whose partitions' watermark is that day of March 2026 (census checks up to
    it fire with the batch)."""
    worker = create_worker(settings, CollectorRegistry())
    await worker.guard.verify()  # what the running app does first: Redis calls wait for it
    publisher = Collect()
    worker.pipeline.publisher = publisher
    watermark = datetime(2026, 3, watermark_day, tzinfo=UTC).timestamp()
    worker.scorer.clock_for = lambda _p: PartitionClock(watermark, math.inf)
    return worker, publisher


async def _view(worker: Worker, settings: Settings, n: int, day: int) -> None:
    event = {"event_id": f"e-{n}", "customer_id": "c-1", "event_type": "page_view",
             "timestamp": f"2026-03-{day:02d}T10:00:00Z", "url": "/"}
    batch = worker.pipeline.prepare([RawMessage(settings.topics.clickstream, 0, n, b"c-1",
                                                orjson.dumps(event))])
    await (await worker.pipeline.stage(batch))


def _mismatches(worker: Worker, kind: str) -> float:
    return float(worker.metrics.feature_set_mismatches.labels(kind)._value.get())


async def test_a_new_feature_skips_what_the_old_feature_set_stored(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    # Page views count as activity here, so a visit starts the customer's census schedule.
    settings = make_settings(models={"churn_definition": "activity"})
    old, publisher = await _worker(settings, 9)  # the census check of March 8 fires
    models = ModelStore(old.pipeline.store.client, settings.redis.key_prefix,
                        SIGNING_KEY.encode())
    trainer = Trainer(seed=1)
    for i in range(50):
        trainer.learn_profile_features(
            f"c-{i}", features_module.model_features(
                ProfileView(f"c-{i}", 1e9, {"la": 1e9 - i * 86_400.0, "fs": 9e8})), 1e9)
    await models.publish(trainer.bundle(), trainer, 0.0)
    try:
        await _view(old, settings, 0, 1)
        [record] = [r.value for r in publisher.records
                    if r.topic == settings.topics.training_examples]
    finally:
        await old.pipeline.store.client.aclose()
    old_set = feature_set()

    longer = (*features_module.MODEL_FEATURES, "returns_30d")
    released = features_module.model_features
    monkeypatch.setattr(features_module, "MODEL_FEATURES", longer)
    monkeypatch.setattr(features_module, "model_features",
                        lambda view, **kw: {**released(view, **kw), "returns_30d": 0.0})
    assert feature_set() != old_set

    new, publisher = await _worker(settings, 16)  # the census check of March 15 fires
    client = new.pipeline.store.client
    try:
        await _view(new, settings, 1, 1)  # the same day: no gap for the purchase rhythm
        assert _mismatches(new, "model") == 1  # the old version is not scored with
        assert _mismatches(new, "pending_snapshot") == 1
        [stored] = await RedisScoringStore.from_settings(client, settings.redis).read(["c-1"])
        assert stored.state is not None
        [snap] = stored.state.pending
        assert tuple(snap.features) == longer
        [fresh] = [r.value for r in publisher.records
                   if r.topic == settings.topics.training_examples]
        assert orjson.loads(fresh)["fs"] == feature_set()

        service = TrainerService(settings.models, ModelStore(client, settings.redis.key_prefix,
                                                             SIGNING_KEY.encode()), new.metrics)
        resumed = await service.load(settings.topics.training_examples)
        assert resumed is not None
        assert resumed.version == 0  # a new trainer: the stored one learned other features
        assert _mismatches(new, "trainer_state") == 1
        assert service.learn([(0, record)]) == 0
        assert _mismatches(new, "training_example") == 1
        assert service.learn([(1, fresh)]) == 1
        [example] = decode_record(fresh).examples
        assert isinstance(example, ProfileExample)
    finally:
        await client.aclose()
