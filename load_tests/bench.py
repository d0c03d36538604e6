"""End-to-end benchmark: throughput, ceilings, latency, Redis memory and scaling in one run.

    python -m load_tests.bench [--quick] [--out load_tests/results/latest.json]

Starts its own Tansu broker and redis-server, pre-produces seeded persona traffic
to fresh topics (4 partitions) and measures, in the same run so ratios are fair:

* pipeline throughput at saturation: a real ``python -m streamproc worker`` reads the
  pre-produced topic; rate from the worker's ``streamproc_events_total`` (polled every
  100 ms) between the first poll that saw work and the first that saw all of it;
* ceilings on the same topic: a no-op Faust agent (load_tests/noop_agent.py, ``take``
  = the ingest agent's noack_take pattern, ``iterate`` = plain async for) and a raw
  aiokafka consumer that ``orjson.loads`` every message;
* latency at fixed loads: produce -> dead-letter arrival of deliberately invalid probe
  events mixed into valid traffic (the probe rides the full batch path: decode,
  validate, the batch's Redis Lua call, publish; see README);
* Redis memory per customer after each throughput run;
* scaling from one worker to two on the same topic.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from load_tests.stats import (
    RESULT_SCHEMA,
    Measured,
    cpu_seconds,
    first_to_last_rate,
    last_change,
    latency_summary,
    median,
    metric_sums,
    next_poll_s,
    ratio,
    steady_rate,
    target_row,
    validate_result,
)
from load_tests.traffic import Record, new_producer, prepare_messages, probe_record, send_records
from streamproc.adapters.keys import model_key
from streamproc.adapters.model_store import published_items
from streamproc.core.generator import TrafficGenerator, batch_envelopes
from streamproc.core.modelset import ModelBundle, Trainer
from streamproc.core.replay import Replay
from streamproc.runtime.embedded import (
    Service,
    free_port,
    spawn_worker,
    start_redis,
    start_tansu,
    stop_process,
)
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings, to_env

console = Console()
SIGNING_KEY = "bench-signing-key-not-a-secret"
POLL_S = 0.1
#: Longest wait between scrapes while the end of a run is still far (see next_poll_s).
SLOW_POLL_S = 1.0
#: a run whose counter has not moved for this long (after it started) is reported stalled
STALL_S = 30.0


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run."""

    shapes: tuple[int, ...]
    events: dict[int, int]  # events pre-produced per shape
    repeats: int
    noop_modes: tuple[str, ...]
    latency_rates: tuple[int, ...]
    latency_seconds: float
    latency_shapes: tuple[int, ...]
    probes_per_s: float
    scaling_shape: int
    scaling_repeats: int
    #: Redis memory once many customers are stored (0 customers: skipped); shape 10.
    memory_customers: int = 0
    memory_events: int = 0


QUICK = Plan(shapes=(1, 10, 50), events={1: 8000, 10: 40_000, 50: 100_000}, repeats=1,
             noop_modes=("take",), latency_rates=(500, 1000, 2000), latency_seconds=5.0,
             latency_shapes=(1,), probes_per_s=40.0, scaling_shape=10, scaling_repeats=1,
             memory_customers=5000, memory_events=150_000)
FULL = Plan(shapes=(1, 10, 50), events={1: 30_000, 10: 120_000, 50: 300_000}, repeats=3,
            noop_modes=("take", "iterate"), latency_rates=(500, 1000, 2000),
            latency_seconds=15.0, latency_shapes=(1, 10), probes_per_s=40.0,
            scaling_shape=10, scaling_repeats=3, memory_customers=20_000,
            memory_events=600_000)


# -- settings and processes ----------------------------------------------------------------


class Bench:
    """Holds the services, the run's scratch directory and the process bookkeeping."""

    def __init__(self, broker: Service, redis_svc: Service, workdir: Path,
                 profile_dir: Path | None) -> None:
        self.broker = broker
        self.redis_svc = redis_svc
        self.workdir = workdir
        self.profile_dir = profile_dir
        #: None = ``python -m streamproc worker``; else a module run instead (experiments)
        self.worker_module: str | None = None
        self.bootstrap = f"127.0.0.1:{broker.port}"
        self.redis_url = f"redis://127.0.0.1:{redis_svc.port}/0"
        self._n = itertools.count()
        #: A trained model every worker starts with (see warm_models); None = cold start.
        self.models: tuple[ModelBundle, Trainer] | None = None
        #: ``--set group.field=value`` overrides applied to every worker's settings.
        self.overrides: dict[str, dict[str, Any]] = {}

    def settings(self, topic_tag: str, *, outputs: str | None = None,
                 **groups: dict[str, Any]) -> Settings:
        """Settings with the tag's input topics, a fresh group and a fresh key prefix.

        Output topics are the run's own (``outputs`` names them when workers share
        a run): a worker's trainer reads its training topic from the start, so
        sharing it would make every repetition relearn the earlier ones' examples.
        """
        run = f"{next(self._n)}{uuid.uuid4().hex[:6]}"
        out = outputs or run
        base: dict[str, dict[str, Any]] = {
            "kafka": {"bootstrap_servers": self.bootstrap, "consumer_group": f"bench-{run}",
                      "topic_partitions": 4},
            "topics": {
                **{name: f"{name}-{topic_tag}" for name in ("clickstream", "purchases")},
                **{name: f"{name}-{topic_tag}-{out}" for name in (
                    "segment_changes", "churn_alerts", "priority_alerts", "lifecycle_changes",
                    "dead_letter", "training_examples")},
            },
            "redis": {"url": self.redis_url, "key_prefix": f"b{run}"},
            # Generated traffic of past days is published as if live: the bench measures
            # the whole work of news, outputs included.
            "models": {"signing_key": SIGNING_KEY, "history_lag_hours": 0.0},
            "metrics": {"port": free_port(), "host": "127.0.0.1"},
        }
        for group, values in [*self.overrides.items(), *groups.items()]:
            base.setdefault(group, {}).update(values)
        return Settings(**base)  # type: ignore[arg-type]

    def warm_up(self, seed: int) -> None:
        """Train the model every worker of this bench will start with (see warm_models)."""
        console.print("training the warm model (generator traffic, in memory)...")
        self.models = warm_models(self.settings("warm"), seed)

    def seed_models(self, settings: Settings) -> None:
        """Publish the warm model under the run's prefix unless a version is already there."""
        if self.models is None:
            return
        bundle, trainer = self.models
        prefix = settings.redis.key_prefix
        client = redis.Redis.from_url(self.redis_url)
        try:
            if not client.exists(model_key(prefix, "current")):
                client.mset(published_items(prefix, SIGNING_KEY.encode(), bundle, trainer,
                                            time.time()))
        finally:
            client.close()

    def spawn(self, settings: Settings, name: str) -> subprocess.Popen[bytes]:
        """A real worker process, logging to the scratch directory (warm model seeded first)."""
        self.seed_models(settings)
        if self.worker_module is None:
            return spawn_worker(to_env(settings), log_path=self.workdir / f"{name}.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
        env.update(to_env(settings))
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen([sys.executable, "-m", self.worker_module], env=env,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        finally:
            log.close()

    def spawn_noop(self, settings: Settings, mode: str, expect: int,
                   out: Path) -> subprocess.Popen[bytes]:
        """The counting Faust agent in its own process."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
        env.update(to_env(settings))
        log = open(self.workdir / f"{out.stem}.log", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "load_tests.noop_agent", "--mode", mode,
                 "--expect", str(expect), "--out", str(out)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()


def warm_models(settings: Settings, seed: int, customers: int = 200,
                days: float = 90.0) -> tuple[ModelBundle, Trainer]:
    """A trainer that learned ``days`` of generator traffic in event time, as in production.

    A deployment that has run for a while always scores with a model; a worker that
    starts cold skips segment and churn scoring until its trainer publishes a first
    version, and how soon that happens depends on how fast the trainer keeps up. Runs
    that start warm do the same scoring work whatever the code under test.
    """
    m = settings.models
    trainer = Trainer(n_segments=m.segments, seed=42, churn_threshold=m.churn_threshold,
                      min_labels=m.min_labels_before_alerts)
    replay = Replay(trainer, m.step_config(), m.snapshot_every_examples,
                    lateness_s=settings.ingest.allowed_lateness_s)
    gen = TrafficGenerator(customers=customers, seed=seed + 7,
                           start=datetime(2025, 9, 1, tzinfo=UTC), days=days)
    replay.feed_messages(batch_envelopes(gen.events(), 20, max_lag=300))
    return trainer.bundle(), trainer


# -- measurements --------------------------------------------------------------------------


async def produce_all(bench: Bench, settings: Settings, records: Sequence[Record]) -> float:
    """Create the topics and pre-produce every record flat out; returns events/s achieved."""
    await ensure_topics(settings)
    producer = new_producer(bench.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        stats = await send_records(producer, records, total_events=sum(r[3] for r in records),
                                   progress=sys.stdout.isatty())
    finally:
        await producer.stop()
    return stats.events_per_s


async def raw_consume(bootstrap: str, topics: Sequence[str], expect: int,
                      limit_s: float = 120.0) -> float | None:
    """Messages/s of a bare aiokafka consumer that decodes every value with orjson."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, fetch_max_wait_ms=50,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in topics
                 for p in (consumer.partitions_for_topic(t) or await _partitions(consumer, t))]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen, first, first_n, last = 0, 0.0, 0, 0.0
        deadline = time.monotonic() + limit_s
        while seen < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batch.values():
                for r in records:
                    orjson.loads(r.value)
                seen += len(records)
            if seen and not first:
                first, first_n = time.monotonic(), seen
            last = time.monotonic()
        if seen < expect or last <= first:
            return None
        return (seen - first_n) / (last - first)
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or {0}


async def noop_rate(bench: Bench, settings: Settings, mode: str, expect: int,
                    limit_s: float = 180.0) -> float | None:
    """Messages/s of the no-op Faust agent, from its own first/last timestamps."""
    out = bench.workdir / f"noop-{mode}-{settings.kafka.consumer_group}.json"
    proc = bench.spawn_noop(settings, mode, expect, out)
    try:
        deadline = time.monotonic() + limit_s
        while not out.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                console.print(f"[red]no-op agent ({mode}) failed; see {bench.workdir}")
                return None
            await asyncio.sleep(0.2)
        doc = json.loads(out.read_text())
        span = doc["last"] - doc["first"]
        return (doc["messages"] - 1) / span if span > 0 else None
    finally:
        stop_process(proc)


#: families read from the worker after each run, to say what the run exercised
RUN_METRICS = ("streamproc_events_total", "streamproc_segment_changes_total",
               "streamproc_churn_alerts_total", "streamproc_training_examples_total",
               "streamproc_model_version", "streamproc_dead_letters_total",
               "streamproc_batch_duration_seconds_count",
               "streamproc_batch_duration_seconds_sum",
               "streamproc_redis_roundtrip_seconds_count",
               "streamproc_redis_roundtrip_seconds_sum")


async def scrape(session: aiohttp.ClientSession, port: int) -> str | None:
    """A worker's /metrics text (None if it is not up yet)."""
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics",
                               timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


async def events_total(session: aiohttp.ClientSession, port: int) -> float | None:
    """Sum of ``streamproc_events_total`` on a worker's /metrics (None if not up yet)."""
    text = await scrape(session, port)
    if text is None:
        return None
    return metric_sums(text, ["streamproc_events_total"])["streamproc_events_total"]


async def pipeline_run(bench: Bench, settings_list: Sequence[Settings], expect: int,
                       name: str, *, limit_s: float = 300.0,
                       profile: bool = False) -> Run:
    """Run workers until they applied ``expect`` events; (time, events) samples of the sum.

    Also measures CPU use (share of one core) of the workers, Redis and the broker from
    the first sample that saw work to the last sample.
    """
    procs = [bench.spawn(s, f"{name}-w{i}") for i, s in enumerate(settings_list)]
    spy = None
    samples: list[tuple[float, float]] = []
    watched = {**{f"worker{i}": p.pid for i, p in enumerate(procs)},
               "redis": bench.redis_svc.proc.pid, "broker": bench.broker.proc.pid}
    cpu_start: dict[str, float] = {}
    cpu_end: dict[str, float] = {}
    final: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + limit_s
            while time.monotonic() < deadline:
                counts = [await events_total(session, s.metrics.port) for s in settings_list]
                now = time.monotonic()
                total = sum(c or 0.0 for c in counts)
                if total > 0:
                    if not samples:
                        cpu_start = _cpu(watched)
                    samples.append((now, total))
                    cpu_end = _cpu(watched)
                    if profile and spy is None and bench.profile_dir is not None:
                        # Only the saturated phase: imports and the group join are excluded.
                        spy = _start_spy(procs[0].pid, bench.profile_dir / f"{name}.txt")
                if total >= expect:
                    break
                if len(samples) > 1 and now - last_change(samples) > STALL_S:
                    console.print(f"[red]{name}: stalled at {total:.0f} of {expect} events "
                                  f"(no progress for {STALL_S:.0f} s); logs in {bench.workdir}")
                    final["stalled_at_events"] = total
                    break
                if any(p.poll() is not None for p in procs):
                    console.print(f"[red]worker exited; see {bench.workdir}")
                    break
                await asyncio.sleep(next_poll_s(samples, expect, fast=POLL_S,
                                                slow=SLOW_POLL_S))
            else:
                console.print(f"[red]{name}: timed out at {samples[-1:]} of {expect}")
            for s in settings_list:
                text = await scrape(session, s.metrics.port)
                for k, v in metric_sums(text or "", RUN_METRICS).items():
                    final[k.removeprefix("streamproc_")] = final.get(
                        k.removeprefix("streamproc_"), 0.0) + v
    finally:
        for p in procs:
            stop_process(p)
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
    span = samples[-1][0] - samples[0][0] if len(samples) > 1 else 0.0
    cpu = {k: round((cpu_end[k] - cpu_start[k]) / span, 2)
           for k in cpu_start if k in cpu_end and span > 0}
    return Run(samples, cpu, final)


@dataclass
class Run:
    """Counter samples of one pipeline run and CPU use (cores) per process during it."""

    samples: list[tuple[float, float]]
    cpu: dict[str, float]
    final_metrics: dict[str, float]

    def rate(self, expect: int) -> float | None:
        """First-to-last events/s, None when the run did not finish."""
        if not self.samples or self.samples[-1][1] < expect:
            return None
        return first_to_last_rate(self.samples)


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError, IndexError, ValueError):
            out[name] = cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), _TICKS)
    return out


def assignments(bench: Bench, name: str, workers: int) -> list[int]:
    """How often each worker of run ``name`` was assigned partitions (from its log)."""
    out = []
    for i in range(workers):
        log = bench.workdir / f"{name}-w{i}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        out.append(text.count("Setting newly assigned partitions"))
    return out


def _start_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy record (collapsed stacks) of ``pid`` until it exits.

    ``--gil``: only the thread holding the GIL is sampled. Without it, Faust's consumer
    thread waiting for the GIL (inside a socket write, say) counts as busy, and the
    shares add up to more than the one core the worker can use.
    """
    try:
        return subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw",
                                 "--rate", "100", "--nonblocking", "--gil", "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        console.print("[yellow]py-spy not installed; no profile")
        return None


async def redis_memory(url: str, prefix: str) -> dict[str, Any]:
    """Bytes per customer: customer keys alone (MEMORY USAGE) and every key of the prefix.

    A customer key holds the profile and the scoring state; ``scoring_state_*`` counts
    the separate state keys of earlier versions (none are written any more).
    """
    client = aioredis.Redis.from_url(url)
    # Model versions are shared by all customers, not per-customer memory.
    models = model_key(prefix, "").encode()
    try:
        profile_bytes: list[int] = []
        scoring_bytes: list[int] = []
        other = all_bytes = model_bytes = 0
        batch: list[bytes] = []

        async def flush() -> None:
            nonlocal other, all_bytes, model_bytes
            pipe = client.pipeline(transaction=False)
            for k in batch:
                pipe.memory_usage(k, samples=0)
            for k, used in zip(batch, await pipe.execute(), strict=True):
                size = int(used or 0)
                if k.startswith(models):
                    model_bytes += size
                    continue
                all_bytes += size
                if k.endswith(b":p"):
                    profile_bytes.append(size)
                elif k.endswith(b":s"):
                    scoring_bytes.append(size)
                else:
                    other += 1
            batch.clear()

        async for key in client.scan_iter(match=f"{prefix}:*", count=2000):
            batch.append(key)
            if len(batch) >= 1000:
                await flush()
        if batch:
            await flush()
        profiles = len(profile_bytes)
        info = await client.info("memory")
        return {
            "customers": profiles,
            "scoring_state_keys": len(scoring_bytes),
            "scoring_state_bytes_median": median(scoring_bytes) if scoring_bytes else None,
            # Watermarks and the per-partition idle-check sets (one entry per customer).
            "other_keys": other,
            "profile_bytes_median": median(profile_bytes),
            "profile_bytes_mean": round(sum(profile_bytes) / profiles, 1) if profiles else None,
            "profile_bytes_max": max(profile_bytes) if profile_bytes else None,
            "all_keys_bytes_per_customer": round(all_bytes / profiles, 1) if profiles else None,
            "model_keys_bytes": model_bytes,
            "used_memory": int(info["used_memory"]),
        }
    finally:
        await client.aclose()


async def used_memory(url: str) -> int:
    """INFO memory used_memory, after dropping everything from earlier scenarios."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.flushall()
        return int((await client.info("memory"))["used_memory"])
    finally:
        await client.aclose()


async def memory_per_customer(bench: Bench, settings: Settings, before: int,
                              events: int) -> dict[str, Any]:
    """``redis_memory`` of a finished run, with the ``used_memory`` growth per customer.

    ``before`` is ``used_memory`` right after the flush that started the run; the growth
    also holds what no key shows (the keyspace and expiry tables, the Lua script cache,
    client buffers), less the model keys, which all customers share.
    """
    mem = await redis_memory(bench.redis_url, settings.redis.key_prefix)
    grown = mem.pop("used_memory") - before - mem["model_keys_bytes"]
    mem["used_memory_delta_per_customer"] = (round(grown / mem["customers"], 1)
                                             if mem["customers"] else None)
    mem["events_per_customer"] = round(events / max(mem["customers"], 1), 1)
    return mem


# -- scenarios -----------------------------------------------------------------------------


async def memory_at_scale(bench: Bench, plan: Plan, seed: int) -> dict[str, Any]:
    """Redis memory per customer with many customers stored, through a real worker.

    The per-shape figures come from 1,000-2,000 customers, where fixed costs (script
    cache, client buffers, table sizes) weigh on ``used_memory``; here they are spread
    over ``plan.memory_customers`` customers, as in a deployment.
    """
    if not plan.memory_customers:
        return {}
    shape, n = 10, plan.memory_events
    tag = f"mem-{uuid.uuid4().hex[:6]}"
    settings = bench.settings(tag)
    records = prepare_messages(plan.memory_customers, n, shape, seed + 2,
                               {"clickstream": settings.topics.clickstream,
                                "purchases": settings.topics.purchases})
    console.print(f"[bold]memory at scale[/]: {n} events in {len(records)} messages, "
                  f"up to {plan.memory_customers} customers; producing...")
    await produce_all(bench, settings, records)
    before = await used_memory(bench.redis_url)
    result = await pipeline_run(bench, [settings], n, "memory-scale")
    mem = await memory_per_customer(bench, settings, before, n)
    mem["shape"] = shape
    mem["pipeline_events_per_s"] = result.rate(n)
    console.print(f"  {mem['customers']} customers, {mem['events_per_customer']} events each:"
                  f" {mem['all_keys_bytes_per_customer']} B/customer in keys, "
                  f"{mem['used_memory_delta_per_customer']} B of used_memory")
    return mem



def customers_for(shape: int, events: int) -> int:
    """Customers so that most envelopes of ``shape`` can fill (~4 envelopes per customer)."""
    return max(50, min(2000, events // (4 * shape)))


async def throughput(bench: Bench, plan: Plan, seed: int) -> tuple[dict[str, Any],
                                                                    dict[str, Any],
                                                                    dict[str, Any]]:
    """Per shape: pipeline, no-op and raw rates on one pre-produced topic; memory; scaling."""
    results: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    scaling: dict[str, Any] = {}
    for shape in plan.shapes:
        n = plan.events[shape]
        tag = f"s{shape}-{uuid.uuid4().hex[:6]}"
        base = bench.settings(tag)
        customers = customers_for(shape, n)
        records = prepare_messages(customers, n, shape, seed,
                                   {"clickstream": base.topics.clickstream,
                                    "purchases": base.topics.purchases})
        messages = len(records)
        console.print(f"[bold]shape {shape}[/]: {n} events in {messages} messages, "
                      f"{customers} customers; producing...")
        produce_rate = await produce_all(bench, base, records)
        pipeline, raw = Measured(), Measured()
        pipeline_steady = Measured()
        cpu_runs: list[dict[str, float]] = []
        noop = {mode: Measured() for mode in plan.noop_modes}
        topics = [base.topics.clickstream, base.topics.purchases]
        per_msg = n / messages
        for rep in range(plan.repeats):
            raw.add(_scale(await raw_consume(bench.bootstrap, topics, messages), per_msg))
            for mode in plan.noop_modes:
                rate = await noop_rate(bench, bench.settings(tag, metrics={"port": 0}), mode,
                                       messages)
                noop[mode].add(_scale(rate, per_msg))
            before = await used_memory(bench.redis_url)
            s = bench.settings(tag)
            result = await pipeline_run(bench, [s], n, f"pipeline-b{shape}-r{rep}",
                                        profile=rep == 0)
            pipeline.add(result.rate(n))
            pipeline_steady.add(steady_rate(result.samples))
            cpu_runs.append({**result.cpu, **result.final_metrics})
            if rep == 0:
                memory[str(shape)] = await memory_per_customer(bench, s, before, n)
            console.print(f"  rep {rep}: pipeline {pipeline.runs[-1]} ev/s, "
                          f"noop {[noop[m].runs[-1] for m in plan.noop_modes]}, "
                          f"raw {raw.runs[-1]}")
        entry: dict[str, Any] = {
            "events": n, "messages": messages, "events_per_message": round(per_msg, 2),
            "customers": customers, "produce_events_per_s": round(produce_rate, 1),
            "pipeline_events_per_s": pipeline.to_dict(),
            "pipeline_steady_events_per_s": pipeline_steady.to_dict(),
            "raw_events_per_s": raw.to_dict(),
            # Per pipeline run: cores used by each process during the measured window, and
            # the worker's counters at the end (what the run exercised: outputs, model).
            "pipeline_runs": cpu_runs,
        }
        for mode in plan.noop_modes:
            entry[f"noop_{mode}_events_per_s"] = noop[mode].to_dict()
        # Ratios of medians and median of per-repetition ratios (same repetition = same load).
        entry["ratio_to_raw"] = ratio(median(pipeline.runs), median(raw.runs))
        for mode in plan.noop_modes:
            entry[f"ratio_to_noop_{mode}"] = ratio(median(pipeline.runs),
                                                   median(noop[mode].runs))
            entry[f"ratio_to_noop_{mode}_per_rep"] = [
                ratio(p, q) for p, q in zip(pipeline.runs, noop[mode].runs, strict=True)]
        results[str(shape)] = entry

        if shape == plan.scaling_shape:
            scaling = await scale(bench, plan, tag, n, entry)
    return results, memory, scaling


def _scale(messages_per_s: float | None, events_per_message: float) -> float | None:
    return None if messages_per_s is None else messages_per_s * events_per_message


async def scale(bench: Bench, plan: Plan, tag: str, n: int,
                entry: dict[str, Any]) -> dict[str, Any]:
    """One worker versus two on the same pre-produced topic (4 partitions)."""
    one, two = Measured(), Measured()
    one_steady, two_steady = Measured(), Measured()
    rebalances: list[list[int]] = []
    cpu_runs: list[dict[str, float]] = []
    for rep in range(plan.scaling_repeats):
        for count, total, steady in ((1, one, one_steady), (2, two, two_steady)):
            await used_memory(bench.redis_url)
            group = f"scale-{uuid.uuid4().hex[:8]}"
            prefix = f"sc{uuid.uuid4().hex[:8]}"
            settings = [bench.settings(tag, outputs=group, kafka={"consumer_group": group},
                                       redis={"key_prefix": prefix}) for _ in range(count)]
            result = await pipeline_run(bench, settings, n, f"scale{count}-r{rep}")
            rebalances.append(assignments(bench, f"scale{count}-r{rep}", count))
            cpu_runs.append({**result.cpu, **result.final_metrics})
            total.add(result.rate(n))
            steady.add(steady_rate(result.samples))
            console.print(f"  scaling rep {rep}: {count} worker(s) {total.runs[-1]} ev/s "
                          f"(steady {steady.runs[-1]})")
    return {
        "shape": plan.scaling_shape, "events": n, "partitions": 4,
        "one_worker_events_per_s": one.to_dict(), "two_workers_events_per_s": two.to_dict(),
        "one_worker_steady_events_per_s": one_steady.to_dict(),
        "two_workers_steady_events_per_s": two_steady.to_dict(),
        "speedup": ratio(median(two.runs), median(one.runs)),
        "speedup_steady": ratio(median(two_steady.runs), median(one_steady.runs)),
        "cpus": os.cpu_count(),
        # Partition assignments each worker logged per run; > 1 means a rebalance inside
        # the measured window (the second worker joined after the first had started).
        "assignments_per_worker": rebalances,
        "runs": cpu_runs,
    }


async def latency(bench: Bench, plan: Plan, seed: int) -> dict[str, Any]:
    """produce -> dead-letter arrival of probes inside paced valid traffic, per load level."""
    levels: list[dict[str, Any]] = []
    for shape in plan.latency_shapes:
        tag = f"lat{shape}-{uuid.uuid4().hex[:6]}"
        settings = bench.settings(tag)
        await ensure_topics(settings)
        await used_memory(bench.redis_url)
        need = int(sum(plan.latency_rates) * plan.latency_seconds * 1.1) + 1000
        records = prepare_messages(customers_for(shape, need), need, shape, seed + 1,
                                   {"clickstream": settings.topics.clickstream,
                                    "purchases": settings.topics.purchases})
        source: Iterator[Record] = iter(records)
        worker = bench.spawn(settings, f"latency-b{shape}")
        consumer = AIOKafkaConsumer(bootstrap_servers=bench.bootstrap, group_id=None,
                                    enable_auto_commit=False, fetch_max_wait_ms=5)
        producer = new_producer(bench.bootstrap, acks="all", linger_ms=0)
        await consumer.start()
        await producer.start()
        try:
            dl = settings.topics.dead_letter
            parts = [TopicPartition(t, p) for t in (dl, settings.topics.segment_changes)
                     for p in (consumer.partitions_for_topic(t) or await _partitions(consumer,
                                                                                     t))]
            consumer.assign(parts)
            await consumer.seek_to_end(*parts)
            sent: dict[str, float] = {}
            arrived: dict[str, float] = {}
            reader = asyncio.create_task(_read_probes(consumer, dl, arrived))
            if not await _warm_up(producer, settings, sent, arrived):
                console.print("[red]latency: the worker never dead-lettered a warm-up probe")
                reader.cancel()
                continue
            for rate in plan.latency_rates:
                sent.clear()
                arrived.clear()
                before = await _batch_counts(settings.metrics.port)
                stats = await send_records(
                    producer, source, rate=rate, probe_topic=settings.topics.clickstream,
                    probes_per_s=plan.probes_per_s, on_probe=sent.__setitem__,
                    duration_s=plan.latency_seconds)
                for _ in range(200):  # up to 10 s for the last probes
                    if len(arrived.keys() & sent.keys()) >= len(sent):
                        break
                    await asyncio.sleep(0.05)
                dead = [k for k in sent if not _is_valid_probe(k)]
                lat = [arrived[k] - sent[k] for k in dead if k in arrived]
                seg = [arrived[k] - sent[k] for k in sent if _is_valid_probe(k) and k in arrived]
                row = {"shape": shape, "target_events_per_s": rate,
                       "achieved_events_per_s": round(stats.events_per_s, 1),
                       "seconds": round(stats.seconds, 2), "probes": len(dead),
                       "probes_lost": len(dead) - len(lat), **latency_summary(lat),
                       # New-customer probes: produce -> first segment_changed (needs a model
                       # version; before the trainer's first snapshot nothing is published).
                       "segment_probes": len(sent) - len(dead),
                       "segment_change": latency_summary(seg),
                       # How batching adapted to the load: events per staged batch.
                       "events_per_batch": _per_batch(before, await _batch_counts(
                           settings.metrics.port))}
                levels.append(row)
                console.print(f"  latency b{shape} @ {rate}/s: {row}")
                await asyncio.sleep(1.0)
            reader.cancel()
        finally:
            await producer.stop()
            await consumer.stop()
            stop_process(worker)
    return {"measured": "produce() call of an invalid probe event -> its dead letter consumed "
                        "(fetch_max_wait 5 ms) from the dead-letter topic; probes are "
                        f"{plan.probes_per_s:g}/s of the load (half of them valid first "
                        "events of new customers, timed to their segment_changed record), "
                        "single-event messages",
            "levels": levels}


BATCH_METRICS = ("streamproc_batch_events_count", "streamproc_batch_events_sum")


async def _batch_counts(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        return metric_sums(await scrape(session, port) or "", BATCH_METRICS)


def _per_batch(before: dict[str, float], after: dict[str, float]) -> float | None:
    batches = after.get(BATCH_METRICS[0], 0.0) - before.get(BATCH_METRICS[0], 0.0)
    events = after.get(BATCH_METRICS[1], 0.0) - before.get(BATCH_METRICS[1], 0.0)
    return round(events / batches, 1) if batches > 0 else None


async def _read_probes(consumer: AIOKafkaConsumer, dead_letter: str,
                       arrived: dict[str, float]) -> None:
    """Arrival times of probes: dead letters by event id, segment changes by customer id."""
    while True:
        batch = await consumer.getmany(timeout_ms=100)
        now = time.monotonic()
        for tp, records in batch.items():
            for r in records:
                doc = orjson.loads(r.value)
                if tp.topic == dead_letter:
                    pid = orjson.loads(base64.b64decode(doc["original"])).get("event_id")
                else:  # segment_changed of a new-customer probe: c-<probe id>
                    cid = doc.get("customer_id", "")
                    pid = cid[2:] if cid.startswith("c-probe-") else None
                if isinstance(pid, str):
                    arrived.setdefault(pid, now)


def _is_valid_probe(probe_id: str) -> bool:
    return probe_id.startswith("probe-") and int(probe_id.rsplit("-", 1)[1]) % 2 == 1


async def _warm_up(producer: Any, settings: Settings, sent: dict[str, float],
                   arrived: dict[str, float], limit_s: float = 90.0) -> bool:
    """Send probes until one comes back (the worker joined and is processing), then settle."""
    deadline = time.monotonic() + limit_s
    i = 0
    while time.monotonic() < deadline:
        pid = f"warm-{i}"
        topic, key, value, _ = probe_record(settings.topics.clickstream, pid)
        sent[pid] = time.monotonic()
        await producer.send_and_wait(topic, value, key=key)
        i += 1
        await asyncio.sleep(0.25)
        if arrived:
            await asyncio.sleep(2.0)
            return True
    return False


# -- report ------------------------------------------------------------------------------


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Where the project stands against its stated targets."""
    tp = doc["throughput"]
    rows = []
    b50 = tp.get("50", {}).get("pipeline_events_per_s", {}).get("median")
    rows.append(target_row("throughput, 50 events/message, 1 worker", ">= 25000 events/s",
                           b50, b50 is not None and b50 >= 25_000))
    r1 = tp.get("1", {}).get("ratio_to_noop_take")
    rows.append(target_row("1 event/message vs no-op Faust agent (noack_take)", ">= 0.6x",
                           r1, r1 is not None and r1 >= 0.6))
    p99 = next((lv.get("p99_ms") for lv in doc["latency"].get("levels", [])
                if lv["target_events_per_s"] == 1000 and lv["shape"] == 1), None)
    rows.append(target_row("p99 produce->output at 1000 events/s (dead-letter probe)",
                           "<= 200 ms", p99, p99 is not None and p99 <= 200))
    for shape, m in doc["memory"].items():
        keys = m.get("all_keys_bytes_per_customer")
        rows.append(target_row(
            f"Redis per customer, all keys (shape {shape}, "
            f"{_fmt(m.get('events_per_customer'))} events/customer)",
            "<= 1024 B", keys, keys is not None and keys <= 1024))
    mem = doc["memory"].get("1", {})
    total = mem.get("used_memory_delta_per_customer")
    rows.append(target_row(
        f"Redis per customer (used_memory delta, shape 1, {_fmt(mem.get('customers'))} "
        "customers: fixed costs not spread)", "<= 1024 B", total,
        total is not None and total <= 1024))
    at_scale = doc.get("memory_at_scale") or {}
    total = at_scale.get("used_memory_delta_per_customer")
    if total is not None:
        rows.append(target_row(
            f"Redis per customer at scale (used_memory delta, {_fmt(at_scale['customers'])} "
            f"customers, {_fmt(at_scale['events_per_customer'])} events each)",
            "<= 1024 B", total, total <= 1024))
    return rows


def print_report(doc: dict[str, Any]) -> None:
    """The result as rich tables."""
    t = Table(title="Throughput (events/s, median of runs)")
    for col in ("events/msg", "pipeline", "steady", "no-op take", "no-op iterate", "raw",
                "x no-op take", "x no-op iter", "x raw"):
        t.add_column(col, justify="right")
    for shape, e in doc["throughput"].items():
        t.add_row(f"{shape} ({e['events_per_message']})",
                  _fmt(e["pipeline_events_per_s"]["median"]),
                  _fmt(e["pipeline_steady_events_per_s"]["median"]),
                  _fmt(e.get("noop_take_events_per_s", {}).get("median")),
                  _fmt(e.get("noop_iterate_events_per_s", {}).get("median")),
                  _fmt(e["raw_events_per_s"]["median"]),
                  _fmt(e.get("ratio_to_noop_take")), _fmt(e.get("ratio_to_noop_iterate")),
                  _fmt(e.get("ratio_to_raw")))
    console.print(t)
    lt = Table(title="Latency produce -> dead letter (ms)")
    for col in ("shape", "target/s", "achieved/s", "probes", "lost", "p50", "p95", "p99",
                "max", "seg-change n", "seg p50", "seg p99"):
        lt.add_column(col, justify="right")
    for lv in doc["latency"].get("levels", []):
        seg = lv.get("segment_change", {})
        lt.add_row(str(lv["shape"]), str(lv["target_events_per_s"]),
                   _fmt(lv["achieved_events_per_s"]), str(lv["probes"]),
                   str(lv["probes_lost"]), _fmt(lv.get("p50_ms")), _fmt(lv.get("p95_ms")),
                   _fmt(lv.get("p99_ms")), _fmt(lv.get("max_ms")),
                   f"{seg.get('count', 0)}/{lv.get('segment_probes', 0)}",
                   _fmt(seg.get("p50_ms")), _fmt(seg.get("p99_ms")))
    console.print(lt)
    mt = Table(title="Redis memory")
    for col in ("shape", "customers", "events/cust", "customer key B (median)",
                "old state keys B (median)", "all keys B/cust", "used_memory delta B/cust"):
        mt.add_column(col, justify="right")
    for shape, m in doc["memory"].items():
        mt.add_row(shape, str(m["customers"]), _fmt(m["events_per_customer"]),
                   _fmt(m["profile_bytes_median"]), _fmt(m.get("scoring_state_bytes_median")),
                   _fmt(m["all_keys_bytes_per_customer"]),
                   _fmt(m["used_memory_delta_per_customer"]))
    console.print(mt)
    sc = doc["scaling"]
    if sc:
        console.print(f"Scaling (shape {sc['shape']}, 4 partitions, {sc['cpus']} CPUs): "
                      f"1 worker {_fmt(sc['one_worker_events_per_s']['median'])}, "
                      f"2 workers {_fmt(sc['two_workers_events_per_s']['median'])} ev/s "
                      f"-> x{_fmt(sc['speedup'])} (steady x{_fmt(sc['speedup_steady'])})")
    ms = doc.get("memory_at_scale")
    if ms:
        console.print(f"Redis memory at scale: {_fmt(ms['customers'])} customers, "
                      f"{_fmt(ms['events_per_customer'])} events each: customer key median "
                      f"{_fmt(ms['profile_bytes_median'])} B, all keys "
                      f"{_fmt(ms['all_keys_bytes_per_customer'])} B, used_memory "
                      f"{_fmt(ms['used_memory_delta_per_customer'])} B per customer")
    tt = Table(title="Targets")
    for col in ("target", "goal", "measured", "met"):
        tt.add_column(col)
    for row in doc["targets"]:
        tt.add_row(row["target"], row["goal"], _fmt(row["measured"]), str(row["met"]))
    console.print(tt)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    return str(value)


async def profile_only(args: argparse.Namespace) -> int:
    """Saturate one worker with ``--profile-events`` of one shape under py-spy; summarise."""
    from load_tests.flame import main as flame_main

    workdir = Path(tempfile.mkdtemp(prefix="streamproc-profile-"))
    profile_dir = Path(args.profile_dir) if args.profile_dir else workdir
    broker, redis_svc = start_tansu(), start_redis()
    try:
        bench = Bench(broker, redis_svc, workdir, profile_dir)
        if not args.cold_models:
            bench.warm_up(args.seed)
        shape, n = args.profile_shape, args.profile_events
        tag = f"prof{shape}-{uuid.uuid4().hex[:6]}"
        s = bench.settings(tag)
        records = prepare_messages(customers_for(shape, n), n, shape, args.seed,
                                   {"clickstream": s.topics.clickstream,
                                    "purchases": s.topics.purchases})
        await produce_all(bench, s, records)
        name = f"profile-b{shape}"
        result = await pipeline_run(bench, [s], n, name, profile=True)
        console.print(f"shape {shape}: {len(records)} messages, {result.rate(n)} events/s "
                      f"under py-spy (100 Hz); CPU cores used: {result.cpu}; "
                      f"{result.final_metrics}")
    finally:
        redis_svc.stop()
        broker.stop()
    return flame_main([str(profile_dir / f"{name}.txt")])


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the services, run every scenario, return the result document."""
    plan = QUICK if args.quick else FULL
    if args.repeats:
        plan = replace(plan, repeats=args.repeats, scaling_repeats=args.repeats)
    if args.shapes:
        # Scaling runs on its shape's topic, so it is skipped unless that shape is kept.
        plan = replace(plan, shapes=tuple(args.shapes),
                       latency_shapes=tuple(s for s in plan.latency_shapes if s in args.shapes))
    if args.skip_latency:
        plan = replace(plan, latency_shapes=())
    if args.skip_throughput:
        plan = replace(plan, shapes=())
    if 10 not in plan.shapes:
        # Memory at scale runs with the throughput scenarios, at shape 10.
        plan = replace(plan, memory_customers=0)
    workdir = Path(tempfile.mkdtemp(prefix="streamproc-bench-"))
    profile_dir = Path(args.profile_dir) if args.profile_dir else None
    started = datetime.fromtimestamp(time.time(), UTC)
    t0 = time.monotonic()
    broker = start_tansu()
    redis_svc = start_redis()
    try:
        bench = Bench(broker, redis_svc, workdir, profile_dir)
        bench.overrides = parse_overrides(args.set)
        if not args.cold_models:
            bench.warm_up(args.seed)
        tp, mem, scaling = await throughput(bench, plan, args.seed)
        lat = await latency(bench, plan, args.seed)
        at_scale = await memory_at_scale(bench, plan, args.seed)
    finally:
        redis_svc.stop()
        broker.stop()
    doc: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "name": Path(args.out).stem,
        "mode": "quick" if args.quick else "full",
        "started_at": started.isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - t0, 1),
        "code": _code_state(),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "load_avg_at_end": os.getloadavg(), "platform": platform.platform()},
        "config": {"plan": plan.__dict__, "seed": args.seed, "partitions": 4,
                   "overrides": bench.overrides,
                   "poll_s": POLL_S, "slow_poll_s": SLOW_POLL_S, "worker_logs": str(workdir)},
        "throughput": tp, "latency": lat, "memory": mem, "scaling": scaling,
        "memory_at_scale": at_scale,
    }
    if bench.models is not None:
        bundle = bench.models[0]
        doc["config"]["warm_model"] = {"version": bundle.version,
                                       "labels_seen": bundle.labels_seen,
                                       "churn_ready": bundle.churn_ready}
    doc["config"]["plan"] = {k: (v if not isinstance(v, dict) else {str(a): b
                                                                       for a, b in v.items()})
                             for k, v in plan.__dict__.items()}
    doc["targets"] = targets(doc)
    return doc


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["ingest.batch_max_events=500"]`` -> ``{"ingest": {"batch_max_events": "500"}}``.

    Values stay strings: the settings model parses them as it parses the environment.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        group, dot, fld = name.partition(".")
        if not (sep and dot and group and fld):
            raise SystemExit(f"--set {item!r}: expected GROUP.FIELD=VALUE")
        out.setdefault(group, {})[fld] = value
    return out


def _code_state() -> dict[str, Any]:
    """Commit and locally modified files: the worker measured is the working tree."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, check=False,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"head": git("rev-parse", "HEAD"),
            "modified": [line[3:] for line in git("status", "--porcelain").splitlines()
                         if line[3:].startswith("streamproc/")]}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m load_tests.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition (< 3 min)")
    p.add_argument("--out", default="load_tests/results/latest.json")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--repeats", type=int, default=0, help="override repetitions per figure")
    p.add_argument("--shapes", type=int, nargs="+", choices=(1, 10, 50),
                   help="only these events/message shapes (a focused run, not the full table)")
    p.add_argument("--skip-latency", action="store_true", help="throughput and memory only")
    p.add_argument("--skip-throughput", action="store_true",
                   help="latency only (no throughput, memory or scaling)")
    p.add_argument("--set", action="append", default=[], metavar="GROUP.FIELD=VALUE",
                   help="a worker setting for every run, e.g. ingest.catchup_max_wait_s=0")
    p.add_argument("--profile-dir", default=None,
                   help="py-spy the first pipeline run of each shape (collapsed stacks)")
    p.add_argument("--profile-shape", type=int, default=0,
                   help="only profile one worker on this shape (needs py-spy)")
    p.add_argument("--profile-events", type=int, default=200_000)
    p.add_argument("--cold-models", action="store_true",
                   help="start every worker without a model (default: a warm, trained one)")
    args = p.parse_args(argv)
    if args.profile_dir:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    if args.profile_shape:
        return asyncio.run(profile_only(args))
    doc = asyncio.run(run(args))
    problems = validate_result(doc)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print_report(doc)
    console.print(f"wrote {out} in {doc['wall_seconds']} s")
    if problems:
        console.print(f"[red]result shape problems: {problems}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
