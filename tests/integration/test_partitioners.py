"""Producers with different partitioners: one customer on two partitions, two workers.

librdkafka (confluent-kafka, kcat) places a key on ``crc32(key) % n``; the Java client and
kafka-python on ``murmur2(key) % n``. Here clickstream is produced as librdkafka would and
purchases as Java would, to two partitions consumed by two workers, so about half the
customers have their two topics on different partitions (and often different workers).
Profiles are exact whatever the placement (one atomic Lua call per batch); this test
proves the scoring side: the scoring state is written conditionally, so outputs stay
consistent whichever worker handles a customer's event.
"""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from streamproc.adapters import keys
from streamproc.adapters.model_store import ModelStore
from streamproc.adapters.redis_store import make_client
from streamproc.core.generator import TrafficGenerator, batch_envelopes
from streamproc.runtime.embedded import free_port
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings
from tests.conftest import SIGNING_KEY
from tests.integration.kafka_io import consume_all, wait_until
from tests.integration.metrics_io import scrape
from tests.integration.test_replay_matches_worker import MIN_LABELS, frozen_model
from tests.integration.test_resilience import (
    Workers,
    applied_events,
    events_seen,
    metrics_on,
    workers,
)

__all__ = ["workers"]  # the fixture, re-exported so pytest finds it here

pytestmark = pytest.mark.integration

PARTITIONS = 2
START = datetime(2026, 1, 1, tzinfo=UTC)


def librdkafka_partition(key: bytes) -> int:
    """librdkafka's default partitioner (consistent_random): CRC-32 of the key."""
    return zlib.crc32(key) % PARTITIONS


def java_partition(key: bytes) -> int:
    """The Java client's (and kafka-python's) default partitioner: murmur2 of the key."""
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


async def produce_placed(settings: Settings, messages: Sequence[tuple[str, str, Any]]) -> None:
    """Clickstream placed as librdkafka would, purchases as the Java client would."""
    place: dict[str, tuple[str, Callable[[bytes], int]]] = {
        "clickstream": (settings.topics.clickstream, librdkafka_partition),
        "purchases": (settings.topics.purchases, java_partition)}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all",
                                linger_ms=5)
    await producer.start()
    try:
        sends = []
        for kind, key, value in messages:
            topic, partition = place[kind]
            sends.append(await producer.send(topic, orjson.dumps(value), key=key.encode(),
                                             partition=partition(key.encode())))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


def _events(message: dict[str, Any]) -> list[dict[str, Any]]:
    events = message.get("events")
    return [message] if events is None else list(events)


async def test_two_partitioners_and_two_workers_keep_outputs_consistent(
        make_settings: Callable[..., Settings], workers: Workers) -> None:
    web1, web2 = free_port(), free_port()
    settings = make_settings(
        kafka={"topic_partitions": PARTITIONS}, metrics=metrics_on(web1),
        models={"snapshot_every_examples": 10**9, "min_labels_before_alerts": MIN_LABELS,
                "churn_horizon_days": 14,
                # Low enough that alerts are many: what is under test is their consistency.
                "churn_threshold": 0.3})
    await ensure_topics(settings)
    trainer, bundle = frozen_model(settings.models.model_copy(
        update={"snapshot_every_examples": 2000}))
    client = make_client(settings.redis)
    await ModelStore(client, settings.redis.key_prefix, SIGNING_KEY.encode()).publish(
        bundle, trainer, 0.0)
    gen = TrafficGenerator(customers=300, seed=23, start=START, days=30)
    messages = list(batch_envelopes(gen.events(), 20, max_lag=300))
    expected_events = sum(len(_events(v)) for _, _, v in messages)
    clicks = {k for t, k, _ in messages if t == "clickstream"}
    orders = {k for t, k, v in messages if t == "purchases"
              and any(e["type"] == "order" for e in _events(v))}
    spread = {k for k in clicks & orders
              if librdkafka_partition(k.encode()) != java_partition(k.encode())}
    assert len(spread) > 50

    workers.start(settings)
    workers.start(settings, STREAMPROC_METRICS__PORT=str(web2))
    size = -(-len(messages) // 10)
    for i in range(0, len(messages), size):
        await produce_placed(settings, messages[i:i + size])
        await asyncio.sleep(0.5)  # live traffic: both workers busy at once

    async def applied() -> bool:
        return await applied_events(settings) >= expected_events

    await wait_until(applied, timeout=120, what="every event to be applied", interval=1.0)
    assert await events_seen(web1) > 0
    assert await events_seen(web2) > 0

    async def quiet() -> bool:  # the sweeps that follow the last batches are done
        before = [scrape(p, "streamproc_idle_checks_total") for p in (web1, web2)]
        await asyncio.sleep(2.0)
        return [scrape(p, "streamproc_idle_checks_total") for p in (web1, web2)] == before

    await wait_until(quiet, timeout=60, what="the idle sweeps to settle", interval=0.1)
    bootstrap, topics = settings.kafka.bootstrap_servers, settings.topics
    changes = [orjson.loads(v) for _, v in
               await consume_all(bootstrap, topics.segment_changes, idle=2.0)]
    alerts = [orjson.loads(v) for _, v in
              await consume_all(bootstrap, topics.churn_alerts, idle=2.0)]

    # One first assignment per customer, whichever worker scored it first.
    firsts = Counter(c["customer_id"] for c in changes if c["previous"] is None)
    assert len(firsts) >= 250
    assert max(firsts.values()) == 1

    # No alert inside a customer's cooldown, and an alert id never names two alerts.
    assert len(alerts) >= 10  # one per at-risk episode: enough to check their consistency
    cooldown = timedelta(days=settings.models.alert_cooldown_days)
    by_customer: dict[str, list[datetime]] = defaultdict(list)
    for alert in alerts:
        by_customer[alert["customer_id"]].append(datetime.fromisoformat(alert["event_time"]))
    for cid, times in by_customer.items():
        times.sort()
        assert all(b - a >= cooldown for a, b in itertools.pairwise(times)), cid
    contents: dict[str, set[bytes]] = defaultdict(set)
    for alert in alerts:
        contents[alert["alert_id"]].add(orjson.dumps({k: v for k, v in alert.items()
                                                      if k != "emitted_at"}))
    assert all(len(c) == 1 for c in contents.values())

    # One idle-check schedule per customer, and each spread customer counted once.
    prefix = settings.redis.key_prefix
    scheduled = [set(await client.zrange(keys.schedule_key(prefix, f"checks:{p}"), 0, -1))
                 for p in range(PARTITIONS)]
    await client.aclose()
    assert scheduled[0]
    assert scheduled[1]
    assert not scheduled[0] & scheduled[1]
    metric = "streamproc_multi_partition_customers_total"
    assert scrape(web1, metric) + scrape(web2, metric) == len(spread)
    gave_up = sum(scrape(p, "streamproc_scoring_conflicts_total", outcome="gave_up")
                  for p in (web1, web2))
    assert gave_up == 0
    logs = workers.all_logs()
    assert "Traceback" not in logs, logs[-3000:]
