"""End to end: the bounded dedupe on a real broker, Redis and worker.

A customer sends more events than the dedupe remembers; then a redelivered old
event and a genuinely new but very late one arrive. Neither may be counted (the
worker cannot tell them apart), both must reach the dead-letter topic as
``late_event`` with their original bytes, and nothing else is lost.
"""

from __future__ import annotations

import base64
import signal
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from streamproc.adapters.redis_store import RedisProfileStore, make_client
from streamproc.runtime.embedded import spawn_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import to_env
from tests.integration.kafka_io import consume_all, produce, wait_until

pytestmark = pytest.mark.integration

START = datetime(2026, 5, 1, tzinfo=UTC)


def _view(n: int, minutes: int) -> dict[str, object]:
    return {"event_id": f"e-{n}", "customer_id": "c-late", "event_type": "page_view",
            "session_id": "s-1", "timestamp": (START + timedelta(minutes=minutes)).isoformat()}


async def test_events_older_than_the_dedupe_memory_are_dead_lettered(make_settings,
                                                                     tmp_path) -> None:
    settings = make_settings(ingest={"dedupe_events": 5})
    await ensure_topics(settings)
    topic = settings.topics.clickstream
    fresh = [_view(n, n) for n in range(12)]
    replayed = fresh[0]  # a redelivery of an id the ring has forgotten
    very_late = _view(99, -30)  # new, but older than every remembered id
    envelope = {"events": [_view(100, 30), very_late]}  # the late one at batch_index 1
    proc = spawn_worker(to_env(settings), log_path=tmp_path / "worker.log")
    client = make_client(settings.redis)
    store = RedisProfileStore.from_settings(client, settings.redis,
                                            settings.ingest.feature_config())
    try:
        await produce(settings.kafka.bootstrap_servers,
                      [(topic, "c-late", v) for v in fresh])

        async def counted(n: int) -> bool:
            state = await store.get_state("c-late")
            return state is not None and state.get("ev") == n

        await wait_until(lambda: counted(12), timeout=90, what="12 events counted")
        await produce(settings.kafka.bootstrap_servers,
                      [(topic, "c-late", replayed), (topic, "c-late", very_late),
                       (topic, "c-late", envelope)])
        dead = await consume_all(settings.kafka.bootstrap_servers,
                                 settings.topics.dead_letter, expect=3, timeout=60)
        letters = [orjson.loads(v) for _, v in dead]
        assert [d["reason"] for d in letters] == ["late_event"] * 3, letters
        originals = [orjson.loads(base64.b64decode(d["original"])) for d in letters]
        assert originals == [replayed, very_late, very_late]
        assert [d["batch_index"] for d in letters] == [None, None, 1]
        assert "STREAMPROC_INGEST__DEDUPE_EVENTS" in letters[0]["detail"]
        # The envelope's in-order event was counted; nothing late was.
        await wait_until(lambda: counted(13), timeout=30, what="13 events counted")
        state = await store.get_state("c-late")
        assert state is not None
        assert state["ev"] == 13
    finally:
        await client.aclose()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
