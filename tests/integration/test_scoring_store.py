"""Conformance: the Redis scoring store and its in-memory twin behave alike.

Every test of the suite runs against both (``store`` is parametrised, as Quix Streams
does for its state stores): conditional writes of states with their schedule entries,
reads of profiles with states, and listing due customers. The tests at the end cover
what only Redis has (one command per write, TTLs, long schedule lists).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from streamproc.adapters import keys
from streamproc.adapters.redis_store import RedisProfileStore, RedisScoringStore
from streamproc.core.features import MODEL_FEATURES, FeatureConfig, InMemoryProfiles
from streamproc.core.labels import Snapshot
from streamproc.core.policies import AlertState, SegmentState
from streamproc.core.step import ScoringState
from streamproc.core.store import InMemoryStore, ScoringStore, StateWrite, stored_precision
from tests.conftest import client_of
from tests.integration.test_feature_store import WALL, _view

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
CHECKS, DEFERRED = "checks:0", "deferred:1"


@dataclass
class Harness:
    """A scoring store, and a way to give its customers profiles."""

    store: ScoringStore
    profiles: RedisProfileStore | InMemoryProfiles

    async def profile(self, cid: str, n: int = 0) -> dict[str, Any]:
        """Apply one page view of ``cid``; returns its profile."""
        event = _view(cid, n, T0 + 60.0 * n)
        if isinstance(self.profiles, InMemoryProfiles):
            self.profiles.apply(cid, event.event_id, event.ops, event.ts, event.lane)
            return copy.deepcopy(self.profiles.states[cid])  # the twin updates it in place
        [update] = await self.profiles.apply_batch([event], now=WALL)
        return update.state


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        twin = InMemoryStore(InMemoryProfiles.empty(clock=lambda: WALL))
        yield Harness(twin, twin.profiles)
        return
    client = client_of(request, "single" if request.param == "redis" else "cluster")
    prefix = "ss-" + uuid.uuid4().hex[:10]
    yield Harness(RedisScoringStore(client, prefix=prefix, ttl_s=600),
                  RedisProfileStore(client, prefix=prefix, features=FeatureConfig(),
                                    profile_ttl_s=600))
    await client.aclose()


def _state(la: float, cid: str = "c-1", *, pending: int = 1) -> ScoringState:
    features = {n: 0.1 * i + la / 1e9 for i, n in enumerate(MODEL_FEATURES)}
    return ScoringState(segment=SegmentState(2, la), alert=AlertState(None, 0.3),
                        pending=tuple(Snapshot(cid, la - i, features, 3, 30 * 86_400.0)
                                      for i in range(pending)),
                        last_activity=la, last_snapshot=la, owner=0)


async def test_unknown_customers_read_as_absent(harness: Harness) -> None:
    [record] = await harness.store.read(["c-none"])
    assert (record.customer_id, record.profile, record.state, record.token) == \
        ("c-none", None, None, "")
    assert await harness.store.due(CHECKS, 1e12, 10) == []


async def test_a_state_round_trips_beside_its_profile(harness: Harness) -> None:
    profile = await harness.profile("c-1")
    state = _state(T0)
    assert await harness.store.write([StateWrite("c-1", "", state, {CHECKS: T0 + 5})]) == []
    [record] = await harness.store.read(["c-1"])
    assert record.profile == profile
    assert record.state == stored_precision(state)  # pending features at bfloat16
    assert record.token != ""
    # A profile update keeps the state and its token.
    newer = await harness.profile("c-1", 1)
    [again] = await harness.store.read(["c-1"])
    assert again.profile == newer != profile
    assert (again.state, again.token) == (record.state, record.token)


async def test_a_write_with_a_stale_token_changes_nothing_of_that_customer(
        harness: Harness) -> None:
    store = harness.store
    await store.write([StateWrite("c-1", "", _state(T0), {CHECKS: T0 + 5}),
                       StateWrite("c-2", "", _state(T0, "c-2"), {CHECKS: T0 + 6})])
    first, second = await store.read(["c-1", "c-2"])
    # Another worker writes c-1 in between.
    assert await store.write([StateWrite("c-1", first.token, _state(T0 + 1),
                                         {CHECKS: T0 + 7})]) == []
    refused = await store.write([
        StateWrite("c-1", first.token, _state(T0 + 2), {CHECKS: None, DEFERRED: T0}),
        StateWrite("c-2", second.token, _state(T0 + 2, "c-2"), {CHECKS: T0 + 9})])
    assert refused == ["c-1"]
    c1, c2 = await store.read(["c-1", "c-2"])
    assert c1.state == stored_precision(_state(T0 + 1))
    assert c2.state == stored_precision(_state(T0 + 2, "c-2"))
    assert await store.due(CHECKS, 1e12, 10) == ["c-1", "c-2"]  # at T0 + 7 and T0 + 9
    assert await store.due(DEFERRED, 1e12, 10) == []
    # A write with the fresh token goes through.
    assert await store.write([StateWrite("c-1", c1.token, _state(T0 + 3), {})]) == []


async def test_a_retried_write_that_landed_is_no_conflict(harness: Harness) -> None:
    store = harness.store
    state = _state(T0)
    assert await store.write([StateWrite("c-1", "", state, {CHECKS: T0})]) == []
    # The same call again (its reply was lost): the stored state is its own.
    assert await store.write([StateWrite("c-1", "", state, {CHECKS: T0})]) == []
    assert await store.write([StateWrite("c-1", "", _state(T0 + 1), {})]) == ["c-1"]


async def test_schedules_list_due_customers_oldest_first(harness: Harness) -> None:
    store = harness.store
    writes = [StateWrite(f"c-{i}", "", ScoringState(last_activity=float(i)),
                         {CHECKS: T0 + (9 - i), DEFERRED: T0 - i}) for i in range(10)]
    assert await store.write(writes) == []
    assert await store.due(CHECKS, T0 + 4, 100) == ["c-9", "c-8", "c-7", "c-6", "c-5"]
    assert await store.due(CHECKS, T0 + 4, 2) == ["c-9", "c-8"]
    assert await store.due(CHECKS, T0 + 4, 2) == ["c-9", "c-8"]  # listing takes none out
    tokens = {r.customer_id: r.token for r in await store.read(["c-9", "c-5", "c-0"])}
    # A state-less write only moves schedule entries; removing an absent one is harmless.
    assert await store.write([
        StateWrite("c-9", tokens["c-9"], None, {CHECKS: T0 + 100}),
        StateWrite("c-5", tokens["c-5"], None, {CHECKS: None, "checks:7": None}),
        StateWrite("c-0", tokens["c-0"], None, {DEFERRED: None})]) == []
    assert await store.due(CHECKS, T0 + 4, 100) == ["c-8", "c-7", "c-6"]
    assert await store.due(CHECKS, T0 + 100, 100) == \
        ["c-8", "c-7", "c-6", "c-4", "c-3", "c-2", "c-1", "c-0", "c-9"]
    assert await store.due(DEFERRED, T0, 100) == [f"c-{i}" for i in range(9, 0, -1)]
    [nine] = await store.read(["c-9"])
    assert nine.state == ScoringState(last_activity=9.0)
    assert nine.token == tokens["c-9"]


async def test_a_state_without_a_profile_reads_as_such(harness: Harness) -> None:
    assert await harness.store.write([StateWrite("c-1", "", ScoringState(last_activity=1.0),
                                                 {})]) == []
    [record] = await harness.store.read(["c-1"])
    assert (record.profile, record.state) == (None, ScoringState(last_activity=1.0))
    profile = await harness.profile("c-1")
    [after] = await harness.store.read(["c-1"])
    assert (after.profile, after.state, after.token) == (profile, record.state, record.token)


# ---------------------------------------------------------------- Redis only


async def _evalsha_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_redis_writes_in_one_command_and_keeps_ttls(redis_client: aioredis.Redis) -> None:
    prefix = "ss-" + uuid.uuid4().hex[:10]
    store = RedisScoringStore(redis_client, prefix=prefix, ttl_s=3600)
    profiles = RedisProfileStore(redis_client, prefix=prefix, features=FeatureConfig(),
                                 profile_ttl_s=0)
    await profiles.apply_batch([_view("c-0", 0, T0)], now=WALL)  # a key with no TTL
    await store.write([])  # nothing to do: no command at all
    await store.write([StateWrite("c-w", "", ScoringState(), {})])  # load the script
    ids = [f"c-{n}" for n in range(2500)]  # more than one ZADD/ZREM chunk of the script
    before = await _evalsha_calls(redis_client)
    assert await store.write([StateWrite(cid, "", ScoringState(last_activity=float(n)),
                                         {CHECKS: n + 0.25}) for n, cid in enumerate(ids)]) == []
    assert await _evalsha_calls(redis_client) - before == 1
    assert len(await store.due(CHECKS, 1e12, 5000)) == 2500
    tokens = {r.customer_id: r.token for r in await store.read(ids)}
    assert await store.write([StateWrite(cid, tokens[cid], None, {CHECKS: None})
                              for cid in ids[:2000]]) == []
    assert await store.due(CHECKS, 1e12, 5000) == ids[2000:]
    assert await redis_client.ttl(keys.profile_key(prefix, "c-0")) == -1  # kept: none
    assert 3500 < await redis_client.ttl(keys.profile_key(prefix, "c-42")) <= 3600


async def test_redis_keeps_the_profile_byte_for_byte(redis_client: aioredis.Redis) -> None:
    prefix = "ss-" + uuid.uuid4().hex[:10]
    store = RedisScoringStore(redis_client, prefix=prefix, ttl_s=600)
    profiles = RedisProfileStore(redis_client, prefix=prefix, features=FeatureConfig(),
                                 profile_ttl_s=600)
    [first] = await profiles.apply_batch([_view("c-1", 0, T0)], now=WALL)
    key = keys.profile_key(prefix, "c-1")
    await redis_client.expire(key, 300)
    before = await redis_client.get(key)
    await store.write([StateWrite("c-1", "", _state(T0), {})])
    after = await redis_client.get(key)
    assert after[:len(before)] == before  # the tagged profile, then the state
    assert 250 < await redis_client.ttl(key) <= 300
    assert await profiles.get_state("c-1") == first.state
    # What apply_batch hands the scorer is what a read returns.
    [update] = await profiles.apply_batch([_view("c-1", 1, T0 + 60)], now=WALL)
    [record] = await store.read(["c-1"])
    assert update.scoring == record
