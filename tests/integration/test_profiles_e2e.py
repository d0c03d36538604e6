"""End to end: real broker, real Redis, a real worker process; profiles equal the reference."""

from __future__ import annotations

import asyncio
import base64
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from streamproc.adapters.redis_store import RedisProfileStore, make_client
from streamproc.core.events import REJECT_REASONS
from streamproc.core.features import FeatureConfig, ProfileView
from streamproc.core.generator import TrafficGenerator, batch_envelopes, inject_faults
from streamproc.runtime.embedded import RedisCluster, spawn_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings, to_env
from tests.integration.kafka_io import consume_all, produce, wait_until
from tests.reference import compare, reference_profiles

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[[Settings], object]]:
    procs = []

    def start(settings: Settings) -> object:
        proc = spawn_worker(to_env(settings), log_path=tmp_path / f"worker{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except Exception:
                proc.kill()


def _stream(customers: int, seed: int) -> tuple[list[tuple[str, str, object]], list[dict], int]:
    gen = TrafficGenerator(customers=customers, seed=seed, start=START, days=60)
    faulty = list(inject_faults(gen.events(), seed=seed, duplicate_rate=0.05,
                                shuffle_window=20, invalid_rate=0.02))
    valid = [e.value for e in faulty if e.invalid_reason is None]
    invalid = sum(1 for e in faulty if e.invalid_reason is not None)
    # Half as single events, half in tracker-style envelopes of up to 10.
    half = len(faulty) // 2
    records: list[tuple[str, str, object]] = [(e.topic, e.key, e.value) for e in faulty[:half]]
    records += list(batch_envelopes(faulty[half:], 10))
    return records, valid, invalid


async def _profiles(settings: Settings) -> dict[str, dict]:
    client = make_client(settings.redis)
    store = RedisProfileStore.from_settings(client, settings.redis, FeatureConfig())
    out = {}
    try:
        async for cid in store.customers():
            state = await store.get_state(cid)
            assert state is not None
            out[cid] = ProfileView(cid, float(state["la"]), state).to_dict()
    finally:
        await client.aclose()
    return out


@pytest.mark.parametrize("deployment", ["single", "cluster"])
async def test_worker_profiles_match_reference(make_settings, worker_factory, deployment: str,
                                               request: pytest.FixtureRequest) -> None:
    """Against one redis-server, then a three-master Redis Cluster: the same assertions."""
    if deployment == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        settings = make_settings(redis={"url": cluster.url, "cluster": True})
    else:
        settings = make_settings()
    await ensure_topics(settings)
    records, valid, invalid = _stream(customers=200, seed=7)
    garbage = [(settings.topics.clickstream, "c-garbage", b"\xff\xfe not json"),
               (settings.topics.purchases, "c-garbage", b'{"event_id": 1}')]
    topic_of = {"clickstream": settings.topics.clickstream,
                "purchases": settings.topics.purchases}
    to_send = [(topic_of.get(t, t), k, v) for t, k, v in records] + garbage
    worker_factory(settings)
    await produce(settings.kafka.bootstrap_servers, to_send)
    reference = reference_profiles(valid)
    assert len(valid) > 3000
    assert len(reference) >= 150

    async def all_there() -> bool:
        r = make_client(settings.redis)
        try:
            store = RedisProfileStore.from_settings(r, settings.redis, FeatureConfig())
            return len([c async for c in store.customers()]) >= len(reference)
        finally:
            await r.aclose()

    await wait_until(all_there, timeout=120, what="every customer's profile in Redis")

    differences: dict[str, list[str]] = {}

    async def settled() -> bool:
        got = await _profiles(settings)
        differences.clear()
        for cid in reference:
            if problems := compare(reference[cid], got.get(cid, {})):
                differences[cid] = problems
        return not differences

    try:
        await wait_until(settled, timeout=120, what="profiles to equal the reference")
    except AssertionError as exc:
        sample = dict(list(differences.items())[:3])
        raise AssertionError(f"{exc}: {len(differences)} customers differ, e.g. {sample}") from None
    # Read until the topic goes quiet, not until a count: late letters come on top of the
    # invalid ones, so a count can be reached before every partition was read.
    dead = await consume_all(settings.kafka.bootstrap_servers, settings.topics.dead_letter,
                             timeout=60, idle=3.0)
    letters = [orjson.loads(v) for _, v in dead]
    reasons = [d["reason"] for d in letters]
    assert set(reasons) <= REJECT_REASONS
    # Late events here are duplicates the bounded dedupe had forgotten: refused, never
    # counted (the profiles equal the reference), and every one is a valid event's copy.
    late = [orjson.loads(base64.b64decode(d["original"])) for d in letters
            if d["reason"] == "late_event"]
    valid_ids = {(v["customer_id"], v["event_id"]) for v in valid}
    assert all((e["customer_id"], e["event_id"]) in valid_ids for e in late), late[:3]
    assert len(dead) - len(late) == invalid + len(garbage), sorted(reasons)
    got = await _profiles(settings)
    assert set(got) == set(reference)

    # Producing the same events again changes nothing (idempotent by event_id).
    await produce(settings.kafka.bootstrap_servers, to_send)
    await asyncio.sleep(5)
    again = await _profiles(settings)
    problems = {c: compare(reference[c], again[c]) for c in reference}
    assert not any(problems.values()), {c: p for c, p in problems.items() if p}
