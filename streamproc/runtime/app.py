"""Faust wiring: the thinnest layer. Builds an app per call (no module singleton)."""

from __future__ import annotations

import asyncio
import logging
import math
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry

from streamproc.adapters.deployment import DeploymentGuard, Status
from streamproc.adapters.event_time import EventTimeWriter
from streamproc.adapters.model_store import ModelStore
from streamproc.adapters.redis_store import RedisProfileStore, RedisScoringStore, make_client
from streamproc.core.eventclock import (
    InputProgress,
    PartitionClock,
    partition_clock,
)
from streamproc.core.outputs import MAX_RECORD_BYTES
from streamproc.core.step import MAX_BATCH_SPAN_S
from streamproc.metrics import Metrics, create_metrics
from streamproc.runtime.faust_sensor import setup_lean_prometheus_sensors
from streamproc.runtime.inflight import InFlight
from streamproc.runtime.kafka import (
    FaustProducer,
    StreamprocApp,
    faust_credentials,
    group_consumed_before,
)
from streamproc.runtime.pipeline import (
    IngestPipeline,
    PreparedBatch,
    RawMessage,
    Retrier,
    RetryingPublisher,
    keep_collecting,
)
from streamproc.runtime.scoring import ModelHolder, Scorer, iter_partitions
from streamproc.runtime.trainer import TrainerService
from streamproc.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    """Mutable health flags read by /readyz and the metrics."""

    started: bool = False
    redis_ok: bool = True
    publish_ok: bool = True  # no output record waiting to be sent again
    batches: int = 0
    #: The deployment marker check (adapters.deployment): "lost" holds every Redis call.
    redis_state: Status = "unverified"
    redis_state_reason: str | None = None

    @property
    def ready(self) -> bool:
        """Ready = started, Redis answering and still the Redis this deployment wrote to,
        and outputs acknowledged by the broker."""
        return (self.started and self.redis_ok and self.redis_state == "ok"
                and self.publish_ok)


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
    state: WorkerState
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
        broker_heartbeat_interval=k.heartbeat_interval_s,
        broker_commit_interval=k.commit_interval_s,
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
    app.shutdown_timeout_s = settings.ingest.shutdown_timeout_s
    return app


def create_worker(settings: Settings, registry: CollectorRegistry | None = None) -> Worker:
    """Build a worker: Faust app, Redis store, pipeline, agents and health pages."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = create_metrics(registry)
    app = _app(settings)
    state = WorkerState()

    def on_redis(ok: bool) -> None:
        state.redis_ok = ok
        if not ok:
            guard.suspect()  # it may come back empty: check the marker before going on
        metrics.ready.set(1 if state.ready else 0)

    def on_guard(status: Status, reason: str | None) -> None:
        state.redis_state, state.redis_state_reason = status, reason
        metrics.redis_state_lost.set(1 if status == "lost" else 0)
        metrics.ready.set(1 if state.ready else 0)

    def on_publish(ok: bool) -> None:
        state.publish_ok = ok
        metrics.ready.set(1 if state.ready else 0)

    client = make_client(settings.redis)
    guard = DeploymentGuard(client, settings.redis.key_prefix,
                            history=lambda: group_consumed_before(settings), on_change=on_guard)
    store = RedisProfileStore.from_settings(
        client, settings.redis, settings.ingest.feature_config(), guard.marker)
    # Every Redis call of the agents and timers waits while the marker is not verified;
    # the guard's own checks go through a retrier of their own.
    retrier = Retrier(metrics, settings.redis.retry_max_backoff_s, on_redis, gate=guard)
    checks = Retrier(metrics, settings.redis.retry_max_backoff_s, on_redis)
    if settings.models.signing_key is None:
        raise ValueError("STREAMPROC_MODELS__SIGNING_KEY is required")
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
    publisher = RetryingPublisher(FaustProducer(app), metrics, on_state=on_publish)
    pipeline = IngestPipeline(settings, store, publisher, metrics, retrier=retrier,
                              scoring=scorer)
    trainer = TrainerService(settings.models, model_store, metrics)
    worker = Worker(app, settings, metrics, registry, pipeline, scorer, trainer, state, guard)

    inputs = app.topic(settings.topics.clickstream, settings.topics.purchases,
                       key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    ingest = settings.ingest
    catch_up = ingest.catchup_max_wait_s > 0

    @app.agent(inputs, name="ingest")
    async def ingest_agent(stream: Any) -> None:
        # noack_take hands us the events and leaves acking to us: offsets move only after
        # a batch's effects are in Redis and acknowledged by the broker. noack_take stops
        # collecting while this body runs, so the body only decodes; Redis, scoring and
        # publishing run in flight, overlapping the next batch's decode.
        inflight = InFlight(ingest.inflight_batches)

        async def dispatch(batch: PreparedBatch, events: list[Any]) -> None:
            async def work() -> None:
                await (await pipeline.stage(batch))

            async def complete() -> None:
                pipeline.finish(batch)
                for event in events:
                    await stream.ack(event)
                state.batches += 1

            await inflight.dispatch(work, complete)  # raises an earlier batch's failure

        # A batch still collecting (catch-up batching, pipeline.keep_collecting); a stop
        # leaves it unacknowledged, so it is redelivered.
        held: PreparedBatch | None = None
        held_events: list[Any] = []
        try:
            async for events in stream.noack_take(ingest.batch_max_messages,
                                                  ingest.batch_within_s):
                part = pipeline.prepare(_raw_messages(events))
                if held is not None and len(held_events) + len(events) > \
                        ingest.batch_max_messages:
                    await dispatch(held, held_events)
                    held = None
                if held is None:
                    held, held_events = part, list(events)
                else:
                    held.absorb(part)
                    held_events += events
                # With catch-up off no take waits, so no lag is looked up.
                if catch_up and keep_collecting(messages=len(held_events),
                                                events=len(held.events),
                                                waiting=waiting_behind(held),
                                                collecting_s=pipeline.clock() - held.received,
                                                span_s=held.event_span_s(),
                                                max_messages=ingest.batch_max_messages,
                                                max_events=ingest.batch_max_events,
                                                max_wait_s=ingest.catchup_max_wait_s,
                                                max_span_s=MAX_BATCH_SPAN_S):
                    continue
                await dispatch(held, held_events)
                held, held_events = None, []
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
            await inflight.drain(ingest.shutdown_timeout_s / 2)

    def waiting_behind(batch: PreparedBatch) -> int:
        # Messages already in Kafka behind the batch's last offsets (its partitions' lag).
        consumer: Any = app.consumer
        waiting = 0
        for (topic, partition), (_, offset) in batch.marks.items():
            high = consumer.highwater(TP(topic, partition))
            if high is not None:
                waiting += max(0, int(high) - offset - 1)
        return waiting

    training = app.topic(settings.topics.training_examples, key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw")

    revokes = [0]  # revocations of the training partition (forget_trainer), for the agent

    @app.agent(training, name="trainer")
    async def trainer_agent(stream: Any) -> None:
        # One partition, so one trainer in the group. A record is acked only once a stored
        # trainer state holds all of it; until then it waits here, and a crash or a stop
        # redelivers it (the trainer skips what it already learned). Only the Redis calls
        # are retried, so a retry never relearns.
        # A rebalance releases the trainer (forget_trainer) and Faust then sends every
        # unacked record again from the committed offset: records held from before it
        # are dropped unacked (the partition may be another worker's now), and a take
        # that a release made stale stops learning.
        topic = settings.topics.training_examples
        pending: deque[Any] = deque()
        seen_revokes = revokes[0]
        async for events in stream.noack_take(1000, 0.5):
            generation = trainer.generation
            await retrier.call("train", lambda: trainer.load(topic))
            for event in events:
                if trainer.generation != generation or trainer.trainer is None:
                    break
                trainer.learn([(event.message.offset, event.message.value)])
                pending.append(event)
                # A record holds up to 500 examples: let the ingest agent run between.
                await asyncio.sleep(0)
            await retrier.call("train", trainer.flush)
            if revokes[0] != seen_revokes:
                seen_revokes = revokes[0]
                pending.clear()
                continue
            for _ in range(trainer.covered([e.message.offset for e in pending])):
                await stream.ack(pending.popleft())

    async def forget_trainer(_app: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        # Another worker may own the training partition next and store newer states; a
        # trainer kept in memory would go on from a stale one if the partition came back.
        revoked: set[TP] = args[0] if args else set()
        if any(tp.topic == settings.topics.training_examples for tp in revoked):
            revokes[0] += 1
            trainer.release()

    app.on_partitions_revoked.connect(forget_trainer)

    lateness = settings.ingest.allowed_lateness_s
    topics = settings.topics

    def progress(partition: int) -> dict[str, InputProgress]:
        out = {}
        for topic in (topics.clickstream, topics.purchases):
            tp = TP(topic, partition)
            high = app.consumer.highwater(tp) if tp in app.consumer.assignment() else 0
            position = pipeline.positions.get((topic, partition), -1)
            lag = None if high is None else max(0, int(high) - position - 1)
            out[topic] = InputProgress(pipeline.watermarks.get((topic, partition)), lag)
        return out

    held_slots = 2 if catch_up else 1

    def clock_for(partition: int) -> PartitionClock:
        clock = partition_clock(list(progress(partition).values()), lateness,
                                # Messages taken but not staged yet count as lag too: the
                                # in-flight batches, the take buffer and, with catch-up
                                # batching, the batch collecting.
                                backlog=(ingest.inflight_batches + held_slots)
                                * ingest.batch_max_messages)
        if clock.watermark > -math.inf:
            metrics.watermark_seconds.labels(str(partition)).set(clock.watermark)
        return clock

    scorer.clock_for = clock_for

    event_time = EventTimeWriter(client, settings.redis.key_prefix)

    async def sweep_idle() -> None:
        # Deferred activity, idle re-scoring and label expiry follow event time per partition.
        # Each partition's watermark is then stored for readers (the API's "now").
        watermarks: dict[int, float] = {}
        for partition in sorted(iter_partitions(app.consumer.assignment(), topics.clickstream)):
            watermarks[partition] = clock_for(partition).watermark
            await (await scorer.sweep(partition, publisher.send))
        await retrier.call("event_time", lambda: event_time.advance(watermarks))

    async def refresh_model() -> None:
        await retrier.call("load_model", models.refresh)

    async def report_lag() -> None:
        consumer: Any = app.consumer
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            committed = consumer._committed_offset.get(tp)
            if high is not None:
                lag = max(0, int(high) - int(committed or 0))
                metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    app.timer(1.0)(sweep_idle)
    app.timer(settings.models.reload_interval_s)(refresh_model)
    app.timer(5.0)(report_lag)

    if settings.metrics.port > 0:
        setup_lean_prometheus_sensors(app, pattern="/metrics", registry=registry,
                                      name_prefix="streamproc_faust")
        _health_pages(app, state)

    async def mark_started() -> None:
        async def check() -> None:
            await checks.call("deployment_check", guard.verify)

        def started() -> None:
            state.started = True
            metrics.ready.set(1 if state.ready else 0)

        await guard.watch(check, on_first=started)

    app.task(mark_started)

    return worker


def _raw_messages(events: Sequence[Any]) -> list[RawMessage]:
    out = []
    for event in events:
        m = event.message
        out.append(RawMessage(m.topic, m.partition, m.offset, m.key, m.value))
    return out


def _health_pages(app: faust.App, state: WorkerState) -> None:
    @app.page("/healthz")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            body: dict[str, object] = {"ready": state.ready, "started": state.started,
                                       "redis": state.redis_ok,
                                       "redis_state": state.redis_state,
                                       "publish": state.publish_ok}
            if state.redis_state_reason is not None:
                body["reason"] = state.redis_state_reason
            return self.json(body, status=200 if state.ready else 503)
