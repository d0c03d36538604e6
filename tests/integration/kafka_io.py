"""Small helpers to talk to the real broker and wait on real effects in tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


async def produce(bootstrap: str, records: Iterable[tuple[str, str | None, Any]], *,
                  max_request_size: int = 1_048_576) -> int:
    """Send (topic, key, value) records; dict/list values are JSON-encoded, bytes sent as-is.

    ``max_request_size`` is aiokafka's own client-side limit on one record (its default
    1 MiB); raise it to send the large messages a real producer may be configured to send.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_request_size=max_request_size)
    await producer.start()
    sent = 0
    try:
        futures = []
        for topic, key, value in records:
            payload = value if isinstance(value, bytes) else orjson.dumps(value)
            futures.append(await producer.send(topic, payload,
                                               key=key.encode() if key is not None else None))
            sent += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def consume_all(bootstrap: str, topic: str, *, expect: int | None = None,
                      timeout: float = 30.0, idle: float = 3.0) -> list[tuple[bytes | None, bytes]]:
    """Read a topic from the start until ``expect`` records (or ``idle`` s without any)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    out: list[tuple[bytes | None, bytes]] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend((r.key, r.value) for r in records)
                last = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - last > idle:
                break
    finally:
        await consumer.stop()
    return out


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout: float,
                     what: str, interval: float = 0.25) -> None:
    """Poll ``check`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
