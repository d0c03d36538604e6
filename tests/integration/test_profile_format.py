"""The stored profile format on a real redis-server: what cannot be stored is refused.

A profile is a positional msgpack array (``features.STORED_FIELDS``). What this version
cannot read or store without losing a field (a newer format, more fields than it knows,
anything but an array, a field without a slot) is refused by both interpreters, and
nothing of the batch is written: the worker retries it.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from streamproc.adapters import keys
from streamproc.adapters.redis_store import (
    PreparedEvent,
    RedisProfileStore,
    encode_profile,
    pack_like_lua,
)
from streamproc.core.features import (
    OP_ADD,
    STORED_FIELDS,
    FeatureConfig,
    ProfileFormatError,
)
from tests.integration.test_feature_store import (
    WALL,
    _store,
    generator_events,
    stored_value,
    write_profiles,
)

pytestmark = pytest.mark.integration


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


async def test_a_field_without_a_slot_is_refused_and_nothing_is_written(
        redis_client: aioredis.Redis) -> None:
    # No op writes such a field; should one ever, dropping it would lose data unseen.
    store = _store(redis_client, FeatureConfig())
    await write_profiles(store, {"c-1": {"ev": 1.0, "fs": 5.0}})
    before = await redis_client.get(keys.profile_key(store.prefix, "c-1"))
    [ev] = generator_events(customers=1, days=1, seed=3)[:1]
    batch = [PreparedEvent("c-0", "e-new", ev.ts, ev.ops, ev.lane),
             PreparedEvent("c-1", "e-new", ev.ts, [*ev.ops, (OP_ADD, "zz", 7.0)], ev.lane)]
    with pytest.raises(ResponseError, match="profile field zz has no stored position"):
        await store.apply_batch(batch, now=WALL)
    assert await redis_client.get(keys.profile_key(store.prefix, "c-1")) == before
    assert await redis_client.exists(keys.profile_key(store.prefix, "c-0")) == 0
    with pytest.raises(ProfileFormatError, match="zz"):
        encode_profile({"ev": 1.0, "zz": 7.0})


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


@pytest.mark.parametrize(("blob", "error"), [
    (pack_like_lua({"ev": 1.0}), "not an array"),  # a map
    (b"\x90", "profile format nil"),  # an empty array
])
async def test_anything_but_a_profile_array_is_refused_by_both(
        redis_client: aioredis.Redis, blob: bytes, error: str) -> None:
    store = _store(redis_client, FeatureConfig())
    await redis_client.set(keys.profile_key(store.prefix, "c-1"), stored_value(blob))
    await _assert_batch_refused(redis_client, store, error)
    with pytest.raises(ProfileFormatError):
        await store.get_state("c-1")
