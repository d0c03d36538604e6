"""``streamproc demo``: broker, Redis, a worker and synthetic traffic on one machine, watched live.

Months of seeded persona traffic are replayed in minutes (event time is compressed), so
segments form, churn labels mature and alerts appear while you watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamproc.commands import CommandError, utc_now
from streamproc.commands.inspect import (
    SegmentSummary,
    TailRecord,
    format_record,
    report_row,
    summarize_segments,
    tail_outputs,
)
from streamproc.commands.replay import Pacer
from streamproc.core.generator import TrafficGenerator, batch_envelopes
from streamproc.settings import Settings

QUALITY_KEYS = ("roc_auc", "log_loss", "precision", "recall", "labels_seen")


@dataclass(frozen=True)
class DemoOptions:
    """What to simulate and for how long."""

    customers: int = 500
    days: float = 120.0
    rate: float = 2000.0
    seconds: float | None = None
    seed: int = 42
    batch_size: int = 20


@dataclass
class DemoState:
    """Everything the live view shows; updated by the producer, the poller and the tail."""

    total_events: int = 0
    produced_events: int = 0
    event_time: str = "-"
    latest_event: datetime | None = None  # newest event time produced: "now" for scoring
    traffic_done: bool = False
    applied_events: int = 0
    customers: int = 0
    dead_letters: int = 0
    segments: list[SegmentSummary] = field(default_factory=list)
    model_version: int | None = None
    churn_ready: bool = False
    quality: dict[str, float] = field(default_factory=dict)
    alerts: deque[TailRecord] = field(default_factory=lambda: deque(maxlen=6))
    changes: deque[TailRecord] = field(default_factory=lambda: deque(maxlen=6))
    alerts_total: int = 0
    changes_total: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=10))

    def sample(self, now: float) -> None:
        """Remember (time, applied) to compute the applied rate over the last few seconds."""
        self.samples.append((now, self.applied_events))

    @property
    def events_per_s(self) -> float:
        """Applied events per second over the sample window."""
        if len(self.samples) < 2:
            return 0.0
        (t0, a0), (t1, a1) = self.samples[0], self.samples[-1]
        return (a1 - a0) / (t1 - t0) if t1 > t0 else 0.0

    def add(self, record: TailRecord) -> None:
        """A record from the output topics."""
        if record.kind == "churn_alert":
            self.alerts.append(record)
            self.alerts_total += 1
        elif record.kind == "segment_changed":
            self.changes.append(record)
            self.changes_total += 1


def demo_settings(bootstrap: str, redis_url: str, signing_key: str) -> Settings:
    """Settings for a compressed-time demo: short churn horizon, frequent model versions."""
    return Settings(
        kafka={"bootstrap_servers": bootstrap, "consumer_group": "streamproc-demo",
               "topic_partitions": 2},
        redis={"url": redis_url, "key_prefix": "demo"},
        models={"signing_key": signing_key, "churn_horizon_days": 21.0,
                "min_labels_before_alerts": 300, "snapshot_every_examples": 500,
                "alert_cooldown_days": 7.0, "reload_interval_s": 1.0,
                # The demo replays months of generated history as if it were live.
                "history_lag_hours": 0.0},
        ingest={"allowed_lateness_s": 2 * 86_400.0},
        metrics={"port": 0},
    )


def make_traffic(opts: DemoOptions) -> TrafficGenerator:
    """Seeded personas over ``days`` of event time ending at the start of today (UTC)."""
    end = utc_now().replace(hour=0, minute=0, second=0, microsecond=0)
    return TrafficGenerator(customers=opts.customers, seed=opts.seed,
                            start=end - timedelta(days=opts.days), days=opts.days)


def _fmt_quality(state: DemoState) -> str:
    parts = []
    for key in QUALITY_KEYS:
        value = state.quality.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        parts.append(f"{key}={int(value)}" if key == "labels_seen" else f"{key}={value:.3f}")
    ready = "churn model ready" if state.churn_ready else "churn model warming up"
    return f"{', '.join(parts) or 'no quality yet'} ({ready})"


def render_plain(state: DemoState, elapsed: float) -> str:
    """One status line for logs and pipes."""
    segs = ", ".join(f"{s.name}={s.size}" for s in state.segments) or "-"
    return (f"[{elapsed:5.0f}s] produced={state.produced_events}/{state.total_events} "
            f"applied={state.applied_events} ({state.events_per_s:.0f}/s) "
            f"dead_letters={state.dead_letters} customers={state.customers} "
            f"model=v{state.model_version or 0} alerts={state.alerts_total} "
            f"segment_changes={state.changes_total} event_time={state.event_time} "
            f"segments: {segs}")


def render_live(state: DemoState, elapsed: float) -> Group:
    """The live terminal view."""
    head = Table.grid(padding=(0, 2))
    head.add_row("[bold]streamproc demo[/]", f"{elapsed:.0f}s",
                 "traffic done" if state.traffic_done else "producing",
                 f"event time {state.event_time}")
    stats = Table(show_header=False, box=None)
    stats.add_row("events/s (applied)", f"{state.events_per_s:,.0f}")
    stats.add_row("events produced", f"{state.produced_events:,} / {state.total_events:,}")
    stats.add_row("events applied", f"{state.applied_events:,}")
    stats.add_row("dead letters", f"{state.dead_letters:,}")
    stats.add_row("customers", f"{state.customers:,}")
    stats.add_row("model version", f"v{state.model_version or 0}")
    stats.add_row("churn model", _fmt_quality(state))
    segs = Table(title="segments", title_justify="left")
    for col in ("id", "name", "customers", "share"):
        segs.add_column(col)
    for s in state.segments:
        segs.add_row("-" if s.segment_id is None else str(s.segment_id), s.name, str(s.size),
                     f"{s.share:.0%}")
    alerts = Text("\n".join(format_record(r) for r in state.alerts) or "(none yet)",
                  no_wrap=True, overflow="ellipsis")
    changes = Text("\n".join(format_record(r) for r in state.changes) or "(none yet)",
                   no_wrap=True, overflow="ellipsis")
    return Group(head, stats, segs,
                 Text(f"recent churn alerts ({state.alerts_total} total)", style="bold"),
                 alerts,
                 Text(f"recent segment changes ({state.changes_total} total)", style="bold"),
                 changes, Text("Ctrl-C to stop", style="dim"))


def summary_lines(state: DemoState, elapsed: float, log_path: Path) -> list[str]:
    """The one-screen summary printed after everything stopped."""
    lines = [
        f"demo ran {elapsed:.0f}s: {state.produced_events} events produced, "
        f"events applied: {state.applied_events}, dead letters: {state.dead_letters}, "
        f"customers: {state.customers}",
        f"model version v{state.model_version or 0}: {_fmt_quality(state)}",
        f"churn alerts: {state.alerts_total}, segment changes: {state.changes_total}",
        "segments:",
        *(f"  {s.name:<24} {s.size:>6}  {s.share:6.1%}  "
          + ", ".join(f"{k}={v:.1f}" for k, v in s.medians.items())
          for s in state.segments),
    ]
    if state.alerts:
        lines.append("last churn alerts:")
        lines += [f"  {format_record(r)}" for r in list(state.alerts)[-3:]]
    lines.append(f"worker log: {log_path}")
    return lines


# --- the running parts -------------------------------------------------------------------------


def _event_time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(event["timestamp"]))


async def _produce(settings: Settings, gen: TrafficGenerator, opts: DemoOptions,
                   state: DemoState) -> None:
    from streamproc.runtime.kafka import aiokafka_security

    topics = {"clickstream": settings.topics.clickstream, "purchases": settings.topics.purchases}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all",
                                linger_ms=5, **aiokafka_security(settings.kafka))
    await producer.start()
    pacer = Pacer(opts.rate)
    pending: list[asyncio.Future[Any]] = []
    start = gen.start
    try:
        for topic, key, value in batch_envelopes(gen.events(), opts.batch_size, max_lag=300):
            events = value.get("events", [value])
            wait = pacer.delay(len(events))
            if wait > 0:
                await asyncio.sleep(wait)
            pending.append(await producer.send(topics[topic], orjson.dumps(value),
                                               key=key.encode()))
            state.produced_events += len(events)
            state.event_time = str(events[-1]["timestamp"])[:10]
            state.latest_event = max(state.latest_event or start, _event_time(events[-1]))
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        state.traffic_done = True
    finally:
        await producer.stop()


async def _poll(settings: Settings, state: DemoState, stop: asyncio.Event) -> None:
    from streamproc.api import AnalyticsReader
    from streamproc.runtime.kafka import aiokafka_security

    reader = AnalyticsReader(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers,
                                group_id=None, enable_auto_commit=False,
                                **aiokafka_security(settings.kafka))
    await consumer.start()
    dead: list[TopicPartition] = []
    last_segments = 0.0
    try:
        while not stop.is_set():
            ids = [c async for c in reader.profiles.customers()]
            states = await reader.profiles.get_states(ids)
            state.customers = sum(1 for s in states if s is not None)
            state.applied_events = int(sum(float((s or {}).get("ev", 0.0)) for s in states))
            state.sample(time.monotonic())
            if not dead:
                await consumer.topics()
                dead = [TopicPartition(settings.topics.dead_letter, p) for p in
                        sorted(consumer.partitions_for_topic(settings.topics.dead_letter) or ())]
                if dead:
                    consumer.assign(dead)
                    await consumer.seek_to_beginning(*dead)
            if dead:  # count records: Tansu's end offsets undercount batched topics
                batch = await consumer.getmany(timeout_ms=0)
                state.dead_letters += sum(len(records) for records in batch.values())
            bundle = await reader.bundle()
            if bundle is not None and bundle.version != state.model_version:
                state.model_version = bundle.version
                state.churn_ready = bundle.churn_ready
                state.quality = dict(bundle.quality)
            if state.latest_event is not None and time.monotonic() - last_segments >= 4.0:
                last_segments = time.monotonic()
                state.segments = summarize_segments(
                    [report_row(r) async for r in reader.all_customers(state.latest_event)])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        await consumer.stop()
        await reader.close()


async def _tail(settings: Settings, state: DemoState, stop: asyncio.Event) -> None:
    async for record in tail_outputs(settings, follow=True, from_beginning=True, last=0,
                                     stop=stop, idle_s=0.5):
        state.add(record)


async def _watch(settings: Settings, opts: DemoOptions, state: DemoState,
                 worker: subprocess.Popen[bytes], show: Callable[[float], None],
                 started: float) -> int | None:
    """Run producer, poller and tail until the time is up, Ctrl-C, or the worker dies.

    Returns the worker's exit code if it stopped on its own, else None.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    gen = make_traffic(opts)
    state.total_events = gen.count_estimate()
    tasks = [asyncio.create_task(_produce(settings, gen, opts, state)),
             asyncio.create_task(_poll(settings, state, stop)),
             asyncio.create_task(_tail(settings, state, stop))]
    exited: int | None = None
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - started
            show(elapsed)
            if opts.seconds is not None and elapsed >= opts.seconds:
                break
            if worker.poll() is not None:
                exited = worker.returncode
                break
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return exited


@contextlib.contextmanager
def _display(console: Console, state: DemoState) -> Iterator[Callable[[float], None]]:
    if console.is_terminal:
        with Live(render_live(state, 0.0), console=console, refresh_per_second=2,
                  transient=False) as live:
            yield lambda elapsed: live.update(render_live(state, elapsed))
        return
    last = [-math.inf]

    def show(elapsed: float) -> None:
        if elapsed - last[0] >= 5.0:
            last[0] = elapsed
            print(render_plain(state, elapsed), flush=True)

    yield show


def run_demo(opts: DemoOptions) -> int:
    """The ``demo`` command: start everything, watch, stop everything, summarise."""
    from streamproc.runtime.embedded import (
        ServiceError,
        spawn_worker,
        start_redis,
        start_tansu,
        stop_process,
    )
    from streamproc.runtime.kafka import ensure_topics
    from streamproc.settings import to_env

    if opts.customers < 1 or opts.days <= 0 or opts.rate <= 0:
        raise CommandError("--customers, --days and --rate must be positive", exit_code=2)
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="streamproc-demo-"))
    log_path = workdir / "worker.log"
    state = DemoState()
    stopped: list[str] = []
    started = time.monotonic()
    worker: subprocess.Popen[bytes] | None = None
    broker = redis = None
    exited: int | None = None
    try:
        try:
            broker = start_tansu()
            redis = start_redis()
        except ServiceError as exc:
            raise CommandError(f"cannot start the embedded services: {exc}") from None
        settings = demo_settings(f"127.0.0.1:{broker.port}",
                                 f"redis://127.0.0.1:{redis.port}/0",
                                 secrets.token_urlsafe(32))
        print(f"broker 127.0.0.1:{broker.port}, redis 127.0.0.1:{redis.port}, "
              f"worker log {log_path}; {opts.customers} customers over {opts.days:g} days "
              f"at {opts.rate:g} events/s", flush=True)
        asyncio.run(ensure_topics(settings))
        worker = spawn_worker(to_env(settings), log_path=log_path)
        started = time.monotonic()
        with _display(console, state) as show:
            exited = asyncio.run(_watch(settings, opts, state, worker, show, started))
    finally:
        elapsed = time.monotonic() - started
        if worker is not None:
            stop_process(worker)
            stopped.append("worker")
        if redis is not None:
            redis.stop()
            stopped.append("redis")
        if broker is not None:
            broker.stop()
            stopped.append("broker")
        if worker is not None:
            for line in summary_lines(state, elapsed, log_path):
                print(line)
        print(f"demo stopped: {', '.join(stopped) or 'nothing was running'}", flush=True)
    if exited is not None:
        raise CommandError(f"the worker exited with code {exited}; see {log_path}")
    return 0


__all__ = ["DemoOptions", "DemoState", "demo_settings", "render_live", "render_plain",
           "run_demo", "summary_lines"]
