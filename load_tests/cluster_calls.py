"""Cost of a profile batch on one redis-server and on a three-master Redis Cluster.

Starts both on free ports and applies the same batches through ``RedisProfileStore``:
on the single instance one script call per batch, on the cluster one call per slot
(the layout streamproc uses) and, for comparison, one call per bucket hash tag
(customers co-located in 16 tags, a layout considered and not chosen). Prints events/s
and this process's CPU per event (the client side, what a worker pays).

    python -m load_tests.cluster_calls [--rounds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import zlib
from collections.abc import Callable, Sequence
from unittest import mock

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as ClusterClient

from streamproc.adapters import keys
from streamproc.adapters.cluster import RedisClient
from streamproc.adapters.redis_store import PreparedEvent, RedisProfileStore
from streamproc.core.features import FeatureConfig, event_lane, event_ops
from streamproc.core.replay import event_namespace
from streamproc.runtime.embedded import start_redis, start_redis_cluster

#: (customers per batch, events per customer)
SHAPES: tuple[tuple[int, int], ...] = ((1000, 1), (200, 5), (40, 25))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _view(cid: str, n: int) -> PreparedEvent:
    value = {"event_id": f"e-{cid}-{n}", "customer_id": cid, "event_type": "page_view",
             "session_id": f"s-{cid}"}
    ns = event_namespace(value)
    ts = 1_700_000_000.0 + n
    return PreparedEvent(cid, value["event_id"], ts, event_ops(ns, ts), event_lane(ns))


async def measure(client: RedisClient, label: str, customers: int, per: int,
                  rounds: int) -> None:
    """Apply ``rounds`` batches of ``customers`` x ``per`` events and print the cost."""
    store = RedisProfileStore(client, prefix=f"cc-{label}-{customers}", features=FeatureConfig(),
                              profile_ttl_s=0)
    await store.apply_batch([_view(f"c-{i}", 0) for i in range(customers)])
    batches = [[_view(f"c-{i}", 1 + r * per + k) for i in range(customers) for k in range(per)]
               for r in range(rounds)]
    wall0, cpu0 = time.perf_counter(), _cpu()
    for batch in batches:
        await store.apply_batch(batch)
    wall, used = time.perf_counter() - wall0, _cpu() - cpu0
    n = rounds * customers * per
    print(f"{label:10s} {customers:5d} customers x {per:2d} events: {n / wall:8.0f} events/s, "
          f"client CPU {1e6 * used / n:6.1f} us/event, {1e3 * wall / rounds:6.1f} ms/batch")


def _bucketed(buckets: int) -> Callable[[str, str], str]:
    def profile_key(prefix: str, customer_id: str) -> str:
        return f"{prefix}:{{b{zlib.crc32(customer_id.encode()) % buckets}}}:{customer_id}:p"
    return profile_key


async def main(argv: Sequence[str] | None = None) -> None:
    """Run every shape on the single instance, the cluster per slot and per bucket."""
    p = argparse.ArgumentParser(prog="python -m load_tests.cluster_calls", description=__doc__)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    single, cluster = start_redis(), start_redis_cluster(3)
    one = aioredis.Redis(port=single.port)
    many = ClusterClient(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        for customers, per in SHAPES:
            await measure(one, "single", customers, per, args.rounds)
            await measure(many, "per-slot", customers, per, args.rounds)
            with mock.patch.object(keys, "profile_key", _bucketed(16)):
                await measure(many, "16-bucket", customers, per, args.rounds)
    finally:
        await one.aclose()
        await many.aclose()
        single.stop()
        cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())
