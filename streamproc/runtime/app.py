"""Faust wiring: the thinnest layer. Builds an app per call (no module singleton)."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry

from streamproc.adapters.deployment import DeploymentGuard
from streamproc.adapters.event_time import EventTimeWriter
from streamproc.adapters.model_store import ModelStore
from streamproc.adapters.redis_store import RedisProfileStore, RedisScoringStore, make_client
from streamproc.core.eventclock import InputProgress, PartitionClock, partition_clock
from streamproc.core.outputs import MAX_RECORD_BYTES
from streamproc.core.step import MAX_BATCH_SPAN_S
from streamproc.metrics import Metrics, Topics, create_metrics
from streamproc.runtime.catchup import CatchUpLimits, Collector
from streamproc.runtime.faust_sensor import setup_lean_prometheus_sensors
from streamproc.runtime.inflight import INFLIGHT_BATCHES, InFlight
from streamproc.runtime.kafka import (
    COMMIT_INTERVAL_S,
    HEARTBEATS_PER_SESSION,
    SHUTDOWN_TIMEOUT_S,
    FaustProducer,
    StreamprocApp,
    committed_offset,
    faust_credentials,
    group_consumed_before,
    waiting_behind,
)
from streamproc.runtime.pipeline import (
    IngestPipeline,
    PreparedBatch,
    RawMessage,
    Retrier,
    RetryingPublisher,
)
from streamproc.runtime.readiness import Readiness
from streamproc.runtime.scoring import ModelHolder, Scorer, iter_partitions
from streamproc.runtime.trainer import TrainerService
from streamproc.runtime.trainer_agent import TrainerAgent
from streamproc.settings import Settings

log = logging.getLogger(__name__)

#: The idle sweep (deferred activity, idle re-scoring, label expiry, stored watermarks)
#: runs this often: outputs that event time made due leave within a second, for one
#: Redis pass per owned partition.
SWEEP_INTERVAL_S = 1.0
#: The consumer-lag gauge is refreshed this often; alerts on it look at minutes.
LAG_REPORT_INTERVAL_S = 5.0


@dataclass
class Worker:
    """Everything one worker process holds, handy for tests and the CLI."""

    app: faust.App
    settings: Settings
    metrics: Metrics
    registry: CollectorRegistry
    pipeline: IngestPipeline
    scorer: Scorer
    trainer: TrainerService
    state: Readiness
    guard: DeploymentGuard


def _app(settings: Settings) -> faust.App:
    k = settings.kafka
    app = StreamprocApp(
        k.consumer_group,
        broker=[f"kafka://{server.strip()}" for server in k.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(k),
        topic_partitions=k.topic_partitions,
        topic_replication_factor=k.replication_factor,
        # Defaults of 60 s make a join take ~30 s and a rebalance 30-90 s on Tansu.
        broker_session_timeout=k.session_timeout_s,
        broker_heartbeat_interval=k.session_timeout_s / HEARTBEATS_PER_SESSION,
        broker_commit_interval=COMMIT_INTERVAL_S,
        consumer_auto_offset_reset="earliest",
        # acks=0 corrupts the client connection on Tansu; all is the safe default anyway.
        producer_acks=-1,
        # Dead letters are cut to fit this (core/outputs.py); Faust's default, said once.
        producer_max_request_size=MAX_RECORD_BYTES,
        web_enabled=settings.metrics.port > 0,
        web_port=settings.metrics.port or 6066,
        web_bind=settings.metrics.host,
        web_in_thread=False,
        store="memory://",
        # Faust wants a data directory even without tables; keep it out of the working dir.
        datadir=tempfile.mkdtemp(prefix="streamproc-faust-"),
        table_standby_replicas=0,
        # Offsets are acked by hand only after a batch's effects are durable, so shutdown need
        # not wait for an in-flight batch (which may be retrying an unreachable Redis forever):
        # it is simply re-delivered, and the event_id dedupe makes that harmless.
        stream_wait_empty=False,
    )
    app.fetch_max_wait_ms = k.fetch_max_wait_ms
    return app


def create_worker(settings: Settings, registry: CollectorRegistry | None = None) -> Worker:
    """Build a worker: Faust app, Redis store, pipeline, agents and health pages."""
    if settings.models.signing_key is None:
        raise ValueError("STREAMPROC_MODELS__SIGNING_KEY is required")
    registry = registry if registry is not None else CollectorRegistry()
    t = settings.topics
    metrics = create_metrics(registry, topics=Topics(
        t.clickstream, t.purchases,
        (t.segment_changes, t.churn_alerts, t.dead_letter, t.training_examples)))
    app = _app(settings)
    state = Readiness(metrics)

    def on_redis(ok: bool) -> None:
        if not ok:
            guard.suspect()  # it may come back empty: check the marker before going on
        state.on_redis(ok)

    client = make_client(settings.redis)
    guard = DeploymentGuard(client, settings.redis.key_prefix,
                            history=lambda: group_consumed_before(settings),
                            on_change=state.on_guard)
    store = RedisProfileStore.from_settings(
        client, settings.redis, settings.ingest.feature_config(), guard.marker)
    # Every Redis call of the agents and timers waits while the marker is not verified;
    # the guard's own checks go through a retrier of their own.
    retrier = Retrier(metrics, settings.redis.retry_max_backoff_s, on_redis, gate=guard)
    checks = Retrier(metrics, settings.redis.retry_max_backoff_s, on_redis)
    model_store = ModelStore(client, settings.redis.key_prefix,
                             settings.models.signing_key.get_secret_value().encode(),
                             guard.marker)
    models = ModelHolder(model_store, metrics, time.time, settings.models.churn_definition)
    # An accepted Redis holds none of the models in hand (the trainer finds its claim gone
    # at its next store and starts over by itself).
    guard.on_replaced = models.forget
    scorer = Scorer(settings, RedisScoringStore.from_settings(client, settings.redis,
                                                              guard.marker),
                    models, metrics, retrier)
    publisher = RetryingPublisher(FaustProducer(app), metrics, on_state=state.on_publish)
    pipeline = IngestPipeline(settings, store, publisher, metrics, retrier=retrier,
                              scoring=scorer)
    trainer = TrainerService(settings.models, model_store, metrics)
    worker = Worker(app, settings, metrics, registry, pipeline, scorer, trainer, state, guard)

    collector = _ingest_agent(worker)
    _trainer_agent(app, TrainerAgent(trainer, retrier, settings.topics.training_examples))
    scorer.clock_for = _clocks(worker, backlog_batches=INFLIGHT_BATCHES + 1 + collector.slots)
    _timers(worker, retrier, models, publisher, EventTimeWriter(client, settings.redis.key_prefix))

    if settings.metrics.port > 0:
        setup_lean_prometheus_sensors(app, pattern="/metrics", registry=registry,
                                      name_prefix="streamproc_faust")
        _health_pages(app, state)

    async def mark_started() -> None:
        async def check() -> None:
            await checks.call("deployment_check", guard.verify)

        await guard.watch(check, on_first=state.mark_started)

    app.task(mark_started)
    return worker


def _ingest_agent(worker: Worker) -> Collector:
    """Wire the ingest agent: decode each take, collect, stage batches in flight."""
    app, settings, pipeline = worker.app, worker.settings, worker.pipeline
    ingest = settings.ingest
    inputs = app.topic(settings.topics.clickstream, settings.topics.purchases,
                       key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    collector = Collector(
        CatchUpLimits(max_messages=ingest.batch_max_messages,
                      max_wait_s=ingest.catchup_max_wait_s,
                      max_span_s=MAX_BATCH_SPAN_S),
        waiting=lambda batch: waiting_behind(app.consumer, batch.marks), clock=pipeline.clock)

    @app.agent(inputs, name="ingest")
    async def ingest_agent(stream: Any) -> None:
        # noack_take hands us the events and leaves acking to us: offsets move only after
        # a batch's effects are in Redis and acknowledged by the broker. noack_take stops
        # collecting while this body runs, so the body only decodes; Redis, scoring and
        # publishing run in flight, overlapping the next batch's decode.
        inflight = InFlight(INFLIGHT_BATCHES)

        async def dispatch(batch: PreparedBatch, events: list[Any]) -> None:
            async def work() -> None:
                await (await pipeline.stage(batch))

            async def complete() -> None:
                pipeline.finish(batch)
                for event in events:
                    await stream.ack(event)

            await inflight.dispatch(work, complete)  # raises an earlier batch's failure

        try:
            async for events in stream.noack_take(ingest.batch_max_messages,
                                                  ingest.batch_within_s):
                for batch, taken in collector.add(pipeline.prepare(_raw_messages(events)),
                                                  events):
                    await dispatch(batch, taken)
        except Exception as exc:
            # Restarting the agent (Faust's default) would leave the batches it had taken
            # unacknowledged yet never redelivered, and later acks would commit past them.
            # Stopping the worker redelivers them to whoever consumes the partition next.
            log.critical("ingest failed (%s: %s); stopping the worker, its unacknowledged "
                         "batches will be redelivered", type(exc).__name__, exc)
            await app.crash(exc)
            raise
        finally:
            # Batches already staging may finish, within half the shutdown budget.
            await inflight.drain(SHUTDOWN_TIMEOUT_S / 2)

    return collector


def _trainer_agent(app: faust.App, agent: TrainerAgent) -> None:
    """Wire the trainer agent to its topic and to partition revocations."""
    training = app.topic(agent.topic, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")

    @app.agent(training, name="trainer")
    async def trainer_agent(stream: Any) -> None:
        await agent.run(stream)

    async def on_revoked(_app: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        agent.on_revoked(args[0] if args else set())

    app.on_partitions_revoked.connect(on_revoked)


def _clocks(worker: Worker, backlog_batches: int) -> Callable[[int], PartitionClock]:
    """Each partition's event-time clock, from its topics' watermarks and lag."""
    app, pipeline, topics = worker.app, worker.pipeline, worker.settings.topics
    lateness = worker.settings.ingest.allowed_lateness_s
    batch_max_messages = worker.settings.ingest.batch_max_messages
    gauge = worker.metrics.watermark_seconds

    def progress(partition: int) -> list[InputProgress]:
        out = []
        for topic in (topics.clickstream, topics.purchases):
            tp = TP(topic, partition)
            high = app.consumer.highwater(tp) if tp in app.consumer.assignment() else 0
            position = pipeline.positions.get((topic, partition), -1)
            lag = None if high is None else max(0, int(high) - position - 1)
            out.append(InputProgress(pipeline.watermarks.get((topic, partition)), lag))
        return out

    def clock_for(partition: int) -> PartitionClock:
        # Messages taken but not staged yet count as lag too: the in-flight batches, the
        # take buffer and, with catch-up batching, the batch collecting.
        clock = partition_clock(progress(partition), lateness,
                                backlog=backlog_batches * batch_max_messages)
        if clock.watermark > -math.inf:
            gauge.labels(str(partition)).set(clock.watermark)
        return clock

    return clock_for


def _timers(worker: Worker, retrier: Retrier, models: ModelHolder,
            publisher: RetryingPublisher, event_time: EventTimeWriter) -> None:
    """The periodic work: idle sweep and event time, model reload, lag gauge."""
    app, scorer, metrics = worker.app, worker.scorer, worker.metrics
    clickstream = worker.settings.topics.clickstream

    async def sweep_idle() -> None:
        # Deferred activity, idle re-scoring and label expiry follow event time per partition.
        # Each partition's watermark is then stored for readers (the API's "now").
        watermarks: dict[int, float] = {}
        for partition in sorted(iter_partitions(app.consumer.assignment(), clickstream)):
            watermarks[partition] = scorer.clock_for(partition).watermark
            await (await scorer.sweep(partition, publisher.send))
        await retrier.call("event_time", lambda: event_time.advance(watermarks))

    async def refresh_model() -> None:
        await retrier.call("load_model", models.refresh)

    async def report_lag() -> None:
        consumer: Any = app.consumer
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                lag = max(0, int(high) - int(committed_offset(consumer, tp) or 0))
                metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    app.timer(SWEEP_INTERVAL_S)(sweep_idle)
    app.timer(worker.settings.models.reload_interval_s)(refresh_model)
    app.timer(LAG_REPORT_INTERVAL_S)(report_lag)


def _raw_messages(events: Sequence[Any]) -> list[RawMessage]:
    out = []
    for event in events:
        m = event.message
        out.append(RawMessage(m.topic, m.partition, m.offset, m.key, m.value))
    return out


def _health_pages(app: faust.App, state: Readiness) -> None:
    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            return self.json(state.body(), status=200 if state.ready else 503)
