"""Conformance: the Lua interpreter in Redis and the Python twin give identical profiles.

The same streams (generator traffic and hypothesis-made streams with duplicates and
shuffles) go through ``RedisProfileStore.apply_batch`` on a real redis-server, in
batches of random sizes, and through ``InMemoryProfiles``. Decoded states must be
exactly equal (floats included: both sides do the same IEEE operations in the same
order, with the same libm ``exp``), and the per-event applied/duplicate flags and the
cart/order links a full ring cost must match. Lua stores each profile exactly as
``encode_profile`` (the Python twin of its save) encodes the twin's state, byte for byte.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgpack
import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streamproc.adapters import keys
from streamproc.adapters.cluster import RedisClient, mget
from streamproc.adapters.redis_store import (
    VALUE_TAG,
    PreparedEvent,
    RedisProfileStore,
    encode_profile,
    split_value,
)
from streamproc.core.features import (
    STORED_FIELDS,
    FeatureConfig,
    InMemoryProfiles,
    event_lane,
    event_ops,
)
from streamproc.core.generator import TrafficGenerator
from streamproc.core.replay import event_namespace, event_time
from streamproc.runtime.app import create_worker
from streamproc.runtime.embedded import Service
from streamproc.runtime.pipeline import OutRecord, RawMessage, no_acks
from streamproc.settings import Settings
from tests.reference import reference_profiles
from tests.unit.test_features import (
    assert_session_counts_within_truth,
    cart_then_order_sessions,
    interleavings,
    lane_of,
    ops_of,
    streams,
    waiting_sessions,
    with_duplicates,
)

pytestmark = pytest.mark.integration


def _store(client: RedisClient, config: FeatureConfig, ttl_s: int = 0) -> RedisProfileStore:
    prefix = "conf-" + uuid.uuid4().hex[:12]
    return RedisProfileStore(client, prefix=prefix, features=config, profile_ttl_s=ttl_s)


def _batches(events: Sequence[PreparedEvent], sizes: Sequence[int]) -> list[list[PreparedEvent]]:
    out, i, k = [], 0, 0
    while i < len(events):
        size = sizes[k % len(sizes)] if sizes else len(events)
        out.append(list(events[i:i + size]))
        i += size
        k += 1
    return out


WALL = 1_800_000_000


async def write_profiles(store: RedisProfileStore, states: dict[str, dict[str, Any]],
                         scoring: bytes = b"") -> None:
    """Store profiles as the Lua interpreter lays them out."""
    for cid, state in states.items():
        await store.client.set(keys.profile_key(store.prefix, cid),
                               stored_value(encode_profile(state), scoring))


def stored_value(profile: bytes, scoring: bytes = b"") -> bytes:
    """A customer's value as Lua lays it out: tag, profile length, profile, scoring state."""
    return bytes([VALUE_TAG]) + len(profile).to_bytes(4, "big") + profile + scoring


def generator_events(customers: int, days: int, seed: int) -> list[PreparedEvent]:
    """The generator's traffic from 2026-01-01, prepared as the ingest pipeline does."""
    gen = TrafficGenerator(customers=customers, seed=seed,
                           start=datetime(2026, 1, 1, tzinfo=UTC), days=days)
    events = []
    for g in gen.events():
        ts = event_time(g.value)
        ns = event_namespace(g.value)
        events.append(PreparedEvent(g.key, str(g.value["event_id"]), ts, event_ops(ns, ts),
                                    event_lane(ns)))
    return events


def _parts(blob: bytes, *, is_map: bool = False) -> list[bytes]:
    """The header of a msgpack array (or map), then the packed bytes of each element."""
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(blob)
    n = unpacker.read_map_header() * 2 if is_map else unpacker.read_array_header()
    at = unpacker.tell()
    parts = [blob[:at]]
    for _ in range(n):
        unpacker.skip()
        parts.append(blob[at:unpacker.tell()])
        at = unpacker.tell()
    assert at == len(blob)
    return parts


#: Where ``k`` is in ``_parts`` of a stored profile (after the header and the format).
_K_PART = 2 + STORED_FIELDS.index("k")


def assert_stored_as_encoded(stored: bytes, state: dict[str, Any]) -> None:
    """``stored`` (written by Lua) is ``encode_profile(state)`` byte for byte.

    Only the entries of the category map ``k`` may come in another order: Lua packs a
    table in its hash order.
    """
    lua, python = _parts(stored), _parts(encode_profile(state))
    assert len(lua) == len(python)
    for n, (got, want) in enumerate(zip(lua, python, strict=True)):
        if n == _K_PART and want[:1] != b"\xc2":
            got_k, want_k = _parts(got, is_map=True), _parts(want, is_map=True)
            assert got_k[0] == want_k[0]
            assert sorted(zip(got_k[1::2], got_k[2::2], strict=True)) == \
                sorted(zip(want_k[1::2], want_k[2::2], strict=True))
        else:
            assert got == want, (n, (("format", *STORED_FIELDS)[n - 1]) if n else "header")


async def assert_stored_by_lua_as_by_python(store: RedisProfileStore,
                                            states: dict[str, dict[str, Any]]) -> None:
    """Every customer of ``states`` is stored as an array, as ``encode_profile`` encodes it."""
    customers = sorted(states)
    values = await mget(store.client, [keys.profile_key(store.prefix, c) for c in customers])
    for cid, value in zip(customers, values, strict=True):
        profile = split_value(value)[0]
        assert profile is not None, cid
        assert_stored_as_encoded(profile, states[cid])


async def _conform(store: RedisProfileStore, events: Sequence[PreparedEvent],
                   sizes: Sequence[int], config: FeatureConfig,
                   tick: int = 0) -> InMemoryProfiles:
    """Apply ``events`` to Redis in batches and to the twin; assert equal flags and states.

    Both sides read the same wall clock, which moves ``tick`` seconds per batch. Every
    customer an event reached ends up stored as ``encode_profile`` encodes the twin's state.
    """
    now = WALL
    twin = InMemoryProfiles.empty(config, clock=lambda: now)
    for batch in _batches(events, sizes):
        now += tick
        expected: dict[str, list[int]] = {}
        dropped_before = dict(twin.links_dropped)
        for ev in batch:
            status = twin.apply(ev.customer_id, ev.event_id, ev.ops, ev.ts, ev.lane)
            expected.setdefault(ev.customer_id, []).append(status)
        updates = await store.apply_batch(batch, now=now)
        assert [u.customer_id for u in updates] == list(expected)
        for update in updates:
            cid = update.customer_id
            assert update.statuses == expected[cid], cid
            assert update.state == twin.states.get(cid, {}), cid
            assert update.links_dropped == (twin.links_dropped.get(cid, 0)
                                            - dropped_before.get(cid, 0)), cid
    customers = sorted(twin.states)
    stored = await store.get_states(customers)
    for cid, state in zip(customers, stored, strict=True):
        assert state == twin.states[cid], cid
    touched = {ev.customer_id for ev in events}
    await assert_stored_by_lua_as_by_python(
        store, {cid: state for cid, state in twin.states.items() if cid in touched})
    return twin


def _prepare(stream: Sequence[dict[str, Any]]) -> list[PreparedEvent]:
    out = []
    for value in stream:
        ops, ts = ops_of(value)
        out.append(PreparedEvent(value["customer_id"], value["event_id"], ts, ops,
                                 lane_of(value)))
    return out


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data(), st.sampled_from([
    FeatureConfig(), FeatureConfig(max_categories=3),
    # Tiny rings: evictions, floors and late events on almost every stream.
    FeatureConfig(dedupe_events=2, dedupe_purchases=1, sessions=2),
    FeatureConfig(dedupe_events=5, dedupe_purchases=3, sessions=1),
    # Cart/order links that overflow, settle within minutes and expire within batches.
    FeatureConfig(links=1, link_window_s=60, link_ttl_s=5),
    FeatureConfig(links=3, link_window_s=0, link_ttl_s=10**9),
]))
async def test_lua_matches_the_python_twin_on_messy_streams(
        redis_server: Service, data: st.DataObject, config: FeatureConfig) -> None:
    # max_categories=3 (< the 8 generated categories) exercises the top-k eviction too.
    stream = data.draw(with_duplicates(data.draw(streams())))
    stream = data.draw(st.permutations(stream))
    sizes = data.draw(st.lists(st.integers(1, 12), min_size=1, max_size=6))
    client = aioredis.Redis(port=redis_server.port)
    try:
        await _conform(_store(client, config), _prepare(stream), sizes, config,
                       tick=data.draw(st.integers(0, 3)))
    finally:
        await client.aclose()


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data(), st.integers(1, 8))
async def test_lua_costs_conversions_never_an_overcount_when_the_link_ring_is_full(
        redis_server: Service, data: st.DataObject, links: int) -> None:
    # More sessions waiting for the other topic than the ring holds, in any interleaving
    # of the two topics, in batches: Lua decides and reports exactly as the twin does.
    stream = data.draw(waiting_sessions())
    merged = data.draw(interleavings(data.draw(with_duplicates(stream))))
    sizes = data.draw(st.lists(st.integers(1, 12), min_size=1, max_size=6))
    config = FeatureConfig(links=links)
    client = aioredis.Redis(port=redis_server.port)
    try:
        store = _store(client, config)
        twin = await _conform(store, _prepare(merged), sizes, config)
        [truth] = reference_profiles(stream).values()
        assert_session_counts_within_truth(await store.get_state("c-1") or {},
                                           twin.links_dropped.get("c-1", 0), truth)
    finally:
        await client.aclose()


async def test_150_cart_then_order_sessions_with_the_purchases_ahead(
        redis_client: aioredis.Redis) -> None:
    # Issue 19: cart_sessions 215-236 instead of 150, converted 64-86, with the purchases
    # topic ahead of the clickstream; exact when paced.
    clicks, orders = cart_then_order_sessions(150)
    config = FeatureConfig()
    [truth] = reference_profiles(clicks + orders).values()
    paced = [e for n in range(150) for e in (*clicks[3 * n:3 * n + 3], orders[n])]
    for stream, converted in ((orders + clicks, config.links), (paced, 150)):
        store = _store(redis_client, config)
        dropped = 0
        for batch in _batches(_prepare(stream), [50]):
            dropped += sum(u.links_dropped for u in await store.apply_batch(batch, now=WALL))
        state = await store.get_state("hot")
        assert state is not None
        assert (state["se"], state["cs"], state["os"], state["cc"]) == (150, 150, 150, converted)
        assert_session_counts_within_truth(state, dropped, truth)
        assert (dropped > 0) == (stream is not paced)


async def test_lua_matches_the_python_twin_on_generator_traffic(any_redis: RedisClient) -> None:
    """On a single instance (one call per batch) and on Redis Cluster (one per slot)."""
    events = generator_events(customers=30, days=60, seed=7)
    assert len(events) > 1000
    rng = random.Random(11)
    # Redeliveries (duplicates) and local reordering, as a consumer would see after a rebalance.
    noisy = list(events)
    for _ in range(len(events) // 10):
        i = rng.randrange(len(noisy))
        noisy.insert(min(len(noisy), i + rng.randrange(1, 50)), noisy[i])
    for start in range(0, len(noisy) - 20, 97):
        window = noisy[start:start + 20]
        rng.shuffle(window)
        noisy[start:start + 20] = window
    sizes = [rng.randint(1, 300) for _ in range(40)]
    config = FeatureConfig()
    store = _store(any_redis, config)
    twin = await _conform(store, noisy, sizes, config)
    assert len(twin.states) >= 25
    assert sorted([c async for c in store.customers()]) == sorted(twin.states)
    usage = sorted([await store.memory_usage(cid) for cid in twin.states])
    # Heavy customers also hold the cart sessions no order has settled yet (17 B each).
    assert usage[len(usage) // 2] < 1024, usage
    assert usage[-1] < 1280, usage


async def _evalsha_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    entry = stats.get("cmdstat_evalsha", {})
    return int(entry.get("calls", 0))


async def test_one_round_trip_per_batch_and_compact_profiles(redis_server: Service) -> None:
    config = FeatureConfig()
    client = aioredis.Redis(port=redis_server.port)
    try:
        store = _store(client, config)
        start = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
        types = ["session_start", "page_view", "product_view", "search", "add_to_cart",
                 "remove_from_cart", "session_end"]
        cats = ["books", "fashion", "garden", "home", "sports", "toys", "beauty", "grocery"]
        values: list[dict[str, Any]] = []
        for n in range(500):
            cid = f"c-{n % 40}"
            if n % 25 == 24:
                values.append({"event_id": f"e-{n}", "customer_id": cid, "order_id": f"o-{n}",
                               "type": "order", "total": 42.5, "currency": "EUR",
                               "session_id": f"s-{n % 60}",
                               "items": [{"product_id": "p", "category": cats[n % 8],
                                          "quantity": 2, "unit_price": 21.25}]})
            else:
                values.append({"event_id": f"e-{n}", "customer_id": cid,
                               "event_type": types[n % len(types)], "session_id": f"s-{n % 60}",
                               "category": cats[n % 8], "quantity": 1})
        batch = []
        for n, value in enumerate(values):
            ts = start + 37.0 * n
            ns = event_namespace(value)
            batch.append(PreparedEvent(value["customer_id"], value["event_id"], ts,
                                       event_ops(ns, ts), event_lane(ns)))
        # Warm up: load the script so a NOSCRIPT retry cannot inflate the count.
        await store.apply_batch(batch[:1])
        before = await _evalsha_calls(client)
        updates = await store.apply_batch(batch)
        after = await _evalsha_calls(client)
        assert after - before == 1
        assert len(updates) == 40
        assert sum(sum(u.applied) for u in updates) == 499  # batch[0] was the warm-up
        usage = await store.memory_usage("c-0")
        assert 0 < usage < 1024, usage
    finally:
        await client.aclose()


def _view(cid: str, n: int, ts: float) -> PreparedEvent:
    value = {"event_id": f"e-{cid}-{n}", "customer_id": cid, "event_type": "page_view",
             "session_id": f"s-{cid}"}
    ns = event_namespace(value)
    return PreparedEvent(cid, value["event_id"], ts, event_ops(ns, ts), event_lane(ns))


class _Collect:
    """A publisher that keeps what it is handed (the outputs are not under test here)."""

    def __init__(self) -> None:
        self.records: list[OutRecord] = []

    async def send(self, records: Sequence[OutRecord]) -> Any:
        self.records += records
        return no_acks()


async def test_the_ingest_pipeline_counts_the_links_a_full_ring_dropped(
        make_settings: Callable[..., Settings]) -> None:
    # The worker's own pipeline reads the Lua reply: its counter says what the twin says.
    settings = make_settings(ingest={"linked_sessions": 8})
    registry = CollectorRegistry()
    worker = create_worker(settings, registry)
    await worker.guard.verify()  # what the running app does first: Redis calls wait for it
    worker.pipeline.publisher = _Collect()
    worker.pipeline.scoring = None  # no Faust consumer here, and scoring is not under test
    # Sessions 4 hours apart: each order link stays a day, so the ring of 8 has room
    # for every order and keeps the newest 8 for the carts that come after them.
    clicks, orders = cart_then_order_sessions(20, gap_ms=4 * 3_600_000)
    topics = settings.topics
    messages = [RawMessage(topics.purchases if "order_id" in e else topics.clickstream, 0, n,
                           b"hot", orjson.dumps(e)) for n, e in enumerate(orders + clicks)]
    twin = InMemoryProfiles.empty(settings.ingest.feature_config())
    for ev in _prepare(orders + clicks):
        twin.apply(ev.customer_id, ev.event_id, ev.ops, ev.ts, ev.lane)
    try:
        for at in range(0, len(messages), 25):
            batch = worker.pipeline.prepare(messages[at:at + 25])
            assert not batch.out  # every event valid
            await (await worker.pipeline.stage(batch))
        state = await worker.pipeline.store.get_state("hot")
        assert state is not None
        counts = ("se", "cs", "os", "cc")
        assert [state[c] for c in counts] == [twin.states["hot"][c] for c in counts]
        assert [state[c] for c in counts] == [20, 20, 20, 8]  # the ring's 8 orders convert
        assert twin.links_dropped["hot"] > 0
        assert registry.get_sample_value("streamproc_cart_links_dropped_total") \
            == twin.links_dropped["hot"]
    finally:
        await worker.pipeline.store.client.aclose()
