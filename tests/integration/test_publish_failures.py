"""Publishing outputs never loses input: large rejects fit as dead letters, refusals stall.

A real worker process, the session's Tansu broker (or one of its own, configured to refuse
a topic) and a real redis-server. Large messages rejected whole must each give exactly one
dead letter that fits the producer's limit, and the valid events produced right after them
on the same partition must all be applied. A dead-letter topic that refuses records must
stall the partition (offsets held, readiness 503, failures counted) until it accepts them
again, then lose nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

from streamproc.adapters import keys
from streamproc.adapters.redis_store import decode_blob
from streamproc.core.outputs import MAX_RECORD_BYTES, DeadLetter
from streamproc.runtime.embedded import Service, free_port, tansu_binary
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings
from tests.integration.kafka_io import consume_all, produce, wait_until
from tests.integration.metrics_io import scrape
from tests.integration.test_resilience import Workers, alive, http_get, metrics_on, workers

__all__ = ["workers"]  # the fixture, re-exported so pytest finds it here

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MB = 1_000_000
#: Rejected whole: 0.5-1.0 MB as a bare JSON array (not_object), 1.5 and 5 MB as oversized.
SIZES = [MB // 2, 8 * MB // 10, MB, 3 * MB // 2, 5 * MB]
VALID_AFTER = 20  # valid clickstream events produced right after each reject, same partition


def _click(customer: str, n: int) -> dict[str, Any]:
    return {"event_id": f"v-{customer}-{n}", "customer_id": customer,
            "event_type": "page_view", "timestamp": (T0 + timedelta(seconds=n)).isoformat(),
            "session_id": f"s-{customer}", "category": "shoes",
            "url": "https://shop.example/p"}


def _order(customer: str, n: int) -> dict[str, Any]:
    return {"event_id": f"o-{customer}-{n}", "customer_id": customer, "order_id": f"o-{n}",
            "timestamp": (T0 + timedelta(seconds=n)).isoformat(), "type": "order",
            "items": [{"product_id": "p-1", "quantity": 1, "unit_price": 10.0}],
            "total": 10.0, "currency": "EUR"}


def bare_array(customer: str, size: int) -> bytes:
    """Exactly ``size`` bytes: a JSON array of valid events (a batch sent without envelope)."""
    event = orjson.dumps(_click(customer, 0))
    count = max(1, (size - 2) // (len(event) + 1) - 1)
    body = b"[" + b",".join([event] * count)
    return body + b" " * (size - len(body) - 1) + b"]"


async def stored_events(settings: Settings, customers: Iterable[str]) -> dict[str, int]:
    """customer -> events applied to the customer's profile (absent: no profile yet)."""
    client = aioredis.Redis.from_url(settings.redis.url)
    try:
        ids = list(customers)
        blobs = await client.mget([keys.profile_key(settings.redis.key_prefix, c) for c in ids])
        return {c: int(decode_blob(b).get("ev", 0)) for c, b in zip(ids, blobs, strict=True)
                if b}
    finally:
        await client.aclose()


async def committed(settings: Settings, topic: str, partition: int) -> int | None:
    """The consumer group's committed offset of one input partition (None: none yet)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers,
                                group_id=settings.kafka.consumer_group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        offset = await consumer.committed(TopicPartition(topic, partition))
        return None if offset is None else int(offset)
    finally:
        await consumer.stop()


async def fetch_at(bootstrap: str, topic: str, partition: int, offset: int) -> bytes | None:
    """The value of the record at these coordinates, read as an operator would."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, offset)
        record = await asyncio.wait_for(consumer.getone(), timeout=15)
        assert record.offset == offset
        return record.value
    finally:
        await consumer.stop()


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = http_get(f"http://127.0.0.1:{port}/readyz")
    return status, (orjson.loads(body) if status else {})


async def test_large_rejects_give_one_dead_letter_each_and_lose_no_valid_event(
        make_settings: Callable[..., Settings], workers: Workers) -> None:
    web = free_port()
    settings = make_settings(metrics=metrics_on(web))
    await ensure_topics(settings)
    bootstrap = settings.kafka.bootstrap_servers
    worker = workers.start(settings)

    customers = [f"big-{i}" for i in range(len(SIZES))]
    rejects: dict[str, bytes] = {}
    for i, (customer, size) in enumerate(zip(customers, SIZES, strict=True)):
        rejects[customer] = bare_array(customer, size)
        # One at a time, in order: the valid events follow the reject on its partition.
        await produce(bootstrap, [(settings.topics.clickstream, customer, rejects[customer])],
                      max_request_size=8 * MB)
        await produce(bootstrap, [(settings.topics.clickstream, customer, _click(customer, n))
                                  for n in range(1, VALID_AFTER + 1)]
                      + [(settings.topics.purchases, customer, _order(customer, 100 + i))])
    want = dict.fromkeys(customers, VALID_AFTER + 1)

    async def all_applied() -> bool:
        return await stored_events(settings, customers) == want

    try:
        await wait_until(all_applied, timeout=90, what="every valid event after the rejects")
    except AssertionError as exc:
        got = await stored_events(settings, customers)
        raise AssertionError(f"{exc}: applied {got}, want {want}; worker alive: "
                             f"{alive(worker)}\n{workers.log(0)[-3000:]}") from None

    dead = await consume_all(bootstrap, settings.topics.dead_letter, idle=3.0, timeout=30)
    letters = [DeadLetter.from_bytes(value) for _, value in dead]
    owners = [(letter.key_bytes() or b"").decode() for letter in letters]
    assert sorted(owners) == customers, [(d.reason, d.original_size) for d in letters]
    for (key, value), letter, customer in zip(dead, letters, owners, strict=True):
        raw = rejects[customer]
        assert len(value) + len(key or b"") < MAX_RECORD_BYTES
        assert letter.reason == (
            "not_object" if len(raw) <= settings.ingest.max_payload_bytes else "oversized")
        assert letter.original_size == len(raw)
        assert letter.original_sha256 == hashlib.sha256(raw).hexdigest()
        kept = letter.original_bytes()
        assert raw.startswith(kept)
        assert letter.original_truncated == (kept != raw)
        # Whatever the reject's size, its coordinates fetch it whole from the input topic.
        assert await fetch_at(bootstrap, letter.source_topic, letter.source_partition,
                              letter.source_offset) == raw
    truncated = sorted(d.original_size for d in letters if d.original_truncated)
    assert truncated == SIZES[1:], truncated  # 0.5 MB fits whole; 0.8 MB and up do not

    assert scrape(web, "streamproc_dead_letters_total") == len(letters)
    assert scrape(web, "streamproc_publish_errors_total") == 0
    assert readyz(web)[0] == 200
    assert alive(worker)
    log = workers.log(0)
    assert "Traceback" not in log, log[-3000:]
    assert "Crashed" not in log, log[-3000:]
    print(f"\nlarge rejects reached the worker: {sorted(d.original_size for d in letters)} "
          f"bytes; dead letters {[len(v) for _, v in dead]} bytes")


# --- a dead-letter topic that refuses records --------------------------------------------------


class RefusingTansu:
    """A Tansu broker whose JSON schema registry makes chosen topics refuse every record.

    Tansu validates a topic's records against ``<topic>.json`` in its schema registry
    directory and answers INVALID_RECORD otherwise; removing the file makes the topic
    accept records again. A real refusal, no mocks. (Tansu 0.6 reads the file for every
    produce request without ``--schema-registry-cache-expiry``; with it, a schema older
    than the expiry stays cached for good.)
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://127.0.0.1:{self.port}"
        env = dict(os.environ, LISTENER_URL=url, ADVERTISED_LISTENER_URL=url,
                   STORAGE_ENGINE="memory://tansu/", RUST_LOG="error")
        # The registry path is resolved against the working directory.
        proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--schema-registry", "file://."],
            env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self.service = Service("tansu", self.port, proc)
        deadline = time.monotonic() + 30
        while not _listening(self.port):
            assert proc.poll() is None, f"tansu exited with {proc.returncode}"
            assert time.monotonic() < deadline, "tansu did not listen"
            time.sleep(0.05)

    def refuse(self, topic: str) -> None:
        schema = {"type": "object",
                  "properties": {"value": {"type": "object", "required": ["never_present"]}}}
        (self.workdir / f"{topic}.json").write_text(json.dumps(schema))

    def accept(self, topic: str) -> None:
        (self.workdir / f"{topic}.json").unlink()

    def stop(self) -> None:
        self.service.stop()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def refusing_broker(tmp_path: Path) -> Iterator[RefusingTansu]:
    broker = RefusingTansu(tmp_path / "schemas")
    yield broker
    broker.stop()


async def test_a_refused_dead_letter_stalls_its_batch_until_the_topic_accepts_it(
        make_settings: Callable[..., Settings], workers: Workers,
        refusing_broker: RefusingTansu) -> None:
    web = free_port()
    settings = make_settings(kafka={"bootstrap_servers": f"127.0.0.1:{refusing_broker.port}",
                                    "topic_partitions": 1},
                             metrics=metrics_on(web))
    topics = settings.topics
    await ensure_topics(settings)
    refusing_broker.refuse(topics.dead_letter)
    bootstrap = settings.kafka.bootstrap_servers
    customer = "c-stall"
    worker = workers.start(settings)

    await produce(bootstrap, [(topics.clickstream, customer, _click(customer, 1))])
    await wait_until(lambda: _committed_is(settings, 1), timeout=60,
                     what="the first valid event applied and committed")
    await produce(bootstrap, [(topics.clickstream, customer, b"{not json")])
    await produce(bootstrap, [(topics.clickstream, customer, _click(customer, n))
                              for n in range(2, 12)])

    async def stalled() -> bool:
        status, body = await asyncio.to_thread(readyz, web)
        errors = await asyncio.to_thread(scrape, web, "streamproc_publish_errors_total",
                                         topic=topics.dead_letter)
        return status == 503 and body.get("publish") is False and errors >= 2

    await wait_until(stalled, timeout=60, what="readyz 503 and publish errors counted")
    # Held, not dropped: for a while, no offset moves past the reject, none is counted.
    for _ in range(6):
        offset = await committed(settings, topics.clickstream, 0)
        assert offset == 1, f"committed past the held reject: {offset}"
        assert await asyncio.to_thread(scrape, web, "streamproc_dead_letters_total") == 0
        assert alive(worker), workers.log(0)[-3000:]
        await asyncio.sleep(0.5)
    errors_while_stalled = await asyncio.to_thread(
        scrape, web, "streamproc_publish_errors_total", topic=topics.dead_letter)

    refusing_broker.accept(topics.dead_letter)

    async def recovered() -> bool:
        offset = await committed(settings, topics.clickstream, 0)
        status, _ = await asyncio.to_thread(readyz, web)
        return status == 200 and offset == 12

    await wait_until(recovered, timeout=60, what="readyz 200 and offsets past every message")
    assert await _applied_is(settings, customer, 11)
    dead = await consume_all(bootstrap, topics.dead_letter, idle=3.0, timeout=30)
    assert len(dead) == 1, dead
    assert DeadLetter.from_bytes(dead[0][1]).reason == "not_json"
    assert await asyncio.to_thread(scrape, web, "streamproc_dead_letters_total") == 1
    assert alive(worker)
    log = workers.log(0)
    assert "Traceback" not in log, log[-3000:]
    assert f"publishing to {topics.dead_letter} failed" in log, log[-3000:]
    print(f"\nrefused dead letter: {errors_while_stalled:.0f} failed attempts while stalled, "
          "then published once")


async def _committed_is(settings: Settings, offset: int) -> bool:
    return await committed(settings, settings.topics.clickstream, 0) == offset


async def _applied_is(settings: Settings, customer: str, n: int) -> bool:
    return (await stored_events(settings, [customer])).get(customer) == n
