"""Conformance: the Lua interpreter in Redis and the Python twin give identical profiles.

The same streams (generator traffic and hypothesis-made streams with duplicates and
shuffles) go through ``RedisProfileStore.apply_batch`` on a real redis-server, in
batches of random sizes, and through ``InMemoryProfiles``. Decoded states must be
exactly equal (floats included: both sides do the same IEEE operations in the same
order, with the same libm ``exp``), and the per-event applied/duplicate flags must match.
Profiles written by earlier versions (event-id rings of 14-byte records) are converted
the same way by both. Lua stores each profile exactly as ``encode_profile`` (the Python
twin of its save) encodes the twin's state, byte for byte.
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.adapters import keys
from streamproc.adapters.redis_store import (
    VALUE_TAG,
    PreparedEvent,
    RedisProfileStore,
    encode_blob,
    encode_profile,
    pack_like_lua,
    split_value,
)
from streamproc.core import seen
from streamproc.core.features import (
    LANE_CLICKSTREAM,
    LANE_PURCHASES,
    STORED_FIELDS,
    FeatureConfig,
    InMemoryProfiles,
    event_lane,
    event_ops,
)
from streamproc.core.generator import TrafficGenerator
from streamproc.core.replay import event_namespace, event_time
from streamproc.core.step import ScoringState
from streamproc.runtime.embedded import Service
from tests.unit.test_features import lane_of, ops_of, streams, to_legacy, with_duplicates

pytestmark = pytest.mark.integration


def _store(client: aioredis.Redis, config: FeatureConfig, ttl_s: int = 0) -> RedisProfileStore:
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
                         scoring: bytes = b"", *, as_map: bool = False) -> None:
    """Store profiles as the Lua interpreter lays them out; ``as_map``: as earlier versions.

    Earlier versions stored a profile as a msgpack map (``cmsgpack.pack`` of the table).
    """
    for cid, state in states.items():
        blob = pack_like_lua(state) if as_map else encode_profile(state)
        await store.client.set(keys.profile_key(store.prefix, cid), stored_value(blob, scoring))


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
    values = await store.client.mget([keys.profile_key(store.prefix, c) for c in customers])
    for cid, value in zip(customers, values, strict=True):
        profile = split_value(value)[0]
        assert profile is not None, cid
        assert_stored_as_encoded(profile, states[cid])


async def _conform(store: RedisProfileStore, events: Sequence[PreparedEvent],
                   sizes: Sequence[int], config: FeatureConfig,
                   tick: int = 0, start: dict[str, dict[str, Any]] | None = None,
                   start_as_map: bool = False) -> InMemoryProfiles:
    """Apply ``events`` to Redis in batches and to the twin; assert equal flags and states.

    Both sides read the same wall clock, which moves ``tick`` seconds per batch. ``start``
    holds profiles both sides begin with (written to Redis first, as maps of earlier
    versions with ``start_as_map``). Every customer an event reached ends up stored as
    ``encode_profile`` encodes the twin's state.
    """
    now = WALL
    twin = InMemoryProfiles.empty(config, clock=lambda: now)
    if start:
        await write_profiles(store, start, as_map=start_as_map)
        twin.states = copy.deepcopy(start)
    for batch in _batches(events, sizes):
        now += tick
        expected: dict[str, list[int]] = {}
        for ev in batch:
            status = twin.apply(ev.customer_id, ev.event_id, ev.ops, ev.ts, ev.lane)
            expected.setdefault(ev.customer_id, []).append(status)
        updates = await store.apply_batch(batch, now=now)
        assert [u.customer_id for u in updates] == list(expected)
        for update in updates:
            assert update.statuses == expected[update.customer_id], update.customer_id
            assert update.state == twin.states.get(update.customer_id, {}), update.customer_id
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


def split_history(data: st.DataObject,
                  config: FeatureConfig) -> tuple[list[PreparedEvent], int, InMemoryProfiles]:
    """A messy stream, where it is cut, and a twin that applied the part before the cut.

    The part before the cut is what an earlier version applied; the rest (with
    redeliveries of that part) goes to both interpreters.
    """
    stream = data.draw(st.permutations(data.draw(with_duplicates(data.draw(streams())))))
    cut = data.draw(st.integers(0, len(stream)))
    events = _prepare(stream)
    before = InMemoryProfiles.empty(config, clock=lambda: WALL)
    for ev in events[:cut]:
        before.apply(ev.customer_id, ev.event_id, ev.ops, ev.ts, ev.lane)
    return events, cut, before


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
@given(st.data(), st.sampled_from([
    FeatureConfig(),
    FeatureConfig(dedupe_events=2, dedupe_purchases=1, sessions=2),
    FeatureConfig(dedupe_events=5, dedupe_purchases=3, links=3, link_window_s=0),
]))
async def test_lua_and_the_twin_convert_profiles_of_earlier_versions_alike(
        redis_server: Service, data: st.DataObject, config: FeatureConfig) -> None:
    # An earlier version applied the first part of a messy stream (old rings: ic/ip);
    # both interpreters take the rest from there, converting on each customer's update.
    # With `rolling`, a newer version applied that part and an older one (a rolling
    # upgrade) some of it again: both rings are there, to be merged.
    events, cut, before = split_history(data, config)
    rolling = data.draw(st.booleans())
    older = [ev for ev in events[:cut] if not rolling or data.draw(st.booleans())]
    legacy = to_legacy(before.states,
                       [(ev.customer_id, ev.event_id, ev.ts, ev.lane) for ev in older],
                       config)
    if rolling:
        legacy = {cid: {**state, **legacy[cid]} for cid, state in before.states.items()}
    sizes = data.draw(st.lists(st.integers(1, 12), min_size=1, max_size=6))
    client = aioredis.Redis(port=redis_server.port)
    try:
        twin = await _conform(_store(client, config), events[cut:], sizes, config,
                              start=legacy, start_as_map=True)
        for cid in {ev.customer_id for ev in events[cut:]}:
            assert not {"ic", "ip", "icf", "ipf"} & twin.states[cid].keys()
    finally:
        await client.aclose()


async def test_lua_matches_the_python_twin_on_generator_traffic(redis_server: Service) -> None:
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
    client = aioredis.Redis(port=redis_server.port)
    try:
        store = _store(client, config)
        twin = await _conform(store, noisy, sizes, config)
        assert len(twin.states) >= 25
        usage = sorted([await store.memory_usage(cid) for cid in twin.states])
        # Heavy customers also hold the cart sessions no order has settled yet (17 B each).
        assert usage[len(usage) // 2] < 1024, usage
        assert usage[-1] < 1280, usage
    finally:
        await client.aclose()


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
                               "type": "order", "total": 42.5, "session_id": f"s-{n % 60}",
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


def _order(cid: str, n: int, ts: float) -> PreparedEvent:
    value = {"event_id": f"o-{cid}-{n}", "customer_id": cid, "order_id": f"o-{n}",
             "type": "order", "total": 10.0, "session_id": f"s-{cid}",
             "items": [{"product_id": "p", "quantity": 1, "unit_price": 10.0}]}
    ns = event_namespace(value)
    return PreparedEvent(cid, value["event_id"], ts, event_ops(ns, ts), event_lane(ns))


async def test_profiles_with_old_event_id_rings_are_converted_on_their_next_update(
        redis_server: Service) -> None:
    config = FeatureConfig()  # 20 clickstream and 8 purchase ids
    t0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    clicks = [_view(cid, n, t0 + 60.0 * n) for cid in ("c-1", "c-2") for n in range(30)]
    orders = [_order(cid, n, t0 + 60.0 * n + 30.0) for cid in ("c-1", "c-2") for n in range(12)]
    history = clicks + orders
    # What the running version stored after `history`: 8-byte digests, 14-byte records.
    before = InMemoryProfiles.empty(config, clock=lambda: WALL)
    for ev in history:
        assert before.apply(ev.customer_id, ev.event_id, ev.ops, ev.ts, ev.lane) == seen.APPLIED
    legacy = to_legacy(before.states, [(ev.customer_id, ev.event_id, ev.ts, ev.lane)
                                       for ev in history], config)
    old = legacy["c-1"]
    assert (len(old["ic"]), len(old["ip"])) == (20 * 14, 8 * 14)
    assert old["icf"] == seen.record_ms(t0 + 60.0 * 9)  # clicks 0-9 were evicted
    assert old["ipf"] == seen.record_ms(t0 + 60.0 * 3 + 30.0)  # orders 0-3 too
    assert not {LANE_CLICKSTREAM, LANE_PURCHASES} & old.keys()

    client = aioredis.Redis(port=redis_server.port)
    try:
        store = _store(client, config)
        scoring = encode_blob({"la": t0})
        await write_profiles(store, legacy, scoring, as_map=True)
        assert await store.get_state("c-1") == old  # readable before any update
        twin = InMemoryProfiles.empty(config, clock=lambda: WALL)
        twin.states = copy.deepcopy(legacy)

        late_click = _view("c-1", 99, t0 + 60.0 * 9)  # a new id at the old floor
        batch = [
            clicks[29], clicks[10],  # remembered in the old clickstream ring
            orders[11], orders[4],  # remembered in the old purchase ring
            clicks[3], late_click,  # evicted long ago / new but older than the floor
            _view("c-1", 30, t0 + 60.0 * 30),  # new
            _order("c-1", 12, t0 + 60.0 * 9 + 1.0),  # new; the purchase floor is older
        ]
        [update] = await store.apply_batch(batch, now=WALL)
        L, D, A = seen.LATE, seen.DUPLICATE, seen.APPLIED
        assert update.statuses == [D, D, D, D, L, L, A, A]
        assert update.statuses == [twin.apply(ev.customer_id, ev.event_id, ev.ops, ev.ts,
                                              ev.lane) for ev in batch]
        assert update.scoring.state == ScoringState(last_activity=t0)  # the state is kept
        state = update.state
        assert state == twin.states["c-1"]
        assert await store.get_state("c-1") == state
        # Only the new fields: 12-byte records, the old ones first in their order, and the
        # floors carried over, then raised by the one record each new event evicted.
        assert not {"ic", "ip", "icf", "ipf"} & state.keys()
        assert len(state[LANE_CLICKSTREAM]) == 20 * 12
        assert state[LANE_CLICKSTREAM][:-12] == b"".join(
            old["ic"][at:at + 6] + old["ic"][at + 8:at + 14] for at in range(14, 20 * 14, 14))
        assert state["jcf"] == seen.record_ms(t0 + 60.0 * 10)  # the new click evicted one
        assert state["jpf"] == seen.record_ms(t0 + 60.0 * 4 + 30.0)
        assert state["ev"] == old["ev"] + 2

        # A customer whose batch holds only duplicates is converted (and written) too.
        [dup] = await store.apply_batch([clicks[30 + 25], orders[12 + 10]], now=WALL)
        assert dup.statuses == [D, D]
        for ev in (clicks[55], orders[22]):
            assert twin.apply(ev.customer_id, ev.event_id, ev.ops, ev.ts, ev.lane) == D
        assert dup.state == twin.states["c-2"] == await store.get_state("c-2")
        assert dup.state[LANE_CLICKSTREAM] == b"".join(
            legacy["c-2"]["ic"][at:at + 6] + legacy["c-2"]["ic"][at + 8:at + 14]
            for at in range(0, 20 * 14, 14))
        assert dup.state["jpf"] == legacy["c-2"]["ipf"]
        assert not {"ic", "ip", "icf", "ipf"} & dup.state.keys()
        assert {k: v for k, v in dup.state.items() if k not in ("jc", "jp", "jcf", "jpf")} \
            == {k: v for k, v in legacy["c-2"].items() if k not in ("ic", "ip", "icf", "ipf")}
    finally:
        await client.aclose()
