"""The trainer service against a real Redis: each example is learned exactly once.

Learning is CPU only and cuts versions into a queue; storing them is the only Redis
call, and the one the worker retries. A store that fails partway leaves the queue
as it was, so the retry writes the same versions. Each stored trainer state carries
the topic position it covers and the worker acks only records a stored state holds,
so a new owner after a crash is sent those records again and skips what it has.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Mapping

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from streamproc.adapters import keys
from streamproc.adapters.cluster import RedisClient
from streamproc.adapters.model_store import ModelStore, TrainerPosition
from streamproc.core.features import MODEL_FEATURES
from streamproc.core.modelset import Trainer
from streamproc.core.training import ProfileExample, TrainingExample, encode_records
from streamproc.metrics import create_metrics
from streamproc.runtime.trainer import TrainerService
from streamproc.settings import ModelSettings

pytestmark = pytest.mark.integration

TOPIC = "training"
KEY = b"k" * 32
#: v1 after 200 examples, then every 250: v2 at 450, v3 at 700, v4 at 950.
EVERY_250 = ModelSettings(signing_key="k" * 32, snapshot_every_examples=250)


class _Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(any_redis: RedisClient) -> ModelStore:
    """A model store under a fresh key prefix on the session's Redis, then its Redis
    Cluster (every model key in the ``{model}`` slot: the same transactions work)."""
    return ModelStore(any_redis, "tr-" + uuid.uuid4().hex[:8], KEY)


async def _owner(store: ModelStore, settings: ModelSettings = EVERY_250,
                 clock: _Clock | None = None, topic: str = TOPIC) -> TrainerService:
    """A trainer service that has just taken the training partition over."""
    service = TrainerService(settings, store, create_metrics(CollectorRegistry()),
                             clock=clock or _Clock())
    await service.load(topic)
    return service


def _records(n: int, per_record: int, seed: int = 1) -> list[tuple[int, bytes]]:
    """``n`` examples as training-topic records, with their offsets."""
    return list(enumerate(encode_records(_examples(n, seed), per_record=per_record)))


def _seen(service: TrainerService) -> int:
    assert service.trainer is not None
    return service.trainer.profiles_seen


class _FailsOnce(ModelStore):
    """The real store on a real Redis, with the second version's write failing once."""

    failures = 0

    async def store(self, version: int, items: Mapping[str, bytes | str | int],
                    owner: str) -> bool:
        if version == 2 and not self.failures:
            self.failures += 1
            raise RedisConnectionError("injected: connection lost while storing v2")
        return await super().store(version, items, owner)


def _examples(n: int, seed: int) -> list[TrainingExample]:
    rng = random.Random(seed)
    return [ProfileExample(f"c-{i % 50}", 1.77e9 + 3600.0 * i,
                           {name: rng.uniform(0, 5) for name in MODEL_FEATURES})
            for i in range(n)]


async def test_a_failed_store_is_retried_without_relearning(redis_client: aioredis.Redis) -> None:
    prefix = "tr-" + uuid.uuid4().hex[:8]
    store = _FailsOnce(redis_client, prefix, b"k" * 32)
    settings = ModelSettings(signing_key="k" * 32, snapshot_every_examples=250)
    service = TrainerService(settings, store, create_metrics(CollectorRegistry()))
    records = encode_records(_examples(1000, seed=1), per_record=400)
    await service.load(TOPIC)
    assert service.learn(list(enumerate(records))) == 1000
    # v1 after 200 examples, then every 250: v2 at 450, v3 at 700, v4 at 950.
    assert [c.version for c in service.unpublished] == [1, 2, 3, 4]
    with pytest.raises(RedisConnectionError):
        await service.flush()
    assert await store.current_version() == 1
    assert [c.version for c in service.unpublished] == [2, 3, 4]
    await service.flush()  # what the worker's retrier does
    assert service.unpublished == []
    assert await store.current_version() == 4
    assert service.trainer is not None
    assert service.trainer.profiles_seen == 1000  # each example learned once
    assert service.trainer.version == 4
    resumed, _ = await store.load_trainer_state()
    assert resumed is not None
    assert resumed.version == 4
    assert resumed.profiles_seen == 950  # the state stored with v4, cut at example 950


async def test_a_crash_before_any_store_relearns_each_example_once(store: ModelStore) -> None:
    records = _records(1000, per_record=400)
    first = await _owner(store)
    assert first.learn(records) == 1000
    assert [c.version for c in first.unpublished] == [1, 2, 3, 4]
    assert first.covered([o for o, _ in records]) == 0  # nothing stored: nothing acked
    # Crash: nothing was stored or acked, so the new owner is sent every record again.
    second = await _owner(store)
    assert second.learn(records) == 1000
    assert _seen(second) == 1000
    # The same versions, byte for byte (the same signed bundles and trainer states).
    assert [c.items for c in second.unpublished] == [c.items for c in first.unpublished]
    assert [c.position for c in second.unpublished] == [
        TrainerPosition(TOPIC, 0, 200, 0), TrainerPosition(TOPIC, 1, 50, 0),
        TrainerPosition(TOPIC, 1, 300, 0), TrainerPosition(TOPIC, 2, 150, 0)]
    await second.flush()
    assert await store.current_version() == 4


async def test_a_crash_after_a_store_before_the_acks_learns_nothing_twice(
        store: ModelStore) -> None:
    records = _records(1000, per_record=100)  # ten records of 100 examples
    first = await _owner(store)
    assert first.learn(records[:7]) == 700
    await first.flush()  # v3 was cut at example 700: the end of record 6
    assert await store.current_version() == 3
    assert first.covered([o for o, _ in records[:7]]) == 7
    # Crash before the acks: the new owner is sent records 0-6 again, then the rest.
    second = await _owner(store)
    assert second.stored == TrainerPosition(TOPIC, 7, 0, 0)
    assert second.learn(records[:7]) == 0
    assert second.learn(records[7:]) == 300
    assert _seen(second) == 1000
    assert [(c.version, c.position) for c in second.unpublished] == \
        [(4, TrainerPosition(TOPIC, 9, 50, 0))]  # as if nothing had happened


async def test_a_version_cut_inside_a_record_stores_the_index_in_it(store: ModelStore) -> None:
    records = _records(1000, per_record=400)  # examples 0-399, 400-799, 800-999
    first = await _owner(store)
    first.learn(records)
    await first.flush()
    _, position = await store.load_trainer_state()
    assert position == TrainerPosition(TOPIC, 2, 150, 0)  # v4 at example 950
    assert first.covered([0, 1, 2]) == 2  # record 2 waits for its last 50 examples
    second = await _owner(store)
    assert second.learn(records[2:]) == 50
    assert _seen(second) == 1000
    assert second.unpublished == []


async def test_the_trainer_state_is_stored_alone_after_a_quiet_spell(store: ModelStore) -> None:
    # The default cadence (v1 at 200 examples): 100 examples make no version.
    settings = ModelSettings(signing_key="k" * 32)
    records = _records(300, per_record=50)
    clock = _Clock()
    first = await _owner(store, settings, clock)
    assert first.learn(records[:2]) == 100
    clock.now += 59.0
    await first.flush()
    assert await store.load_trainer_state() == (None, None)
    assert first.covered([0, 1]) == 0
    clock.now += 1.0
    await first.flush()
    trainer, position = await store.load_trainer_state()
    assert trainer is not None
    assert trainer.profiles_seen == 100
    assert position == TrainerPosition(TOPIC, 2, 0, 100)
    assert await store.current_version() == 0  # a checkpoint is no version
    assert first.covered([0, 1]) == 2
    # A new owner counts on from example 100, so v1 comes at example 200 as before.
    second = await _owner(store, settings)
    assert second.learn(records) == 200
    assert [(c.version, c.position) for c in second.unpublished] == \
        [(1, TrainerPosition(TOPIC, 4, 0, 0))]
    assert _seen(second) == 300


async def test_malformed_and_empty_records_do_not_hold_acks_back(
        store: ModelStore, caplog: pytest.LogCaptureFixture) -> None:
    good = encode_records(_examples(250, seed=2), per_record=150)
    values = [good[0], b"not json", b"", b'{"fs": "x", "examples": 5}', good[1],
              b"\xff"]
    records = list(enumerate(values))
    clock = _Clock()
    service = await _owner(store, clock=clock)
    with caplog.at_level(logging.WARNING, logger="streamproc.runtime.trainer"):
        assert service.learn(records) == 250
    assert len([r for r in caplog.records if "malformed" in r.message]) == 3
    await service.flush()  # v1 at example 200: record 4, 50 examples in
    assert service.stored == TrainerPosition(TOPIC, 4, 50, 0)
    assert service.covered([o for o, _ in records]) == 4
    clock.now += 60.0
    await service.flush()  # a checkpoint covers the rest, the trailing bad record too
    assert service.covered([o for o, _ in records]) == 6


async def test_a_position_on_another_topic_is_ignored(store: ModelStore) -> None:
    records = _records(500, per_record=250)
    first = await _owner(store, topic="old-training")
    first.learn(records)
    await first.flush()
    second = await _owner(store)
    assert second.trainer is not None
    assert second.trainer.version == 2  # the models resume
    assert second.stored is None
    assert second.learn(records) == 500  # offsets on another topic say nothing here


async def test_an_unreadable_position_is_ignored_and_reset_deletes_it(store: ModelStore) -> None:
    first = await _owner(store)
    first.learn(_records(200, per_record=100))
    await first.flush()
    position_key = keys.model_key(store.prefix, "trainer_position")
    assert await store.client.exists(position_key)
    await store.client.set(position_key, b"{not json")
    trainer, position = await store.load_trainer_state()
    assert trainer is not None
    assert position is None
    assert await store.reset() > 0
    assert await store.client.exists(position_key) == 0
    assert await store.load_trainer_state() == (None, None)


async def test_a_released_trainer_resumes_from_what_the_next_owner_stored(
        store: ModelStore) -> None:
    records = _records(1000, per_record=100)  # ten records of 100 examples
    first = await _owner(store)
    first.learn(records[:3])
    await first.flush()  # v1, cut at example 200: the end of record 1
    # A rebalance moves the partition; the next owner resumes from v1 and stores v2-v4.
    first.release()
    second = await _owner(store)
    assert second.learn(records) == 800
    await second.flush()
    assert await store.current_version() == 4
    # The partition comes back: the first worker reads v4's state instead of going on
    # from its own 300 examples (which would cut a second, different v2 over the first).
    assert first.trainer is None
    assert first.unpublished == []
    await first.load(TOPIC)
    assert first.trainer is not None
    assert first.trainer.version == 4
    assert first.stored == second.stored == TrainerPosition(TOPIC, 9, 50, 0)
    assert first.learn(records) == 50  # redelivered from the committed offset
    assert _seen(first) == 1000
    assert first.unpublished == []


async def test_a_trainer_that_lost_its_claim_stores_nothing_and_starts_over(
        store: ModelStore) -> None:
    records = _records(1000, per_record=100)
    first = await _owner(store)
    first.learn(records[:3])
    await first.flush()  # v1 (200 examples), stored while it owns the state
    first.learn(records[3:5])  # 500 examples in memory, v2 cut at 450, not stored yet
    assert [c.version for c in first.unpublished] == [2]
    # The partition moved, but this worker has not seen the revoke yet.
    second = await _owner(store)
    assert second.trainer is not None
    assert second.trainer.version == 1
    await first.flush()  # refused: nothing of the first's lineage lands after the claim
    assert first.trainer is None
    assert first.unpublished == []
    assert await store.current_version() == 1
    assert second.learn(records) == 800
    await second.flush()
    assert await store.current_version() == 4
    resumed, position = await store.load_trainer_state()
    assert resumed is not None
    assert resumed.profiles_seen == 950
    assert position == TrainerPosition(TOPIC, 9, 50, 0)


async def test_a_reset_fences_the_running_trainer_off(store: ModelStore) -> None:
    records = _records(600, per_record=100)
    first = await _owner(store, clock=(clock := _Clock()))
    first.learn(records[:3])
    await first.flush()
    assert await store.current_version() == 1
    assert await store.reset() > 0  # `streamproc model reset --yes`
    first.learn(records[3:])  # v2 cut at 450
    await first.flush()
    # Refused: the running trainer does not publish its old lineage over the reset.
    assert await store.current_version() == 0
    assert first.trainer is None
    # Its next take starts a new trainer, as a reset promises.
    await first.load(TOPIC)
    assert first.trainer is not None
    assert first.trainer.version == 0
    clock.now += 3600
    assert first.learn(records) == 600
    await first.flush()
    assert await store.current_version() == 2  # v1 at 200, v2 at 450: a new lineage


class _ReleasesMidway(ModelStore):
    """The real store; a rebalance revokes the partition while a read or a write is out."""

    service: TrainerService | None = None
    during = ""

    async def load_trainer_state(self) -> tuple[Trainer | None, TrainerPosition | None]:
        state = await super().load_trainer_state()
        if self.during == "load" and self.service is not None:
            self.service.release()
        return state

    async def store(self, version: int, items: Mapping[str, bytes | str | int],
                    owner: str) -> bool:
        written = await super().store(version, items, owner)
        if self.during == "store" and self.service is not None:
            self.service.release()
        return written


async def test_a_revoke_while_loading_leaves_the_trainer_unloaded(redis_client: aioredis.Redis
                                                                  ) -> None:
    store = _ReleasesMidway(redis_client, "tr-" + uuid.uuid4().hex[:8], KEY)
    service = TrainerService(EVERY_250, store, create_metrics(CollectorRegistry()))
    store.service, store.during = service, "load"
    assert await service.load(TOPIC) is None  # the records in hand are stale
    assert service.trainer is None
    assert service.owner is None  # no claim to store under, so nothing is stored
    await service.flush()
    assert await store.current_version() == 0
    store.during = ""
    assert await service.load(TOPIC) is not None
    assert service.owner is not None


async def test_a_revoke_while_storing_drops_the_rest_without_failing(redis_client: aioredis.Redis
                                                                     ) -> None:
    store = _ReleasesMidway(redis_client, "tr-" + uuid.uuid4().hex[:8], KEY)
    service = TrainerService(EVERY_250, store, create_metrics(CollectorRegistry()))
    await service.load(TOPIC)
    service.learn(_records(1000, per_record=100))
    assert [c.version for c in service.unpublished] == [1, 2, 3, 4]
    store.service, store.during = service, "store"
    await service.flush()  # v1 lands, then the revoke: v2-v4 are the next owner's
    assert await store.current_version() == 1
    assert service.trainer is None
    assert service.unpublished == []
    assert service.stored is None
