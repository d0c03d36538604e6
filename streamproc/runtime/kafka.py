"""Kafka plumbing: credentials, topic creation, the producer and the fetch-wait override."""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import threading
from collections.abc import Awaitable, Mapping
from typing import Any

import faust
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streamproc.runtime.pipeline import OutRecord
from streamproc.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)

#: After SIGTERM the worker exits at the latest this much later. Nothing is lost by the
#: forced exit (unacked work is redelivered), so this only has to exceed a clean stop
#: (a second or two) with room, and stay under Kubernetes' default 30 s grace period.
SHUTDOWN_TIMEOUT_S = 15.0
#: How often acknowledged offsets are committed: at most this much acknowledged work is
#: redelivered after a crash (deduplicated by event id), for one commit a second.
COMMIT_INTERVAL_S = 1.0
#: Consumer heartbeats per session timeout; Kafka wants at least three, five leaves one
#: or two lost heartbeats before the coordinator drops the worker.
HEARTBEATS_PER_SESSION = 5


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """A TLS context for SSL / SASL_SSL, None for plaintext."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=kafka.ssl_cafile)
    if kafka.ssl_certfile:
        context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
    return context


def faust_credentials(kafka: KafkaSettings) -> Any:
    """Faust broker credentials from settings (None for plaintext)."""
    context = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
        return faust.SASLCredentials(username=kafka.sasl_username, password=password,
                                     ssl_context=context, mechanism=kafka.sasl_mechanism)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def aiokafka_security(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for plain aiokafka clients (admin, benchmarks, CLI)."""
    kwargs: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    context = ssl_context(kafka)
    if context is not None:
        kwargs["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = (
            kafka.sasl_password.get_secret_value() if kafka.sasl_password else None)
    return kwargs


def all_topics(settings: Settings) -> list[str]:
    """Every topic streamproc reads or writes."""
    t = settings.topics
    return [t.clickstream, t.purchases, t.segment_changes, t.churn_alerts,
            t.priority_alerts, t.lifecycle_changes, t.dead_letter, t.training_examples]


async def ensure_topics(settings: Settings) -> None:
    """Create missing topics; the training topic has one partition (one trainer)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers,
                                **aiokafka_security(settings.kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = []
        for name in all_topics(settings):
            if name in existing:
                continue
            partitions = 1 if name == settings.topics.training_examples else \
                settings.kafka.topic_partitions
            wanted.append(NewTopic(name, partitions, settings.kafka.replication_factor))
        for topic in wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics([topic])
    finally:
        await admin.close()


async def group_consumed_before(settings: Settings) -> bool:
    """Whether the consumer group has committed offsets past the start of an input partition.

    A fact kept in Kafka, beside the Redis state: a worker that finds no deployment marker
    in Redis asks it to tell a first start from a Redis that lost its data while no
    worker ran. Partitions are named one by one (Tansu refuses a fetch of all of them).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers,
                                **aiokafka_security(settings.kafka))
    await admin.start()
    try:
        topics = [settings.topics.clickstream, settings.topics.purchases]
        partitions = [TopicPartition(t["topic"], p["partition"])
                      for t in await admin.describe_topics(topics) for p in t["partitions"]]
        offsets = await admin.list_consumer_group_offsets(settings.kafka.consumer_group,
                                                          partitions=partitions)
        return any(meta.offset > 0 for meta in offsets.values())
    finally:
        await admin.close()


class _FastFetchThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust hard-codes a 1.5 s fetch wait; on a sparse stream every event waits for it.

    The aiokafka consumer reads ``_fetch_max_wait_ms`` only when it starts its
    fetcher, so setting it right after construction is enough. Covered by
    tests/unit/test_kafka_wiring.py.
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", 1500)
        return consumer


class _FastFetchConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _FastFetchThread:
        return _FastFetchThread(self, loop=self.loop, beacon=self.beacon)


class _FastFetchTransport(faust_aiokafka.Transport):
    Consumer = _FastFetchConsumer


class StreamprocApp(faust.App):
    """A Faust app whose consumer honours ``STREAMPROC_KAFKA__FETCH_MAX_WAIT_MS``.

    Its shutdown is bounded: a batch stuck mid-flight (a broker or Redis that stopped
    answering) must not keep a SIGTERM'd worker alive. Offsets only move after a
    batch's effects are durable, so the forced exit loses nothing: the batch is
    re-delivered to the next owner and deduplicated by event id.
    """

    fetch_max_wait_ms: int = 1500
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S

    def _new_transport(self) -> Any:
        return _FastFetchTransport(self.conf.broker_consumer, self)

    async def on_stop(self) -> None:
        """Arm the shutdown watchdog, then stop as Faust does."""
        timer = threading.Timer(self.shutdown_timeout_s, _forced_exit,
                                args=(self.shutdown_timeout_s,))
        timer.daemon = True
        timer.start()
        await super().on_stop()


def _forced_exit(after: float) -> None:
    log.warning("shutdown did not finish within %.0fs; exiting (unacknowledged work will be "
                "re-delivered)", after)
    logging.shutdown()
    os._exit(0)


class FaustProducer:
    """Hands records to the Faust app's producer (see ``pipeline.RetryingPublisher``)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def hand(self, record: OutRecord) -> Awaitable[object]:
        """Hand a record to the producer; the result completes on its ack, or raises."""
        ack: Awaitable[object] = await self.app.producer.send(
            record.topic, record.key, record.value, None, None, None)
        return ack


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """The offset Faust last committed for ``tp`` in this process (None: none yet).

    Faust keeps it only in the private ``Consumer._committed_offset`` map and offers no
    public read; aiokafka's ``committed()`` asks the group coordinator over the network,
    which a lag gauge read every few seconds should not. This is the one place streamproc
    reads a Faust private attribute; tests/unit/test_kafka_wiring.py fails if Faust drops
    or renames it.
    """
    committed: Mapping[TP, int | None] = consumer._committed_offset
    return committed.get(tp)


def waiting_behind(consumer: Any, marks: Mapping[tuple[str, int], tuple[float, int]]) -> int:
    """Messages already in Kafka behind the last offsets of ``marks`` (their partitions' lag).

    ``marks`` maps (topic, partition) to (newest event time, last offset), as a prepared
    batch holds them; a partition whose high watermark is not known yet counts none.
    """
    waiting = 0
    for (topic, partition), (_, offset) in marks.items():
        high = consumer.highwater(TP(topic, partition))
        if high is not None:
            waiting += max(0, int(high) - offset - 1)
    return waiting
