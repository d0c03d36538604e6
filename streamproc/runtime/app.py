"""Faust wiring: the thinnest layer. Builds an app per call (no module singleton)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry

from streamproc.adapters.redis_store import RedisProfileStore, make_client
from streamproc.core.features import FeatureConfig
from streamproc.metrics import Metrics, create_metrics
from streamproc.runtime.kafka import FaustPublisher, StreamprocApp, faust_credentials
from streamproc.runtime.pipeline import IngestPipeline, RawMessage, Retrier
from streamproc.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    """Mutable health flags read by /readyz and the metrics."""

    started: bool = False
    redis_ok: bool = True
    batches: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Ready = started and Redis answering."""
        return self.started and self.redis_ok


@dataclass
class Worker:
    """Everything one worker process holds, handy for tests and the CLI."""

    app: faust.App
    settings: Settings
    metrics: Metrics
    registry: CollectorRegistry
    pipeline: IngestPipeline
    state: WorkerState


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
        web_enabled=settings.metrics.port > 0,
        web_port=settings.metrics.port or 6066,
        web_bind=settings.metrics.host,
        web_in_thread=False,
        store="memory://",
        table_standby_replicas=0,
    )
    app.fetch_max_wait_ms = k.fetch_max_wait_ms
    return app


def create_worker(settings: Settings, registry: CollectorRegistry | None = None) -> Worker:
    """Build a worker: Faust app, Redis store, pipeline, agents and health pages."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = create_metrics(registry)
    app = _app(settings)
    state = WorkerState()

    def on_redis(ok: bool) -> None:
        state.redis_ok = ok
        metrics.ready.set(1 if state.ready else 0)

    client = make_client(settings.redis)
    store = RedisProfileStore.from_settings(
        client, settings.redis, FeatureConfig(max_categories=settings.ingest.max_categories))
    retrier = Retrier(metrics, settings.redis.retry_max_backoff_s, on_redis)
    pipeline = IngestPipeline(settings, store, FaustPublisher(app), metrics, retrier=retrier)
    worker = Worker(app, settings, metrics, registry, pipeline, state)

    inputs = app.topic(settings.topics.clickstream, settings.topics.purchases,
                       key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    ingest = settings.ingest

    @app.agent(inputs, name="ingest")
    async def ingest_agent(stream: Any) -> None:
        # noack_take hands us the events and leaves acking to us: offsets move only
        # after process() returned, i.e. after Redis and the output topics have the effects.
        async for events in stream.noack_take(ingest.batch_max_messages, ingest.batch_within_s):
            await pipeline.process(_raw_messages(events))
            for event in events:
                await stream.ack(event)
            state.batches += 1

    if settings.metrics.port > 0:
        setup_prometheus_sensors(app, pattern="/metrics", registry=registry,
                                 name_prefix="streamproc_faust")
        _health_pages(app, state)

    async def mark_started() -> None:
        state.started = True
        metrics.ready.set(1 if state.ready else 0)

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
            body = {"ready": state.ready, "started": state.started, "redis": state.redis_ok}
            return self.json(body, status=200 if state.ready else 503)
