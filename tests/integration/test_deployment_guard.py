"""The deployment marker on a real redis-server: who creates it, who adopts it, what it refuses.

A Redis that lost its data (flushed, restarted empty, replaced) must refuse every write
a worker makes under the marker it started with, inside the writing script itself, and
the guard must hold the worker's calls, say so once, and let it go on only when the
marker is back or an operator accepted the new Redis.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import ResponseError

from streamproc.adapters import keys
from streamproc.adapters.deployment import (
    DeploymentGuard,
    MarkerRecord,
    Status,
    accept_marker,
    is_refusal,
    read_marker,
)
from streamproc.adapters.model_store import ModelStore
from streamproc.adapters.redis_store import PreparedEvent, RedisProfileStore, RedisScoringStore
from streamproc.cli import main
from streamproc.core.features import FeatureConfig, event_lane, event_ops
from streamproc.core.replay import event_namespace
from streamproc.core.step import ScoringState
from streamproc.core.store import StateWrite, schedule_name
from streamproc.metrics import create_metrics
from streamproc.runtime.pipeline import Retrier
from streamproc.settings import Settings, to_env

pytestmark = pytest.mark.integration

LOG = "streamproc.adapters.deployment"


class History:
    """The Kafka-side fact the guard asks for, set by the test."""

    def __init__(self, consumed_before: bool = False) -> None:
        self.consumed_before = consumed_before
        self.asked = 0

    async def __call__(self) -> bool:
        self.asked += 1
        return self.consumed_before


class Guard:
    """A guard on a fresh prefix, recording its status changes."""

    def __init__(self, client: aioredis.Redis, prefix: str, history: History | None = None
                 ) -> None:
        self.history = history or History()
        self.changes: list[tuple[Status, str | None]] = []
        self.replaced = 0
        self.guard = DeploymentGuard(client, prefix, history=self.history,
                                     on_change=lambda s, r: self.changes.append((s, r)))
        self.guard.on_replaced = self._replaced

    def _replaced(self) -> None:
        self.replaced += 1

    async def verify(self) -> Status:
        await self.guard.verify()
        return self.guard.status


def _prefix() -> str:
    return "dg-" + uuid.uuid4().hex[:10]


def _view(cid: str, n: int) -> PreparedEvent:
    value = {"event_id": f"e-{cid}-{n}", "customer_id": cid, "event_type": "page_view",
             "session_id": f"s-{cid}"}
    ns = event_namespace(value)
    ts = 1_700_000_000.0 + n
    return PreparedEvent(cid, value["event_id"], ts, event_ops(ns, ts), event_lane(ns))


async def _keys(client: aioredis.Redis, prefix: str) -> list[bytes]:
    return sorted([k async for k in client.scan_iter(match=f"{prefix}:*")])


async def test_a_first_start_creates_the_marker_and_a_restart_adopts_it(
        redis_client: aioredis.Redis) -> None:
    prefix = _prefix()
    first = Guard(redis_client, prefix)
    assert await first.verify() == "ok"
    assert first.guard.is_open
    record = await read_marker(redis_client, prefix)
    assert record is not None
    assert record.origin == "first_start"
    assert first.changes == [("ok", None)]

    # A restart of the worker (a new process, nothing in memory) against the same Redis.
    again = Guard(redis_client, prefix, History(consumed_before=True))
    assert await again.verify() == "ok"
    assert again.guard.marker.value == first.guard.marker.value
    assert again.history.asked == 0  # the marker answered: Kafka was not asked
    assert await read_marker(redis_client, prefix) == record


async def test_two_workers_starting_together_share_one_marker(
        redis_client: aioredis.Redis) -> None:
    prefix = _prefix()
    guards = [Guard(redis_client, prefix) for _ in range(4)]
    await asyncio.gather(*(g.verify() for g in guards))
    assert {g.guard.status for g in guards} == {"ok"}
    assert len({g.guard.marker.value for g in guards}) == 1


async def test_guarded_writes_refuse_a_redis_without_the_marker(
        redis_client: aioredis.Redis) -> None:
    prefix = _prefix()
    g = Guard(redis_client, prefix)
    await g.verify()
    marker = g.guard.marker
    store = RedisProfileStore(redis_client, prefix=prefix, features=FeatureConfig(),
                              profile_ttl_s=0, marker=marker)
    models = ModelStore(redis_client, prefix, b"k", marker)
    scoring = RedisScoringStore(redis_client, prefix=prefix, ttl_s=0, marker=marker)
    (update,) = await store.apply_batch([_view("c-1", 1)])
    assert update.applied == [True]
    await models.claim("owner-1")
    assert await models.current_version() == 0

    await redis_client.delete(marker.key)  # what FLUSHALL does to it, the data left in place
    before = await _keys(redis_client, prefix)
    refused = [
        store.apply_batch([_view("c-1", 2), _view("c-2", 1)]),
        scoring.write([StateWrite("c-3", "", ScoringState(last_activity=1.0),
                                  {schedule_name("checks", 0): 1.0})]),
        models.claim("owner-2"),
        models.store_checkpoint({keys.model_key(prefix, "trainer"): b"x"}, "owner-1"),
        models.current_version(),
    ]
    for call in refused:
        with pytest.raises(ResponseError) as info:
            await call
        assert is_refusal(info.value), info.value
    assert await _keys(redis_client, prefix) == before  # nothing written, nothing created
    assert await store.get_state("c-2") is None

    # Another deployment's marker is refused the same way.
    other = MarkerRecord.new("first_start", 0.0).to_bytes()
    await redis_client.set(marker.key, other)
    with pytest.raises(ResponseError) as info:
        await store.apply_batch([_view("c-1", 3)])
    assert is_refusal(info.value)

    # A store without a marker (tools, tests) checks nothing.
    plain = RedisProfileStore(redis_client, prefix=prefix, features=FeatureConfig(),
                              profile_ttl_s=0)
    (update,) = await plain.apply_batch([_view("c-9", 1)])
    assert update.applied == [True]


async def test_a_lost_marker_is_reported_once_and_only_an_operator_or_a_restore_ends_it(
        redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    prefix = _prefix()
    g = Guard(redis_client, prefix)
    await g.verify()
    original = await redis_client.get(keys.deployment_key(prefix))

    await redis_client.delete(keys.deployment_key(prefix))
    with caplog.at_level(logging.INFO, logger=LOG):
        for _ in range(3):
            assert await g.verify() == "lost"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    text = errors[0].getMessage()
    assert f"{prefix}:deployment is gone" in text
    assert "streamproc deployment accept --yes" in text
    assert "restore Redis from a backup" in text
    assert not g.guard.is_open
    assert g.changes[-1][0] == "lost"
    assert await redis_client.get(keys.deployment_key(prefix)) is None  # not recreated

    # A worker starting meanwhile (nothing in memory) does not create a marker either when
    # the consumer group consumed before.
    fresh = Guard(redis_client, prefix, History(consumed_before=True))
    assert await fresh.verify() == "lost"
    assert "committed offsets" in (fresh.changes[-1][1] or "")
    assert await redis_client.get(keys.deployment_key(prefix)) is None

    # Restoring the backup brings the same marker back: both resume.
    await redis_client.set(keys.deployment_key(prefix), original)
    assert await g.verify() == "ok"
    assert await fresh.verify() == "ok"
    assert g.guard.is_open
    assert (g.replaced, fresh.replaced) == (0, 0)  # the same Redis: what they hold is valid

    # Replaced by another deployment's first start: lost again, one more error.
    caplog.clear()
    await redis_client.set(keys.deployment_key(prefix),
                           MarkerRecord.new("first_start", 0.0).to_bytes())
    with caplog.at_level(logging.ERROR, logger=LOG):
        assert await g.verify() == "lost"
        assert await g.verify() == "lost"
    assert len(caplog.records) == 1
    assert "another deployment's id" in caplog.records[0].getMessage()

    # The operator accepts this Redis: the worker adopts the new marker and goes on.
    old, new = await accept_marker(redis_client, prefix, 1_800_000_000.0)
    assert old is not None
    assert old.origin == "first_start"
    assert new.origin == "operator"
    assert await g.verify() == "ok"
    assert g.guard.marker.value == new.to_bytes()
    assert g.changes[-1] == ("ok", None)
    assert g.replaced == 1  # the worker drops what it held from the old Redis (models)


async def test_a_fresh_worker_holds_while_kafka_cannot_say_whether_it_consumed_before(
        redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    prefix = _prefix()

    async def unreachable() -> bool:
        raise ConnectionError("broker down")

    guard = DeploymentGuard(redis_client, prefix, history=unreachable)
    with caplog.at_level(logging.WARNING, logger=LOG):
        await guard.verify()
    assert guard.status == "unverified"
    assert not guard.is_open
    assert await redis_client.get(keys.deployment_key(prefix)) is None
    assert "holding until Kafka answers" in caplog.text


async def test_the_retrier_holds_a_refused_call_until_the_gate_opens(
        redis_client: aioredis.Redis) -> None:
    prefix = _prefix()
    g = Guard(redis_client, prefix)
    await g.verify()
    store = RedisProfileStore(redis_client, prefix=prefix, features=FeatureConfig(),
                              profile_ttl_s=0, marker=g.guard.marker)
    metrics = create_metrics(CollectorRegistry())
    retrier = Retrier(metrics, 0.01, gate=g.guard)
    await redis_client.delete(g.guard.marker.key)

    call = asyncio.create_task(retrier.call("apply_batch",
                                            lambda: store.apply_batch([_view("c-1", 1)])))
    await asyncio.sleep(0.3)
    assert not call.done()  # refused once, then held at the closed gate
    assert g.guard.status == "unverified"
    assert await g.verify() == "lost"
    await asyncio.sleep(0.2)
    assert not call.done()
    assert await _keys(redis_client, prefix) == []

    await accept_marker(redis_client, prefix, 1_800_000_000.0)
    assert await g.verify() == "ok"
    (update,) = await asyncio.wait_for(call, 5)
    assert update.applied == [True]
    assert metrics.redis_errors.labels("apply_batch")._value.get() == 0


async def test_the_watch_checks_at_once_when_suspected_and_outlives_a_failed_check(
        redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    guard = DeploymentGuard(redis_client, _prefix(), history=History())
    calls: list[int] = []
    started: list[int] = []

    async def check() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("a bug in a check")

    with caplog.at_level(logging.ERROR, logger=LOG):
        task = asyncio.create_task(guard.watch(check, on_first=lambda: started.append(1),
                                               interval_s=60))
        try:
            await asyncio.sleep(0.2)
            assert (len(calls), started) == (1, [1])  # at once, then started
            guard.suspect()
            await asyncio.sleep(0.2)
            assert len(calls) == 2  # a suspicion does not wait for the interval
            guard.suspect()
            await asyncio.sleep(0.2)
            assert len(calls) == 3  # the failed check did not end the watch
            assert started == [1]
        finally:
            task.cancel()
    assert "deployment marker check failed" in caplog.text


def test_the_deployment_command_shows_and_accepts_the_marker(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings()
    for name, value in to_env(settings).items():
        monkeypatch.setenv(name, value)
    prefix = settings.redis.key_prefix

    assert main(["deployment"]) == 0
    assert f"no deployment marker at {prefix}:deployment" in capsys.readouterr().out
    assert main(["deployment", "accept"]) == 2  # a deliberate act: --yes
    assert "add --yes" in capsys.readouterr().err
    assert main(["deployment", "accept", "--yes", "--json"]) == 0
    accepted = orjson.loads(capsys.readouterr().out)
    assert accepted["replaced"] is None
    assert accepted["marker"]["origin"] == "operator"
    assert main(["deployment", "status", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"key": f"{prefix}:deployment",
                                                     "marker": accepted["marker"]}
    assert main(["deployment", "accept", "--yes"]) == 0
    assert f"(replaced {accepted['marker']['id']})" in capsys.readouterr().out
