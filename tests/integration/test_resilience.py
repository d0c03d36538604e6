"""Resilience: real worker processes killed, stalled, scaled out and stopped mid-stream.

Each test runs real ``python -m streamproc worker`` processes against the session Tansu
broker and a real redis-server, feeds a generator stream with duplicates and invalid
events, breaks something on purpose, and then requires every Redis profile to equal the
independent reference: nothing lost, nothing counted twice.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamproc.adapters.redis_store import RedisProfileStore, make_client
from streamproc.core.features import FeatureConfig, ProfileView
from streamproc.core.generator import GeneratedEvent, TrafficGenerator, inject_faults
from streamproc.runtime.embedded import free_port, redis_binary, spawn_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings, to_env
from tests.integration.kafka_io import consume_all, produce, wait_until
from tests.integration.metrics_io import metric_value
from tests.reference import compare, reference_profiles

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, tzinfo=UTC)
Record = tuple[str, str, Any]


# --- shared helpers (also imported by test_hostile_input and test_security) ----------------------


class Workers:
    """Worker processes started by one test; whatever is still alive is stopped afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log_paths: list[Path] = []

    def start(self, settings: Settings, **env_overrides: str) -> subprocess.Popen[bytes]:
        """Spawn ``python -m streamproc worker`` with the settings as STREAMPROC_* variables."""
        env = to_env(settings)
        env.update(env_overrides)
        log_path = self.tmp_path / f"worker{len(self.procs)}.log"
        proc = spawn_worker(env, log_path=log_path)
        self.procs.append(proc)
        self.log_paths.append(log_path)
        return proc

    def log(self, index: int) -> str:
        """Everything one worker wrote to stdout/stderr so far."""
        return self.log_paths[index].read_text(errors="replace")

    def all_logs(self) -> str:
        return "\n".join(self.log(i) for i in range(len(self.procs)))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Factory of real worker processes, stopped (SIGTERM, then SIGKILL) at teardown."""
    group = Workers(tmp_path)
    yield group
    group.close()


@dataclass
class Stream:
    """A generator stream as Kafka records plus what the reference needs."""

    records: list[Record]  # (topic name, key, value), one generator event per record
    valid: list[dict[str, Any]]  # valid event dicts, aligned with ``valid_upto``
    valid_upto: list[int]  # valid_upto[i] = number of valid events among records[:i]
    invalid: int
    duplicates: int

    def reference(self, upto: int | None = None) -> dict[str, dict[str, Any]]:
        """Reference profiles of the first ``upto`` records (all by default)."""
        n = len(self.records) if upto is None else upto
        return reference_profiles(self.valid[: self.valid_upto[n]])


def _really_invalid(event: GeneratedEvent) -> bool:
    """Whether a corrupted generator event breaks the published contract.

    ``inject_faults`` makes "total_mismatch" copies by adding 1.0 to the total, which the
    contract still accepts for totals above ~99 (1 % relative tolerance + 0.01): those
    copies are valid events with a fresh id and must count as such.
    """
    if event.invalid_reason != "total_mismatch":
        return event.invalid_reason is not None
    value = event.value
    items_sum = math.fsum(i["quantity"] * i["unit_price"] for i in value["items"])
    allowed = 0.01 * max(value["total"], items_sum) + 0.01
    return abs(value["total"] - items_sum) > allowed


def make_stream(settings: Settings, *, customers: int, seed: int, days: float) -> Stream:
    """Generator events with 5 % duplicates, shuffles and ~2 % invalid copies, one per record."""
    gen = TrafficGenerator(customers=customers, seed=seed, start=START, days=days)
    faulty = list(inject_faults(gen.events(), seed=seed, duplicate_rate=0.05,
                                shuffle_window=20, invalid_rate=0.02))
    topic_of = {"clickstream": settings.topics.clickstream,
                "purchases": settings.topics.purchases}
    records: list[Record] = []
    valid: list[dict[str, Any]] = []
    valid_upto = [0]
    invalid = 0
    seen: set[str] = set()
    duplicates = 0
    for event in faulty:
        records.append((topic_of[event.topic], event.key, event.value))
        if _really_invalid(event):
            invalid += 1
        else:
            valid.append(event.value)
            duplicates += event.value["event_id"] in seen
            seen.add(event.value["event_id"])
        valid_upto.append(len(valid))
    return Stream(records, valid, valid_upto, invalid, duplicates)


async def read_profiles(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every stored profile of this test's key prefix, as readable feature dicts."""
    client = make_client(settings.redis)
    store = RedisProfileStore.from_settings(client, settings.redis, FeatureConfig())
    out: dict[str, dict[str, Any]] = {}
    try:
        async for cid in store.customers():
            state = await store.get_state(cid)
            if state is not None:
                out[cid] = ProfileView(cid, float(state["la"]), state).to_dict()
    finally:
        await client.aclose()
    return out


def profile_problems(reference: Mapping[str, dict[str, Any]],
                     got: Mapping[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Per customer differences; an extra or missing customer is a difference too."""
    problems = {c: compare(reference[c], got[c]) if c in got else ["missing"]
                for c in reference}
    problems.update({c: ["unexpected customer"] for c in got if c not in reference})
    return {c: p for c, p in problems.items() if p}


async def wait_profiles(settings: Settings, reference: Mapping[str, dict[str, Any]], *,
                        timeout: float, what: str = "profiles to equal the reference") -> None:
    """Wait until Redis holds exactly the reference profiles; on timeout show the differences."""
    last: dict[str, list[str]] = {}

    async def settled() -> bool:
        nonlocal last
        last = profile_problems(reference, await read_profiles(settings))
        return not last

    try:
        await wait_until(settled, timeout=timeout, what=what, interval=0.5)
    except AssertionError as exc:
        sample = dict(list(last.items())[:5])
        raise AssertionError(f"{exc}; {len(last)} customers differ, e.g. {sample}") from None


async def applied_events(settings: Settings) -> int:
    """Distinct valid events applied so far: the sum of every profile's event counter."""
    client = make_client(settings.redis)
    store = RedisProfileStore.from_settings(client, settings.redis,
                                            settings.ingest.feature_config())
    try:
        n = 0
        async for cid in store.customers():
            state = await store.get_state(cid)
            n += int((state or {}).get("ev", 0))
        return n
    finally:
        await client.aclose()


async def check_dead_letters(settings: Settings, expected_unique: int, *,
                             timeout: float = 30.0) -> tuple[int, int]:
    """Wait for ``expected_unique`` distinct dead letters; returns (unique, re-emitted).

    A re-delivered input may be dead-lettered again. A dead letter is identified by its
    source coordinates (topic, partition, offset, batch index); a re-emitted copy must
    carry exactly the same original bytes, key and reason as the first one.
    """
    deadline = time.monotonic() + timeout
    while True:
        dead = await consume_all(settings.kafka.bootstrap_servers, settings.topics.dead_letter,
                                 idle=2.0, timeout=timeout)
        first: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for _, value in dead:
            d = orjson.loads(value)
            assert d["reason"], d
            if d["reason"] == "late_event":
                # A redelivered duplicate the bounded dedupe had forgotten: refused, not
                # counted (the profiles equal the reference). Not one of the invalid inputs.
                continue
            ident = (d["source_topic"], d["source_partition"], d["source_offset"],
                     d["batch_index"])
            body = (d["original"], d["key"], d["reason"])
            assert first.setdefault(ident, body) == body, f"re-emitted dead letter differs: {d}"
        if len(first) >= expected_unique or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert len(first) == expected_unique, (len(first), expected_unique)
    return len(first), len(dead) - len(first)


def check_outputs_idempotent(dead_or_outputs: Sequence[tuple[bytes | None, bytes]]) -> int:
    """Records sharing an ``id`` must agree on everything but ``emitted_at``; returns copies."""
    first: dict[str, dict[str, Any]] = {}
    copies = 0
    for _, value in dead_or_outputs:
        d = orjson.loads(value)
        d.pop("emitted_at", None)
        if d["id"] in first:
            copies += 1
            assert first[d["id"]] == d, f"re-emitted output differs from its first copy: {d}"
        else:
            first[d["id"]] = d
    return copies


async def check_scoring_outputs(settings: Settings) -> int:
    """Segment changes and churn alerts (if scoring runs) have no conflicting re-emissions."""
    copies = 0
    for topic in (settings.topics.segment_changes, settings.topics.churn_alerts):
        records = await consume_all(settings.kafka.bootstrap_servers, topic, idle=1.0,
                                    timeout=20)
        copies += check_outputs_idempotent(records)
    return copies


def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body) of a GET; connection errors give status 0."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (OSError, urllib.error.URLError):
        return 0, ""


async def probe(port: int) -> tuple[int, float | None]:
    """(/readyz status, streamproc_redis_up) once the worker has a view on Redis, else (0, None).

    Before it started (and before its first Redis call) a worker answers 503 with the gauge
    at its initial 0: that is "not known yet", not "Redis down", so it is not reported.
    """
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/readyz")
    health = orjson.loads(body) if status else {}
    if not (health.get("started") or health.get("redis") is False):
        return 0, None
    _, metrics = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
    return status, metric_value(metrics, "streamproc_redis_up")


async def events_seen(port: int) -> float:
    """streamproc_events_total of one worker (every outcome)."""
    _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
    return metric_value(body, "streamproc_events_total") or 0.0


def chunks(records: Sequence[Record], n: int) -> list[list[Record]]:
    size = math.ceil(len(records) / n)
    return [list(records[i:i + size]) for i in range(0, len(records), size)]


def alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def metrics_on(port: int) -> dict[str, Any]:
    return {"port": port, "host": "127.0.0.1"}


class OwnRedis:
    """A redis-server this test controls: fixed port and data dir, restartable, pausable."""

    def __init__(self, workdir: Path, *, password: str | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [str(redis_binary()), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--dir", str(self.workdir), "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"redis-server exited with {self.proc.returncode}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server did not listen on {self.port}")

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(15)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., OwnRedis]]:
    """Factory of dedicated redis-servers, stopped at teardown."""
    servers: list[OwnRedis] = []

    def start(password: str | None = None) -> OwnRedis:
        server = OwnRedis(tmp_path / f"redis{len(servers)}", password=password)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# --- tests ---------------------------------------------------------------------------------------


async def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(
        make_settings: Callable[..., Settings], workers: Workers) -> None:
    settings = make_settings()
    await ensure_topics(settings)
    stream = make_stream(settings, customers=200, seed=11, days=10)
    assert len(stream.records) > 5000
    assert stream.invalid > 100
    assert stream.duplicates > 200
    bootstrap = settings.kafka.bootstrap_servers
    parts = chunks(stream.records, 12)

    first = workers.start(settings)
    for part in parts[:5]:
        await produce(bootstrap, part)
        await asyncio.sleep(0.3)
    await wait_until(lambda: _more_than(settings, 500), timeout=60,
                     what="the first worker to show progress in Redis", interval=0.1)
    # Keep feeding while the kill lands, so the worker is busy with uncommitted batches.
    await produce(bootstrap, parts[5])
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    applied_at_kill = await applied_events(settings)
    assert 0 < applied_at_kill < len(set(e["event_id"] for e in stream.valid))

    for part in parts[6:]:
        await produce(bootstrap, part)
    second = workers.start(settings)
    await wait_profiles(settings, stream.reference(), timeout=90)
    _, reemitted = await check_dead_letters(settings, stream.invalid)
    await check_scoring_outputs(settings)
    assert alive(second)
    print(f"\ncrash: {len(stream.records)} records, {stream.invalid} invalid, "
          f"{applied_at_kill} applied at kill, {reemitted} dead letters re-emitted")


async def _more_than(settings: Settings, n: int) -> bool:
    return await applied_events(settings) > n


async def test_redis_stall_and_restart_stall_then_catch_up(
        make_settings: Callable[..., Settings], workers: Workers,
        own_redis: Callable[..., OwnRedis]) -> None:
    redis = own_redis()
    web = free_port()
    settings = make_settings(redis={"url": redis.url, "retry_max_backoff_s": 1.0},
                             metrics=metrics_on(web))
    await ensure_topics(settings)
    stream = make_stream(settings, customers=60, seed=21, days=10)
    bootstrap = settings.kafka.bootstrap_servers
    a, b, c = chunks(stream.records, 3)
    worker = workers.start(settings)

    await produce(bootstrap, a)
    await wait_profiles(settings, stream.reference(len(a)), timeout=60,
                        what="phase A profiles")
    assert await probe(web) == (200, 1.0)

    # Stall: Redis keeps its sockets but answers nothing for ~10 s while events arrive.
    redis.pause()
    try:
        await produce(bootstrap, b)
        stalled_at = time.monotonic()
        while time.monotonic() - stalled_at < 10:
            assert alive(worker), workers.log(0)[-3000:]
            await asyncio.sleep(0.5)
    finally:
        redis.resume()
    await wait_profiles(settings, stream.reference(len(a) + len(b)), timeout=60,
                        what="phase B profiles after the stall")

    # Outage: Redis is stopped (AOF flushed), events keep arriving, the worker reports it.
    redis.stop()
    await produce(bootstrap, c)
    down: list[tuple[int, float | None]] = []

    async def reported_down() -> bool:
        down.append(await probe(web))
        return down[-1] == (503, 0.0)

    await wait_until(reported_down, timeout=30, what=f"readyz 503 and redis_up 0 ({down[-3:]})")
    await asyncio.sleep(3)
    assert alive(worker), workers.log(0)[-3000:]
    assert await probe(web) == (503, 0.0)

    redis.start()  # same port, same --dir: the append-only file brings the data back
    await wait_until(lambda: _probe_is(web, (200, 1.0)), timeout=30,
                     what="readyz 200 and redis_up 1 after the restart")
    await wait_profiles(settings, stream.reference(), timeout=60, what="final profiles")
    await check_dead_letters(settings, stream.invalid)
    assert alive(worker)
    assert "Traceback" not in workers.log(0), workers.log(0)[-3000:]


async def _probe_is(port: int, want: tuple[int, float]) -> bool:
    return await probe(port) == want


async def test_scale_out_survivor_takes_over_killed_workers_partitions(
        make_settings: Callable[..., Settings], workers: Workers) -> None:
    web1, web2 = free_port(), free_port()
    settings = make_settings(kafka={"topic_partitions": 4}, metrics=metrics_on(web1))
    await ensure_topics(settings)
    stream = make_stream(settings, customers=200, seed=31, days=8)
    bootstrap = settings.kafka.bootstrap_servers
    parts = chunks(stream.records, 10)

    survivor = workers.start(settings)
    victim = workers.start(settings, STREAMPROC_METRICS__PORT=str(web2))
    sent = 0
    for part in parts:
        await produce(bootstrap, part)
        sent += 1
        if await events_seen(web1) > 0 and await events_seen(web2) > 0:
            break
        await asyncio.sleep(0.5)
    await wait_until(lambda: _both_busy(web1, web2), timeout=45,
                     what="both workers to process events (partitions shared)")
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL
    for part in parts[sent:]:
        await produce(bootstrap, part)
    await wait_profiles(settings, stream.reference(), timeout=90)
    await check_dead_letters(settings, stream.invalid)
    assert alive(survivor)


async def _both_busy(web1: int, web2: int) -> bool:
    return await events_seen(web1) > 0 and await events_seen(web2) > 0


async def test_sigterm_exits_zero_promptly_and_a_new_worker_finishes(
        make_settings: Callable[..., Settings], workers: Workers) -> None:
    settings = make_settings()
    await ensure_topics(settings)
    stream = make_stream(settings, customers=150, seed=41, days=10)
    bootstrap = settings.kafka.bootstrap_servers
    parts = chunks(stream.records, 10)

    first = workers.start(settings)
    for part in parts[:4]:
        await produce(bootstrap, part)
        await asyncio.sleep(0.3)
    await wait_until(lambda: _more_than(settings, 300), timeout=60,
                     what="the first worker to show progress in Redis", interval=0.1)
    await produce(bootstrap, parts[4])
    stopping = time.monotonic()
    first.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(first.wait, 30)
    took = time.monotonic() - stopping
    assert code == 0, workers.log(0)[-3000:]
    assert took < 30

    for part in parts[5:]:
        await produce(bootstrap, part)
    workers.start(settings)
    await wait_profiles(settings, stream.reference(), timeout=90)
    _, reemitted = await check_dead_letters(settings, stream.invalid)
    print(f"\nsigterm: exit 0 after {took:.1f}s, {reemitted} dead letters re-emitted")


async def test_sigterm_during_a_redis_outage_exits_promptly_and_loses_nothing(
        make_settings: Callable[..., Settings], workers: Workers,
        own_redis: Callable[..., OwnRedis]) -> None:
    redis = own_redis()
    settings = make_settings(redis={"url": redis.url, "retry_max_backoff_s": 1.0})
    await ensure_topics(settings)
    stream = make_stream(settings, customers=40, seed=61, days=10)
    bootstrap = settings.kafka.bootstrap_servers
    a, b = chunks(stream.records, 2)
    first = workers.start(settings)
    await produce(bootstrap, a)
    await wait_profiles(settings, stream.reference(len(a)), timeout=60, what="first half")

    redis.stop()
    await produce(bootstrap, b)
    await wait_until(lambda: _logged(workers, 0, "retrying"), timeout=30,
                     what="the worker to be retrying Redis")
    stopping = time.monotonic()
    first.send_signal(signal.SIGTERM)
    try:
        code: int | None = await asyncio.to_thread(first.wait, 30)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - stopping
    redis.start()  # whatever happened, the rest of the stream must still arrive in full
    if code is None:
        await asyncio.to_thread(first.wait, 60)
    workers.start(settings)
    await wait_profiles(settings, stream.reference(), timeout=90)
    assert code == 0, f"no exit {took:.0f}s after SIGTERM during a Redis outage"
    assert took < 30


async def _logged(workers: Workers, index: int, text: str) -> bool:
    return text in workers.log(index)
