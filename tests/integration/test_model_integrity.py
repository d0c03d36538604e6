"""Signed model snapshots end to end: tampered or foreign versions are refused, restarts resume.

A real worker learns from live traffic on the real broker; the test then plants a
tampered and a foreign-key snapshot in Redis as the "current" version, checks that
the worker refuses both (counted in its metrics, never unpickled) and keeps
scoring with the last good version, and finally restarts the worker to show the
trainer resumes from its signed state instead of starting cold.
"""

from __future__ import annotations

import asyncio
import re
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streamproc.adapters import keys
from streamproc.api import AnalyticsReader
from streamproc.core.generator import TrafficGenerator, batch_envelopes
from streamproc.core.modelset import sign
from streamproc.runtime.embedded import free_port, spawn_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings, to_env
from tests.integration.kafka_io import wait_until
from tests.integration.metrics_io import scrape
from tests.integration.test_models_e2e import _produce_live

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, tzinfo=UTC)


async def _wait_metric(port: int, name: str, predicate: Any, what: str) -> None:
    async def check() -> bool:
        try:
            return bool(predicate(scrape(port, name)))
        except OSError:
            return False

    await wait_until(check, timeout=60, what=what, interval=0.5)


async def test_tampered_snapshots_are_refused_and_restarts_resume(
        make_settings: Any, tmp_path: Path) -> None:
    port = free_port()
    settings: Settings = make_settings(
        # A short horizon: census labels (at t + H) reach the trainer within the stream.
        models={"snapshot_every_examples": 200, "reload_interval_s": 0.5,
                "churn_horizon_days": 7},
        metrics={"port": port}, kafka={"topic_partitions": 1})
    await ensure_topics(settings)
    gen = TrafficGenerator(customers=120, seed=5, start=START, days=60)
    topic_of = {"clickstream": settings.topics.clickstream,
                "purchases": settings.topics.purchases}
    records = [(topic_of[t], k, v) for t, k, v in batch_envelopes(gen.events(), 10, max_lag=200)]
    half = len(records) // 2
    reader = AnalyticsReader(settings)
    worker = spawn_worker(to_env(settings), log_path=tmp_path / "worker1.log")
    try:
        await _produce_live(settings, records[:half], slices=6)

        async def versions_published() -> bool:
            return await reader.models.current_version() >= 1

        await wait_until(versions_published, timeout=90, what="the trainer to publish models")
        await asyncio.sleep(1.0)
        good = await reader.models.current_version()
        await _wait_metric(port, "streamproc_model_version", lambda v: v >= good,
                           "the worker to load the current version")

        # 1. A tampered blob (one byte flipped in the payload) claims to be the next version.
        client = reader.client
        blob = await client.get(keys.model_key(settings.redis.key_prefix, f"bundle:{good}"))
        assert blob is not None
        tampered = blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:]
        await client.set(keys.model_key(settings.redis.key_prefix, "bundle:9001"), tampered)
        await client.set(keys.model_key(settings.redis.key_prefix, "current"), 9001)
        await _wait_metric(port, "streamproc_model_snapshots_rejected_total", lambda v: v >= 1,
                           "the tampered snapshot to be refused")

        # 2. A well-formed snapshot signed with someone else's key.
        foreign = sign(b"\x80\x04N.", b"not-our-key")  # would unpickle to None if ever loaded
        await client.set(keys.model_key(settings.redis.key_prefix, "bundle:9002"), foreign)
        await client.set(keys.model_key(settings.redis.key_prefix, "current"), 9002)
        await _wait_metric(port, "streamproc_model_snapshots_rejected_total", lambda v: v >= 2,
                           "the foreign snapshot to be refused")
        assert scrape(port, "streamproc_model_version") >= good  # still the last good one
        log = (tmp_path / "worker1.log").read_text()
        assert "refused model snapshot v9001" in log
        assert "refused model snapshot v9002" in log

        # Operators roll back to the last good version; then the worker restarts mid-stream.
        await reader.models.roll_back(good)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        worker = spawn_worker(to_env(settings), log_path=tmp_path / "worker2.log")
        await _produce_live(settings, records[half:], slices=6)

        async def resumed() -> bool:
            return await reader.models.current_version() > good

        await wait_until(resumed, timeout=90, what="a new version after the restart")
        log2 = (tmp_path / "worker2.log").read_text()
        assert re.search(r"trainer resumed at model v\d+", log2), "trainer restarted cold"
        newest = await reader.models.current_version()
        loaded = await reader.models.load_bundle(newest)
        assert loaded.bundle.labels_seen > 0
        await _wait_metric(port, "streamproc_model_version", lambda v: v > good,
                           "the restarted worker to score with the new version")
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        await reader.close()
