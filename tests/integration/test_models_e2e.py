"""End to end through the real broker and Redis: segments, churn model quality and alerts.

One seeded persona stream (loyal high spenders, bargain hunters, browsers, new
customers and planted churners) is produced to a real broker; a real worker
process learns from it; the test reads what landed in Redis and on the output
topics and compares it with the ground truth the generator planted.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from streamproc.adapters import keys
from streamproc.api import AnalyticsReader
from streamproc.core.generator import CustomerTruth, TrafficGenerator, batch_envelopes
from streamproc.core.segments import adjusted_rand_index
from streamproc.runtime.embedded import free_port, spawn_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings, to_env
from tests.integration.kafka_io import consume_all, produce, wait_until
from tests.integration.metrics_io import scrape

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 150
HORIZON_DAYS = 21
SLICES = 12
LEARNED_FROM = 12


@dataclass
class Run:
    settings: Settings
    truths: dict[str, CustomerTruth]
    end: datetime
    alerts: list[dict[str, Any]]
    changes: list[dict[str, Any]]
    quality: dict[str, float]
    bundle_version: int
    log: Path


def _records(settings: Settings, gen: TrafficGenerator) -> list[tuple[str, str, Any]]:
    topic_of = {"clickstream": settings.topics.clickstream,
                "purchases": settings.topics.purchases}
    # Tracker-style envelopes, but flushed quickly so event time stays nearly ordered.
    return [(topic_of[t], k, v) for t, k, v in batch_envelopes(gen.events(), 20, max_lag=300)]


@pytest.fixture(scope="module")
def model_run(broker: Any, redis_server: Any,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One worker learning one seeded persona stream, shared by the tests below."""
    yield from _run(broker, redis_server, tmp_path_factory)


def _settings_for(broker: Any, redis_server: Any) -> Settings:
    import uuid

    run = uuid.uuid4().hex[:10]
    return Settings(
        kafka={"bootstrap_servers": f"127.0.0.1:{broker.port}", "consumer_group": f"m-{run}",
               "topic_partitions": 1},
        topics={n: f"{n}-{run}" for n in ("clickstream", "purchases", "segment_changes",
                                          "churn_alerts", "priority_alerts", "lifecycle_changes",
                                          "dead_letter", "training_examples")},
        redis={"url": f"redis://127.0.0.1:{redis_server.port}/0", "key_prefix": f"m{run}"},
        models={"signing_key": "test-signing-key", "churn_horizon_days": HORIZON_DAYS,
                "min_labels_before_alerts": 500, "snapshot_every_examples": 1000,
                "alert_cooldown_days": 7, "reload_interval_s": 0.5,
                # The generated months are replayed as if live.
                "history_lag_hours": 0.0},
        ingest={"allowed_lateness_s": 2 * 86_400.0},
        metrics={"port": free_port(), "host": "127.0.0.1"},
    )


def _run(broker: Any, redis_server: Any, tmp: pytest.TempPathFactory) -> Iterator[Run]:
    settings = _settings_for(broker, redis_server)
    gen = TrafficGenerator(customers=300, seed=11, start=START, days=DAYS)
    records = _records(settings, gen)
    expected_events = sum(1 for _ in gen.events())
    log = tmp.mktemp("models") / "worker.log"
    asyncio.run(ensure_topics(settings))
    proc = spawn_worker(to_env(settings), log_path=log)
    try:
        # Live traffic: produce in slices and let each be applied, and learned from, before
        # the next, so the two input topics advance together in event time and the model
        # keeps up with it as it does in production (see _caught_up).
        asyncio.run(_produce_live(settings, records, slices=SLICES,
                                  settle=lambda: _caught_up(settings)))

        async def collect() -> tuple[dict[str, float], int, list, list]:
            reader = AnalyticsReader(settings)
            try:
                async def all_applied() -> bool:
                    total = 0.0
                    async for cid in reader.profiles.customers():
                        state = await reader.profiles.get_state(cid)
                        total += float((state or {}).get("ev", 0.0))
                    return total >= expected_events

                await wait_until(all_applied, timeout=60, what="every event to be applied",
                                 interval=2.0)
                # Then let idle checks, labels and the trainer drain: the version stops moving.
                last, stable = -1, 0
                while stable < 3:
                    await asyncio.sleep(2)
                    version = await reader.models.current_version()
                    stable = stable + 1 if version == last else 0
                    last = version
                version = await reader.models.current_version()
                bundle = (await reader.models.load_bundle(version)).bundle
                alerts = [orjson.loads(v) for _, v in await consume_all(
                    settings.kafka.bootstrap_servers, settings.topics.churn_alerts, idle=2.0)]
                changes = [orjson.loads(v) for _, v in await consume_all(
                    settings.kafka.bootstrap_servers, settings.topics.segment_changes,
                    idle=2.0)]
                return bundle.quality, version, alerts, changes
            finally:
                await reader.close()

        quality, version, alerts, changes = asyncio.run(collect())
        yield Run(settings, gen.truths(), gen.end, alerts, changes, quality, version, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


async def _applied(settings: Settings) -> float:
    reader = AnalyticsReader(settings)
    try:
        ids = [c async for c in reader.profiles.customers()]
        states = await reader.profiles.get_states(ids)
        return sum(float((st or {}).get("ev", 0.0)) for st in states)
    finally:
        await reader.close()


async def _caught_up(settings: Settings) -> None:
    """Wait until the worker has done what the event time it reached made due.

    Replaying 150 days in a minute turns the seconds a live worker's model trails its
    input (trainer takes, version cuts, reloads) into days of event time, and which
    model version scored an idle churner would then depend on the machine's speed.
    So, in order: every idle check due at the worker's watermark has fired, every
    label those produced has been learned, and the worker scores with the version
    the trainer published last.
    """
    port = settings.metrics.port
    reader = AnalyticsReader(settings)
    checks = keys.schedule_key(settings.redis.key_prefix, "checks:0")
    try:
        async def checks_fired() -> bool:
            watermark = scrape(port, "streamproc_watermark_timestamp_seconds")
            return await reader.client.zcount(checks, "-inf", watermark) == 0

        async def labels_learned() -> bool:
            made = scrape(port, "streamproc_churn_labels_total")
            return scrape(port, "streamproc_training_examples_total", kind="label") >= made

        async def model_loaded() -> bool:
            current = await reader.models.current_version()
            return scrape(port, "streamproc_model_version") >= current

        for check, what in ((checks_fired, "idle checks due at the watermark"),
                            (labels_learned, "the trainer to learn the labels made"),
                            (model_loaded, "the worker to load the latest version")):
            await wait_until(check, timeout=60, what=what, interval=0.1)
    finally:
        await reader.close()


async def _produce_live(settings: Settings, records: list[tuple[str, str, Any]],
                        slices: int,
                        settle: Callable[[], Awaitable[None]] | None = None) -> None:
    size = -(-len(records) // slices)
    expected = 0
    for start in range(0, len(records), size):
        chunk = records[start:start + size]
        expected += sum(len(v["events"]) if "events" in v else 1 for _, _, v in chunk)
        await produce(settings.kafka.bootstrap_servers, chunk)

        async def caught_up(target: int = expected) -> bool:
            return await _applied(settings) >= target

        await wait_until(caught_up, timeout=120, what="a slice of live traffic to be applied",
                         interval=0.5)
        if settle is not None:
            await settle()


def test_churn_model_quality_on_delayed_labels(model_run: Run) -> None:
    q = model_run.quality
    assert q["labels_seen"] >= 2000
    assert q["roc_auc"] >= 0.80, q


def test_segments_recover_planted_personas(model_run: Run) -> None:
    async def segments() -> dict[str, int]:
        reader = AnalyticsReader(model_run.settings)
        try:
            reports = reader.all_customers(as_of=model_run.end)
            return {r.customer_id: r.segment_id async for r in reports
                    if r.segment_id is not None}
        finally:
            await reader.close()

    assigned = asyncio.run(segments())
    ids = sorted(assigned)
    personas = [model_run.truths[c].persona for c in ids]
    codes = {p: i for i, p in enumerate(sorted(set(personas)))}
    ari = adjusted_rand_index(np.array([codes[p] for p in personas]),
                              np.array([assigned[c] for c in ids]))
    assert len(ids) >= 250
    assert ari >= 0.5, ari
    first = [c for c in model_run.changes if c["previous"] is None]
    assert len({c["customer_id"] for c in first}) >= 250, "every customer got a published segment"


def _warnable_churners(truths: dict[str, CustomerTruth], end: datetime) -> set[str]:
    """Churners the model could have learned to flag by their idle check 14 days in.

    A churner is flagged at an idle check (7 and 14 days after its last event) or not
    in time at all. The model learns what 14 idle days mean from earlier churners'
    14-day checks, whose labels come a horizon later: 35 days after those left. With
    fewer than ``LEARNED_FROM`` such labels the alert depends on the order the few
    positive labels were learned in (over 8 runs on a loaded host, the churners who
    left on days 67-72 were all flagged in 5 and mostly missed in 2), so only churners
    with that many predecessors are counted, and only those whose horizon ended
    before the replay did.
    """
    horizon = timedelta(days=HORIZON_DAYS)
    left = sorted(t.last_event for t in truths.values()
                  if t.persona == "churner" and t.last_event is not None)
    return {c for c, t in truths.items()
            if t.persona == "churner" and t.last_event is not None
            and t.last_event + horizon < end
            and sum(1 for x in left if x <= t.last_event - horizon) >= LEARNED_FROM}


def test_alerts_flag_churners_before_their_horizon_and_spare_loyal(model_run: Run) -> None:
    truths = model_run.truths
    horizon = timedelta(days=HORIZON_DAYS)
    alerted_in_time: set[str] = set()
    for alert in model_run.alerts:
        truth = truths[alert["customer_id"]]
        event_time = datetime.fromisoformat(alert["event_time"])
        assert alert["model_version"] >= 1
        assert alert["reasons"], "alerts carry readable reasons"
        # Census labels land at t + H, so the model learns late what idle days mean: a
        # churner counts when alerted within two horizons (the unit model-quality test
        # measures the same on the in-memory replay). Synthetic data: mechanics only.
        if truth.persona == "churner" and truth.last_event is not None \
                and event_time < truth.last_event + 2 * horizon:
            alerted_in_time.add(truth.customer_id)
    eligible = _warnable_churners(truths, model_run.end)
    loyal = {c for c, t in truths.items() if t.persona == "loyal_high_value"}
    loyal_alerted = {a["customer_id"] for a in model_run.alerts} & loyal
    assert len(eligible) >= 20
    assert len(alerted_in_time & eligible) >= 0.5 * len(eligible), (
        len(alerted_in_time & eligible), len(eligible))
    assert len(loyal_alerted) <= 0.1 * len(loyal)
    assert len({a["alert_id"] for a in model_run.alerts}) == len(model_run.alerts)
