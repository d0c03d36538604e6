"""Migration to the positional profile format, on a real redis-server.

Profiles of earlier versions are msgpack maps (``cmsgpack.pack`` of the Lua table,
written here by ``pack_like_lua``, byte for byte as the old Lua did but for the order of
the entries). Every reader decodes them to the same mapping as the new arrays; the Lua
interpreter loads them, decides duplicates and late events as the Python twin does, and
rewrites them as arrays on their next update. What this version cannot store without
losing a field is refused by both interpreters, and nothing is written.
"""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from streamproc.adapters import keys
from streamproc.adapters.redis_store import (
    PreparedEvent,
    RedisProfileStore,
    RedisScoringStore,
    decode_blob,
    encode_blob,
    encode_profile,
    pack_like_lua,
    split_value,
)
from streamproc.core import seen
from streamproc.core.features import (
    STORED_FIELDS,
    FeatureConfig,
    InMemoryProfiles,
    ProfileFormatError,
    ProfileView,
)
from streamproc.core.step import ScoringState
from streamproc.runtime.embedded import Service
from tests.integration.test_feature_store import (
    WALL,
    _conform,
    _store,
    assert_stored_as_encoded,
    generator_events,
    split_history,
    stored_value,
    write_profiles,
)

pytestmark = pytest.mark.integration


async def _profile_bytes(client: aioredis.Redis, prefix: str, cid: str) -> bytes:
    profile = split_value(await client.get(keys.profile_key(prefix, cid)))[0]
    assert profile is not None
    return profile


async def _assert_batch_refused(client: aioredis.Redis, store: RedisProfileStore,
                                error: str) -> None:
    """A batch for c-0 then c-1 fails on c-1's profile (``error``), and writes nothing.

    c-1's value stays byte for byte, and the customer before it in the batch gets no
    profile either: a retry decides its events anew.
    """
    before = await client.get(keys.profile_key(store.prefix, "c-1"))
    [ev] = generator_events(customers=1, days=1, seed=3)[:1]
    batch = [PreparedEvent(cid, "e-new", ev.ts, ev.ops, ev.lane) for cid in ("c-0", "c-1")]
    with pytest.raises(ResponseError, match=error):
        await store.apply_batch(batch, now=WALL)
    assert await client.get(keys.profile_key(store.prefix, "c-1")) == before
    assert await client.exists(keys.profile_key(store.prefix, "c-0")) == 0


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data(), st.sampled_from([
    FeatureConfig(),
    FeatureConfig(dedupe_events=2, dedupe_purchases=1, sessions=2, links=2),
]))
async def test_map_profiles_of_earlier_versions_update_as_the_twin_does(
        redis_server: Service, data: st.DataObject, config: FeatureConfig) -> None:
    # An earlier version applied the first part of a messy stream and stored maps; the
    # rest (with redeliveries of the first part) goes to both interpreters.
    events, cut, before = split_history(data, config)
    sizes = data.draw(st.lists(st.integers(1, 12), min_size=1, max_size=6))
    client = aioredis.Redis(port=redis_server.port)
    try:
        # _conform checks statuses, states, and that every customer an event reached is
        # now stored as an array, byte for byte as encode_profile encodes the twin's state.
        await _conform(_store(client, config), events[cut:], sizes, config,
                       start=before.states, start_as_map=True)
    finally:
        await client.aclose()


async def test_generator_profiles_stored_as_maps_read_alike_and_become_arrays(
        redis_client: aioredis.Redis) -> None:
    config = FeatureConfig()
    events = generator_events(customers=25, days=60, seed=3)
    rng = random.Random(5)
    cut = len(events) * 3 // 4
    history, rest = events[:cut], events[cut:]
    twin = InMemoryProfiles.empty(config, clock=lambda: WALL)
    for ev in history:
        assert twin.apply(ev.customer_id, ev.event_id, ev.ops, ev.ts, ev.lane) == seen.APPLIED
    old = copy.deepcopy(twin.states)
    store = _store(redis_client, config)
    scoring = encode_blob({"la": 1.0, "pend": []})
    await write_profiles(store, old, scoring, as_map=True)
    customers = sorted(old)
    as_of = datetime(2026, 3, 15, tzinfo=UTC).timestamp()
    # Every reader gets the same mapping from a map as from an array.
    for cid, state in zip(customers, await store.get_states(customers), strict=True):
        assert state == old[cid]
        assert decode_blob(encode_profile(old[cid])) == state
        assert ProfileView(cid, as_of, state).to_dict() == \
            ProfileView(cid, as_of, decode_blob(encode_profile(old[cid]))).to_dict()
    scoring_store = RedisScoringStore(redis_client, prefix=store.prefix, ttl_s=0)
    assert [r.state for r in await scoring_store.read(customers)] == \
        [ScoringState(last_activity=1.0)] * len(customers)

    # Redeliveries of the history for some customers only (all duplicates: converted
    # too), new events and redeliveries for the others.
    quiet = set(customers[:5])
    batch = [ev for ev in history if ev.customer_id in quiet][-40:]
    batch += [ev for ev in rest if ev.customer_id not in quiet][:300]
    batch += rng.sample(history, 60)
    rng.shuffle(batch)
    expected: dict[str, list[int]] = {}
    for ev in batch:
        expected.setdefault(ev.customer_id, []).append(
            twin.apply(ev.customer_id, ev.event_id, ev.ops, ev.ts, ev.lane))
    assert seen.APPLIED in {s for v in expected.values() for s in v}
    assert any(set(v) == {seen.DUPLICATE} for v in expected.values())
    updates = await store.apply_batch(batch, now=WALL)
    for update in updates:
        assert update.statuses == expected[update.customer_id], update.customer_id
        assert update.state == twin.states[update.customer_id]
        assert update.scoring.state == ScoringState(last_activity=1.0)
    for update in updates:
        stored = await _profile_bytes(redis_client, store.prefix, update.customer_id)
        assert msgpack.unpackb(stored, raw=True)[0] == 1  # an array of format 1
        assert_stored_as_encoded(stored, twin.states[update.customer_id])
        value = await redis_client.get(keys.profile_key(store.prefix, update.customer_id))
        assert split_value(value)[1] == scoring  # the scoring state, byte for byte
    untouched = set(customers) - set(expected)
    assert untouched  # still maps until their next update, and still read
    for cid in untouched:
        stored = await _profile_bytes(redis_client, store.prefix, cid)
        assert isinstance(msgpack.unpackb(stored, raw=True), dict)
        assert await store.get_state(cid) == twin.states[cid]


async def test_a_field_without_a_slot_is_refused_and_nothing_is_written(
        redis_client: aioredis.Redis) -> None:
    # No version ever wrote such a field: dropping it would lose data without a trace.
    store = _store(redis_client, FeatureConfig())
    state: dict[str, Any] = {"ev": 1.0, "fs": 5.0, "zz": 7.0}
    await write_profiles(store, {"c-1": state}, as_map=True)
    await _assert_batch_refused(redis_client, store, "profile field zz has no stored position")
    assert await store.get_state("c-1") == state  # still readable
    with pytest.raises(ProfileFormatError, match="zz"):
        encode_profile(state)


@pytest.mark.parametrize(("row", "error"), [
    ([1, *([1.0] * (len(STORED_FIELDS) + 1))], "newer version"),
    ([2, 1.0], "profile format 2"),
])
async def test_profiles_of_a_newer_format_are_refused_by_both(
        redis_client: aioredis.Redis, row: list[Any], error: str) -> None:
    store = _store(redis_client, FeatureConfig())
    await redis_client.set(keys.profile_key(store.prefix, "c-1"), stored_value(pack_like_lua(row)))
    await _assert_batch_refused(redis_client, store, error)
    with pytest.raises(ProfileFormatError):
        await store.get_state("c-1")


async def test_a_map_an_older_worker_left_on_an_array_profile_is_refused(
        redis_client: aioredis.Redis) -> None:
    # An older worker reads an array as a table of numbered entries (no field of its own)
    # and writes them back as a map, beside the fields of the events it counted again.
    store = _store(redis_client, FeatureConfig())
    await write_profiles(store, {"c-1": {1: 1, 2: 1767225600.5, "ev": 1.0}}, as_map=True)
    [ev] = generator_events(customers=1, days=1, seed=3)[:1]
    with pytest.raises(ResponseError, match="has no stored position"):
        await store.apply_batch([PreparedEvent("c-1", "e-new", ev.ts, ev.ops, ev.lane)],
                                now=WALL)


@pytest.mark.parametrize("blob", [b"\x90", b"\x80"])
async def test_an_empty_profile_of_earlier_versions_is_read_and_rewritten(
        redis_client: aioredis.Redis, blob: bytes) -> None:
    # Lua packs an empty table as an empty array, not as a profile of format 1.
    store = _store(redis_client, FeatureConfig())
    await redis_client.set(keys.profile_key(store.prefix, "c-1"), stored_value(blob))
    assert await store.get_state("c-1") == {}
    [ev] = generator_events(customers=1, days=1, seed=3)[:1]
    [update] = await store.apply_batch(
        [PreparedEvent("c-1", "e-new", ev.ts, ev.ops, ev.lane)], now=WALL)
    assert update.statuses == [seen.APPLIED]
    assert_stored_as_encoded(await _profile_bytes(redis_client, store.prefix, "c-1"), update.state)
