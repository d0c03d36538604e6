"""The in-memory replay and a real worker decide alike on the same seeded stream.

The generator's stream, as tracker envelopes, goes through the replay (``core/replay.py``,
the in-memory store) and through a worker process on the real broker and Redis. As of the
end of the stream, every segment change, churn alert, training example (profile snapshots
and delayed labels, features included) and every customer's stored scoring state must be
equal. That is what makes ``load_tests/model_selection.py`` and the model-quality tests,
which measure the replay, measure the worker's logic.

What may differ, and why:

* ``emitted_at`` of the records (the worker's wall clock), the order of records of
  different customers, and the scoring state's ``owner`` (the partition whose idle-check
  schedule holds the customer; the replay has no partitions). Everything else is asserted
  exactly.
* Model-version timing: the trainer cuts a version every N examples in both, but a worker
  scores with a new version only after its next reload (wall clock) while the replay does
  from its next step. Both score here with one frozen model (trained beforehand on another
  seed, and N too large to cut another), so that difference cannot show.
* Batch boundaries: a worker steps a customer once per batch, with all the batch's
  activity of that customer and the profile as of the last of it, where the replay steps
  each message; and a customer's idle check may fire before or after the customer's own
  next message depending on whether a sweep came between. The test paces the stream in
  chunks in which no customer has two messages and in which event time passes no time
  at which a chunk customer is due (an idle check or the end of a horizon), and lets
  the worker finish each chunk before producing the next. Within such a chunk every
  grouping into batches, interleaving of the two topics and deferral of scoring behind a
  lagging topic gives each customer the same sequence of steps, so the outcome is the
  same; the chunks are cut from the replay's own schedule, as the stream is fed to it.
"""

from __future__ import annotations

import asyncio
import copy
import math
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streamproc.adapters import keys
from streamproc.adapters.model_store import ModelStore
from streamproc.adapters.redis_store import RedisProfileStore, RedisScoringStore, make_client
from streamproc.core.generator import TrafficGenerator, batch_envelopes
from streamproc.core.labels import LabelledExample
from streamproc.core.modelset import ModelBundle, Trainer
from streamproc.core.replay import CHECKS, Replay, event_time
from streamproc.core.step import churn_alert, segment_changed
from streamproc.core.training import ProfileExample, TrainingExample, decode_record
from streamproc.runtime.embedded import spawn_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import ModelSettings, Settings, to_env
from tests.conftest import SIGNING_KEY
from tests.integration.kafka_io import consume_all, wait_until

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, tzinfo=UTC)
CUSTOMERS, DAYS = 150, 40
LATENESS_S = 3600.0
MIN_LABELS = 200
NEVER = 10**9  # examples per model version: no version is cut during the test
EMITTED = datetime(2000, 1, 1, tzinfo=UTC)
Message = tuple[str, str, dict[str, Any]]


@dataclass(frozen=True)
class Chunk:
    """Messages to produce together, and what the worker shows once it has handled them."""

    messages: list[Message]
    #: events applied, per customer of the chunk
    events: dict[str, float]
    watermark: float


def _events(message: dict[str, Any]) -> list[dict[str, Any]]:
    events = message.get("events")
    return [message] if events is None else list(events)


def frozen_model(models: ModelSettings) -> tuple[Trainer, ModelBundle]:
    """A model learned from 90 earlier days of another seed's customers, by the replay."""
    # The operator's horizon, as the trainer service passes it (None: learned).
    trainer = Trainer(n_segments=models.segments, seed=42, horizon_days=models.churn_horizon_days,
                      churn_threshold=models.churn_threshold, min_labels=MIN_LABELS)
    replay = Replay(trainer, models.step_config(), models.snapshot_every_examples,
                    lateness_s=LATENESS_S)
    earlier = TrafficGenerator(customers=CUSTOMERS, seed=101, start=START - timedelta(days=90),
                               days=90)
    replay.feed_messages(batch_envelopes(earlier.events(), 20, max_lag=300))
    bundle = trainer.bundle()
    assert bundle.churn_ready
    return trainer, bundle


def paced(replay: Replay, messages: Sequence[Message]) -> list[Chunk]:
    """Feed the replay, cutting the stream into chunks every worker batching decides alike."""
    chunks: list[Chunk] = []
    chunk: list[Message] = []
    customers: set[str] = set()
    schedule = replay.store.schedules.setdefault(CHECKS, {})
    # Where the chunk starts: the watermark, and when each customer was due then.
    start, due_at_start = replay.watermark, dict(schedule)

    def close() -> None:
        states = replay.store.profiles.states
        chunks.append(Chunk(chunk, {c: float(states[c]["ev"]) for c in customers},
                            replay.watermark))

    def due_within(cid: str, end: float) -> bool:
        return any(start < due.get(cid, -math.inf) <= end for due in (due_at_start, schedule))

    for message in messages:
        _, cid, value = message
        end = max(replay.newest, *(event_time(e) for e in _events(value))) - LATENESS_S
        if chunk and (cid in customers or any(due_within(c, end) for c in customers | {cid})):
            close()
            chunk, customers = [], set()
            start, due_at_start = replay.watermark, dict(schedule)
        chunk.append(message)
        customers.add(cid)
        replay.feed_messages([message])
    close()
    return chunks


async def run_worker(settings: Settings, chunks: list[Chunk], log: Path) -> None:
    """Produce chunk by chunk, each once the worker has finished the one before."""
    client = make_client(settings.redis)
    profiles = RedisProfileStore.from_settings(client, settings.redis,
                                               settings.ingest.feature_config())
    prefix = settings.redis.key_prefix
    checks = keys.schedule_key(prefix, "checks:0")
    deferred = keys.schedule_key(prefix, "deferred:0")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all",
                                linger_ms=0)
    topic_of = {"clickstream": settings.topics.clickstream,
                "purchases": settings.topics.purchases}
    await producer.start()
    proc = spawn_worker(to_env(settings), log_path=log)
    try:
        for chunk in chunks:
            sends = [await producer.send(topic_of[t], orjson.dumps(v), key=k.encode())
                     for t, k, v in chunk.messages]
            await asyncio.gather(*sends)
            ids = sorted(chunk.events)

            async def settled(ids: list[str] = ids, chunk: Chunk = chunk) -> bool:
                states = await profiles.get_states(ids)
                if [float((s or {}).get("ev", 0.0)) for s in states] != \
                        [chunk.events[c] for c in ids]:
                    return False
                return (await client.zcount(checks, "-inf", chunk.watermark) == 0
                        and await client.zcard(deferred) == 0)

            await wait_until(settled, timeout=60, interval=0.005,
                             what="the worker to finish a chunk")
    finally:
        await producer.stop()
        await client.aclose()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _records(replay: Replay, bundle: ModelBundle, threshold: float) -> tuple[list[Any], ...]:
    changes = [segment_changed(d, bundle, EMITTED).model_dump(mode="json")
               for d in replay.segment_changes]
    alerts = [churn_alert(a, bundle, threshold, EMITTED).model_dump(mode="json")
              for a in replay.alerts]
    return changes, alerts


def _published(values: list[tuple[bytes | None, bytes]]) -> list[dict[str, Any]]:
    out = []
    for _, value in values:
        doc = orjson.loads(value)
        doc["emitted_at"] = EMITTED.isoformat().replace("+00:00", "Z")
        out.append(doc)
    return out


def _key(doc: dict[str, Any]) -> str:
    return str(doc.get("id", doc.get("alert_id")))


async def test_the_replay_and_a_worker_decide_alike(make_settings: Any, tmp_path: Path) -> None:
    settings: Settings = make_settings(
        kafka={"topic_partitions": 1, "fetch_max_wait_ms": 10},
        ingest={"allowed_lateness_s": LATENESS_S, "batch_within_s": 0.005,
                "catchup_max_wait_s": 0},
        # A 14-day horizon, so 40 days of traffic hold customers labelled churned too.
        models={"snapshot_every_examples": NEVER, "min_labels_before_alerts": MIN_LABELS,
                "churn_horizon_days": 14, "reload_interval_s": 0.5,
                # Low enough that alerts are many: what is compared is the two drivers'.
                "churn_threshold": 0.3})
    models = settings.models
    trainer, bundle = frozen_model(models.model_copy(update={"snapshot_every_examples": 2000}))
    gen = TrafficGenerator(customers=CUSTOMERS, seed=11, start=START, days=DAYS)
    messages = list(batch_envelopes(gen.events(), 20, max_lag=300))
    replay = Replay(copy.deepcopy(trainer), models.step_config(), NEVER, lateness_s=LATENESS_S,
                    bundle=bundle, record=True)
    chunks = paced(replay, messages)
    assert len(chunks) < len(messages) / 3

    await ensure_topics(settings)
    client = make_client(settings.redis)
    try:
        await ModelStore(client, settings.redis.key_prefix,
                         SIGNING_KEY.encode()).publish(bundle, trainer, time.time())
    finally:
        await client.aclose()
    started = time.monotonic()
    await run_worker(settings, chunks, tmp_path / "worker.log")
    assert time.monotonic() - started < 120

    bootstrap, topics = settings.kafka.bootstrap_servers, settings.topics
    changes, alerts = _records(replay, bundle, models.churn_threshold)
    worker_changes = _published(await consume_all(bootstrap, topics.segment_changes, idle=1.0))
    worker_alerts = _published(await consume_all(bootstrap, topics.churn_alerts, idle=1.0))
    assert len(changes) > CUSTOMERS  # first assignments and moves
    assert len(alerts) >= 10
    assert sorted(worker_changes, key=_key) == sorted(changes, key=_key)
    assert sorted(worker_alerts, key=_key) == sorted(alerts, key=_key)

    examples: list[TrainingExample] = [
        e for _, raw in await consume_all(bootstrap, topics.training_examples, idle=1.0)
        for e in decode_record(raw).examples]
    labels = [e for e in examples if isinstance(e, LabelledExample)]
    snapshots = [e for e in examples if isinstance(e, ProfileExample)]

    def by_snapshot(e: LabelledExample) -> tuple[str, float]:
        return e.snapshot.customer_id, e.snapshot.scored_at

    assert sum(e.label for e in replay.label_stream) >= 10
    assert sorted(labels, key=by_snapshot) == sorted(replay.label_stream, key=by_snapshot)
    assert sorted(snapshots, key=lambda e: (e.customer_id, e.at)) == \
        sorted(replay.profile_stream, key=lambda e: (e.customer_id, e.at))

    store = RedisScoringStore.from_settings(make_client(settings.redis), settings.redis)
    try:
        ids = sorted(replay.store.states)
        stored = {r.customer_id: r.state for r in await store.read(ids)}
    finally:
        await store.client.aclose()
    for cid in ids:
        state = stored[cid]
        assert state is not None, cid
        assert replace(state, owner=None) == replay.store.read_now([cid])[0].state, cid
