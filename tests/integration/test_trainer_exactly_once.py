"""Exactly-once learning through a real worker, broker and Redis: kill -9, restart, count.

The trainer agent acks a training record only once a stored trainer state holds all
of it. A worker killed with records learned but not stored loses that learning; its
successor is sent those records again, skips what the stored state holds, and so
learns every example exactly once. The old trainer acked every record it had
learned, so its successor never saw the lost examples again.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from streamproc.adapters.model_store import TrainerPosition
from streamproc.api import AnalyticsReader
from streamproc.core.training import encode_records
from streamproc.runtime.embedded import free_port, spawn_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings, to_env
from tests.integration.kafka_io import produce, wait_until
from tests.integration.metrics_io import scrape
from tests.integration.test_trainer_service import _examples

pytestmark = pytest.mark.integration


def _metric(port: int, name: str, **labels: str) -> float | None:
    try:
        return scrape(port, name, **labels)
    except OSError:
        return None  # the worker's page is not up yet


async def test_a_killed_trainer_is_sent_again_what_it_had_not_stored(
        make_settings: Any, tmp_path: Path) -> None:
    port = free_port()
    settings: Settings = make_settings(models={"snapshot_every_examples": 200},
                                       metrics={"port": port}, kafka={"topic_partitions": 1})
    await ensure_topics(settings)
    topic = settings.topics.training_examples
    # 13 records of 70 examples; versions every 200 examples.
    values = encode_records(_examples(910, seed=3), per_record=70)
    reader = AnalyticsReader(settings)
    bootstrap = settings.kafka.bootstrap_servers

    async def version(n: int) -> bool:
        return await reader.models.current_version() >= n

    async def lag(n: int) -> bool:
        return _metric(port, "streamproc_consumer_lag_messages",
                             topic=topic, partition="0") == n

    await produce(bootstrap, [(topic, None, v) for v in values[:10]])
    worker = spawn_worker(to_env(settings), log_path=tmp_path / "worker1.log")
    try:
        # v3 at example 600: record 8 (examples 560-629), 40 examples in.
        await wait_until(lambda: version(3), timeout=90, what="the trainer to store v3")
        _, position = await reader.models.load_trainer_state()
        assert position == TrainerPosition(topic, 8, 40, 0)
        # Records 0-7 acked and committed; 8 and 9 wait for a stored state to hold them.
        await wait_until(lambda: lag(2), timeout=30, what="records 0-7 to be committed")
        await asyncio.sleep(2.0)
        assert await lag(2)

        worker.send_signal(signal.SIGKILL)  # examples 600-699: learned, never stored
        worker.wait(30)
        await produce(bootstrap, [(topic, None, v) for v in values[10:]])
        worker = spawn_worker(to_env(settings), log_path=tmp_path / "worker2.log")

        async def learned(n: int) -> bool:
            seen = _metric(port, "streamproc_training_examples_total", kind="profile")
            return seen is not None and seen >= n

        # Record 8 from example 40 on, then records 9-12: 30 + 70 + 3 * 70.
        await wait_until(lambda: learned(310), timeout=90, what="the new owner to learn")
        await wait_until(lambda: version(4), timeout=30, what="the trainer to store v4")
        await asyncio.sleep(2.0)
        assert _metric(port, "streamproc_training_examples_total", kind="profile") == 310
        trainer, position = await reader.models.load_trainer_state()
        assert trainer is not None
        assert trainer.profiles_seen == 800  # the state stored with v4, each example once
        assert position == TrainerPosition(topic, 11, 30, 0)
        await wait_until(lambda: lag(2), timeout=30, what="records 0-10 to be committed")
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        await reader.close()
