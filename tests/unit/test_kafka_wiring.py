"""The Faust wiring's reaches into Faust internals: the fetch wait, the committed offset."""

from __future__ import annotations

import asyncio

import faust
from faust.types import TP

from streamproc.runtime.kafka import StreamprocApp, committed_offset

BROKER = "kafka://127.0.0.1:9"  # never contacted: consumers are only built, not started


async def _fetch_wait(app: faust.App) -> int:
    # The call Faust makes when its consumer thread starts (on_start), so a Faust release
    # that builds its consumer some other way makes this test fail, not the override vanish.
    thread = app.consumer._thread
    consumer = thread._create_consumer(loop=asyncio.get_running_loop())
    try:
        return int(consumer._fetch_max_wait_ms)
    finally:
        await consumer.stop()
        thread.thread_loop.close()  # the thread is never started, so it cannot close it


async def test_the_consumer_uses_the_configured_fetch_wait() -> None:
    app = StreamprocApp("t-fetch", broker=BROKER, store="memory://", web_enabled=False)
    app.fetch_max_wait_ms = 7
    assert await _fetch_wait(app) == 7


async def test_without_the_override_faust_would_wait_1500_ms() -> None:
    app = faust.App("t-plain", broker=BROKER, store="memory://", web_enabled=False)
    assert await _fetch_wait(app) == 1500


def test_the_committed_offset_is_read_from_a_real_faust_consumer() -> None:
    # committed_offset reads Faust's private Consumer._committed_offset (Faust has no
    # public read of it): a Faust release that renames or drops it fails here. The lag
    # gauge it feeds is checked against a real broker in test_trainer_exactly_once.py.
    app = StreamprocApp("t-committed", broker=BROKER, store="memory://", web_enabled=False)
    try:
        assert committed_offset(app.consumer, TP("clickstream", 0)) is None
    finally:
        app.consumer._thread.thread_loop.close()  # never started, so it cannot close it
