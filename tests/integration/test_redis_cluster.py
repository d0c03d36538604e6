"""What only Redis Cluster has: per-slot marker copies, a master losing its data, and
slots moving between masters while a worker processes a stream.

The stores' behaviour on a cluster is covered by the suites parametrised over both
deployments (scoring store, profile store, model store, the end-to-end worker test).
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.exceptions import ResponseError

from streamproc.adapters import keys
from streamproc.adapters.cluster import SLOTS, mget
from streamproc.adapters.deployment import accept_marker, is_refusal, marker_copy_keys
from streamproc.adapters.redis_store import RedisProfileStore, make_client
from streamproc.core import seen
from streamproc.core.features import FeatureConfig, ProfileView
from streamproc.runtime.embedded import RedisCluster, spawn_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import to_env
from tests.integration.kafka_io import produce, wait_until
from tests.integration.test_deployment_guard import Guard, History, _view
from tests.integration.test_profiles_e2e import _stream
from tests.reference import compare, reference_profiles

pytestmark = pytest.mark.integration


def _prefix() -> str:
    return "cl-" + uuid.uuid4().hex[:10]


async def _node_of(client: ClusterClient, key: str) -> int:
    """The port of the master serving ``key``."""
    node = client.get_node_from_key(key)
    assert node is not None
    return int(node.port)


async def test_a_first_start_copies_the_marker_to_every_slot_and_a_flushed_master_is_caught(
        cluster_client: ClusterClient, redis_cluster: RedisCluster) -> None:
    prefix = _prefix()
    g = Guard(cluster_client, prefix)
    assert await g.verify() == "ok"
    marker = g.guard.marker
    copies = await mget(cluster_client, marker_copy_keys(prefix))
    assert len(copies) == SLOTS
    assert set(copies) == {marker.value}
    store = RedisProfileStore(cluster_client, prefix=prefix, features=FeatureConfig(),
                              profile_ttl_s=0, marker=marker)
    customers = [f"c-{i}" for i in range(300)]  # spread over every master
    updates = await store.apply_batch([_view(c, 1) for c in customers])
    assert all(u.applied == [True] for u in updates)

    # One master (not the one holding the main marker) loses its data.
    main_port = await _node_of(cluster_client, marker.key)
    victim = next(n.port for n in redis_cluster.nodes if n.port != main_port)
    lost = [c for c in customers
            if await _node_of(cluster_client, keys.profile_key(prefix, c)) == victim]
    kept = [c for c in customers if c not in lost]
    assert lost
    assert kept
    plain = aioredis.Redis(port=victim)
    try:
        await plain.flushall()
    finally:
        await plain.aclose()
    with pytest.raises(ResponseError) as info:
        await store.apply_batch([_view(c, 2) for c in customers])
    assert is_refusal(info.value), info.value
    # The refused slots wrote nothing; the others' calls landed and count once on retry.
    assert await store.get_states(lost) == [None] * len(lost)

    assert g.guard.refused(info.value)  # what the worker does with a refused call
    assert await g.verify() == "lost"
    assert "a cluster master lost its data" in (g.guard.reason or "")
    # A restart with history finds the same: it never refills the empty master.
    again = Guard(cluster_client, prefix, History(consumed_before=True))
    assert await again.verify() == "lost"

    # The operator accepts the cluster as it is: every slot gets the new marker.
    await accept_marker(cluster_client, prefix, 0.0)
    assert await g.verify() == "ok"
    updates = await store.apply_batch([_view(c, 2) for c in customers])
    by_id = {u.customer_id: u for u in updates}
    assert all(by_id[c].statuses == [seen.APPLIED] for c in lost)
    # The other masters' calls of the refused batch had landed: seen, not counted twice.
    assert all(by_id[c].statuses == [seen.DUPLICATE] for c in kept)


def _reshard(cluster: RedisCluster, slots: int) -> subprocess.CompletedProcess[bytes]:
    """Move ``slots`` slots from the first master to the second with redis-cli."""
    ids = {}
    for node in cluster.nodes:
        out = subprocess.run(["redis-cli", "-p", str(node.port), "cluster", "myid"],
                             check=True, capture_output=True, timeout=10)
        ids[node.port] = out.stdout.decode().strip()
    first, second = cluster.nodes[0].port, cluster.nodes[1].port
    return subprocess.run(
        ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{first}",
         "--cluster-from", ids[first], "--cluster-to", ids[second],
         "--cluster-slots", str(slots), "--cluster-yes", "--cluster-pipeline", "20"],
        capture_output=True, timeout=300)


async def test_profiles_equal_the_reference_while_slots_move_between_masters(
        make_settings, redis_cluster: RedisCluster, tmp_path: Path) -> None:
    settings = make_settings(redis={"url": redis_cluster.url, "cluster": True})
    await ensure_topics(settings)
    raw, valid, _ = _stream(customers=150, seed=21)
    topic_of = {"clickstream": settings.topics.clickstream,
                "purchases": settings.topics.purchases}
    records = [(topic_of[t], k, v) for t, k, v in raw]
    reference = reference_profiles(valid)
    log = tmp_path / "worker.log"
    proc = spawn_worker(to_env(settings), log_path=log)
    try:
        half = len(records) // 2
        await produce(settings.kafka.bootstrap_servers, records[:half])
        # Slots move while the worker processes the second half of the stream.
        moving = asyncio.create_task(asyncio.to_thread(_reshard, redis_cluster, 1500))
        await produce(settings.kafka.bootstrap_servers, records[half:])
        done = await moving
        assert done.returncode == 0, done.stderr.decode()[-2000:]

        differences: dict[str, list[str]] = {}

        async def settled() -> bool:
            client = make_client(settings.redis)
            try:
                store = RedisProfileStore.from_settings(client, settings.redis,
                                                        FeatureConfig())
                ids = sorted(reference)
                states = await store.get_states(ids)
            finally:
                await client.aclose()
            differences.clear()
            for cid, state in zip(ids, states, strict=True):
                got = ProfileView(cid, float(state["la"]), state).to_dict() if state else {}
                if problems := compare(reference[cid], got):
                    differences[cid] = problems
            return not differences

        try:
            await wait_until(settled, timeout=120, what="profiles to equal the reference")
        except AssertionError as exc:
            sample = dict(list(differences.items())[:3])
            raise AssertionError(f"{exc}: {len(differences)} differ, e.g. {sample}") from None
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(20)
