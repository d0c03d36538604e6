"""The trainer service against a real Redis that fails a write: nothing is learned twice.

Learning is CPU only and cuts versions into a queue; storing them is the only Redis
call, and the one the worker retries. A store that fails partway leaves the queue
as it was, so the retry writes the same versions and the trainer has learned each
example exactly once.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Mapping

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from streamproc.adapters.model_store import ModelStore
from streamproc.core.features import MODEL_FEATURES
from streamproc.metrics import create_metrics
from streamproc.runtime.embedded import Service
from streamproc.runtime.scoring import training_records
from streamproc.runtime.trainer import TrainerService
from streamproc.settings import ModelSettings

pytestmark = pytest.mark.integration


class _FailsOnce(ModelStore):
    """The real store on a real Redis, with the second version's write failing once."""

    failures = 0

    async def store(self, version: int, items: Mapping[str, bytes | str | int]) -> None:
        if version == 2 and not self.failures:
            self.failures += 1
            raise RedisConnectionError("injected: connection lost while storing v2")
        await super().store(version, items)


def _examples(n: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    return [{"kind": "profile", "customer_id": f"c-{i % 50}", "at": 1.77e9 + 3600.0 * i,
             "features": [rng.uniform(0, 5) for _ in MODEL_FEATURES]} for i in range(n)]


async def test_a_failed_store_is_retried_without_relearning(redis_server: Service) -> None:
    client = aioredis.Redis(port=redis_server.port)
    try:
        prefix = "tr-" + uuid.uuid4().hex[:8]
        store = _FailsOnce(client, prefix, b"k" * 32)
        settings = ModelSettings(signing_key="k" * 32, snapshot_every_examples=250)
        service = TrainerService(settings, store, create_metrics(CollectorRegistry()))
        records = training_records(_examples(1000, seed=1), per_record=400)
        await service.load()
        assert service.learn(records) == 1000
        # v1 after 200 examples, then every 250: v2 at 450, v3 at 700, v4 at 950.
        assert [v for v, _ in service.unpublished] == [1, 2, 3, 4]
        with pytest.raises(RedisConnectionError):
            await service.flush()
        assert await store.current_version() == 1
        assert [v for v, _ in service.unpublished] == [2, 3, 4]
        await service.flush()  # what the worker's retrier does
        assert service.unpublished == []
        assert await store.current_version() == 4
        assert service.trainer is not None
        assert service.trainer.profiles_seen == 1000  # each example learned once
        assert service.trainer.version == 4
        resumed = await store.load_trainer()
        assert resumed is not None
        assert resumed.version == 4
        assert resumed.profiles_seen == 950  # the state stored with v4, cut at example 950
    finally:
        await client.aclose()
