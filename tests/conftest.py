"""Shared fixtures: a real Tansu broker and a real redis-server, started once per session.

If either cannot start, the run fails with a message that says what to install:
integration tests never skip silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as ClusterClient

from streamproc.adapters.cluster import RedisClient
from streamproc.runtime.embedded import (
    RedisCluster,
    Service,
    ServiceError,
    start_redis,
    start_redis_cluster,
    start_tansu,
)
from streamproc.settings import Settings

# Keep the developer's own STREAMPROC_* environment out of the tests.
for _name in [n for n in os.environ if n.startswith("STREAMPROC_")]:
    del os.environ[_name]

SIGNING_KEY = "test-signing-key-not-a-secret"


@pytest.fixture(scope="session")
def broker() -> Iterator[Service]:
    """A memory-only Tansu broker for the whole test session."""
    try:
        service = start_tansu()
    except ServiceError as exc:
        pytest.fail(f"cannot start the Kafka-compatible broker: {exc}", pytrace=False)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Service]:
    """A private redis-server for the whole test session."""
    try:
        service = start_redis()
    except ServiceError as exc:
        pytest.fail(f"cannot start redis-server: {exc}", pytrace=False)
    yield service
    service.stop()


@pytest.fixture
async def redis_client(redis_server: Service) -> AsyncIterator[aioredis.Redis]:
    """A client of the session's redis-server, closed after the test."""
    client = aioredis.Redis(port=redis_server.port)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A private three-master Redis Cluster, started for the first test that asks."""
    try:
        cluster = start_redis_cluster(3)
    except ServiceError as exc:
        pytest.fail(f"cannot start a redis cluster: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
async def cluster_client(redis_cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    """A cluster client of the session's Redis Cluster, closed after the test."""
    client = ClusterClient(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    yield client
    await client.aclose()


def client_of(request: pytest.FixtureRequest, kind: str) -> RedisClient:
    """A new client of the session's redis-server (``single``) or Redis Cluster
    (``cluster``), starting the service on first use; the caller closes it."""
    if kind == "single":
        server: Service = request.getfixturevalue("redis_server")
        return aioredis.Redis(port=server.port)
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    return ClusterClient(host="127.0.0.1", port=cluster.nodes[0].port)


@pytest.fixture(params=["single", "cluster"])
async def any_redis(request: pytest.FixtureRequest) -> AsyncIterator[RedisClient]:
    """A client of the single redis-server, then of the Redis Cluster: the same test
    runs against both deployments with the same assertions."""
    client = client_of(request, request.param)
    yield client
    await client.aclose()


@pytest.fixture
def make_settings(broker: Service, redis_server: Service) -> Callable[..., Settings]:
    """Factory of settings pointing at the session services, with unique topics and keys.

    Each call isolates a test: its own topic names, consumer group and Redis key prefix.
    """

    def factory(**groups: dict[str, Any]) -> Settings:
        run = uuid.uuid4().hex[:10]
        base: dict[str, dict[str, Any]] = {
            "kafka": {"bootstrap_servers": f"127.0.0.1:{broker.port}",
                      "consumer_group": f"sp-{run}", "topic_partitions": 2},
            "topics": {name: f"{name}-{run}" for name in (
                "clickstream", "purchases", "segment_changes", "churn_alerts",
                "priority_alerts", "lifecycle_changes", "dead_letter", "training_examples")},
            "redis": {"url": f"redis://127.0.0.1:{redis_server.port}/0", "key_prefix": f"t{run}"},
            # Tests replay fixed past event times as news unless they test history.
            "models": {"signing_key": SIGNING_KEY, "history_lag_hours": 0.0},
            "metrics": {"port": 0},
        }
        for group, values in groups.items():
            base.setdefault(group, {}).update(values)
        return Settings(**base)  # type: ignore[arg-type]

    return factory
