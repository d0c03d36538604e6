"""A Redis that comes back empty: real workers stop, say so once, and write nothing until told.

Real ``python -m streamproc worker`` processes on the session broker and a redis-server
of the test's own. Redis loses its data (restarted without its append-only file, or
flushed while no worker runs) while events keep arriving; the worker must not rebuild
profiles from what arrives after the wipe. Once an operator accepts the empty Redis
(``streamproc deployment accept --yes``) it goes on with everything that arrived since.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from streamproc.runtime.embedded import free_port
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings, to_env
from tests.integration.kafka_io import produce, wait_until
from tests.integration.metrics_io import metric_value
from tests.integration.test_resilience import (
    OwnRedis,
    Stream,
    Workers,
    alive,
    chunks,
    http_get,
    make_stream,
    metrics_on,
    own_redis,
    wait_profiles,
    workers,
)
from tests.reference import reference_profiles

pytestmark = pytest.mark.integration
__all__ = ["own_redis", "workers"]  # fixtures, imported for pytest

#: Longer than the guard's check interval, a model reload, an idle sweep and a trainer take.
HOLD_S = 8.0


async def health(port: int) -> tuple[int, dict[str, Any], float | None]:
    """(/readyz status, its body, streamproc_redis_state_lost) of one worker."""
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/readyz")
    _, metrics = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
    return status, orjson.loads(body) if status else {}, metric_value(
        metrics, "streamproc_redis_state_lost")


async def wait_lost(port: int, because: str) -> None:
    """Wait for /readyz 503 naming the loss and the gauge at 1."""
    seen: list[Any] = []

    async def lost() -> bool:
        status, body, gauge = await health(port)
        seen.append((status, body, gauge))
        return (status == 503 and body.get("redis_state") == "lost"
                and because in body.get("reason", "") and gauge == 1.0)

    await wait_until(lost, timeout=45, what=f"readyz 503 'lost' and the gauge at 1 ({seen[-1:]})")


async def wait_ok(port: int) -> None:
    seen: list[Any] = []

    async def ok() -> bool:
        status, body, gauge = await health(port)
        seen.append((status, body, gauge))
        return status == 200 and body.get("redis_state") == "ok" and gauge == 0.0

    await wait_until(ok, timeout=45, what=f"readyz 200 and the gauge at 0 ({seen[-1:]})")


def accept(settings: Settings) -> str:
    """``streamproc deployment accept --yes`` as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(to_env(settings))
    done = subprocess.run([sys.executable, "-m", "streamproc", "deployment", "accept", "--yes"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def key_count(redis: OwnRedis) -> int:
    client = aioredis.Redis(port=redis.port)
    try:
        return int(await client.dbsize())
    finally:
        await client.aclose()


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "ERROR" in line]


def reference_after(stream: Stream, records: int) -> dict[str, dict[str, Any]]:
    """Reference profiles of the valid events after the first ``records`` records."""
    return reference_profiles(stream.valid[stream.valid_upto[records]:])


async def wait_committed(port: int, settings: Settings) -> None:
    """Wait until the worker's committed offsets reach the end of both input topics."""

    async def caught_up() -> bool:
        _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
        lags = [metric_value(body, "streamproc_consumer_lag_messages", topic=t)
                for t in (settings.topics.clickstream, settings.topics.purchases)]
        return all(lag == 0.0 for lag in lags)

    await wait_until(caught_up, timeout=45, what="offsets committed to the end of the inputs")


async def test_a_redis_restarted_empty_stops_the_worker_until_an_operator_accepts_it(
        make_settings: Callable[..., Settings], workers: Workers,
        own_redis: Callable[..., OwnRedis]) -> None:
    redis = own_redis()
    web = free_port()
    settings = make_settings(redis={"url": redis.url, "retry_max_backoff_s": 1.0},
                             metrics=metrics_on(web))
    await ensure_topics(settings)
    stream = make_stream(settings, customers=60, seed=71, days=10)
    bootstrap = settings.kafka.bootstrap_servers
    a, b, c = chunks(stream.records, 3)
    worker = workers.start(settings)
    await produce(bootstrap, a)
    await wait_profiles(settings, stream.reference(len(a)), timeout=60, what="phase A")
    await wait_ok(web)

    # Redis restarted without its data (no append-only file), events keep arriving.
    before = len(workers.log(0))
    redis.stop()
    shutil.rmtree(redis.workdir)
    redis.workdir.mkdir()
    redis.start()
    await produce(bootstrap, b)
    await wait_lost(web, "is gone")
    await asyncio.sleep(HOLD_S)
    assert alive(worker), workers.log(0)[-3000:]
    assert await key_count(redis) == 0, "something was written into the wiped Redis"
    errors = error_lines(workers.log(0)[before:])
    assert len(errors) == 1, errors
    assert "deployment marker" in errors[0]
    assert "streamproc deployment accept --yes" in errors[0]

    # The operator accepts the empty Redis: the worker goes on with everything that
    # arrived since the wipe (the history before it is lost, as the operator accepted).
    assert "resume" in accept(settings)
    await wait_ok(web)
    await produce(bootstrap, c)
    await wait_profiles(settings, reference_after(stream, len(a)), timeout=60,
                        what="profiles of the events since the wipe")
    log = workers.log(0)[before:]
    assert error_lines(log) == errors, error_lines(log)
    assert "Traceback" not in log, log[-3000:]


async def test_a_worker_restart_is_not_flagged_but_a_wipe_while_none_ran_is(
        make_settings: Callable[..., Settings], workers: Workers,
        own_redis: Callable[..., OwnRedis]) -> None:
    redis = own_redis()
    web = free_port()
    settings = make_settings(redis={"url": redis.url, "retry_max_backoff_s": 1.0},
                             metrics=metrics_on(web))
    await ensure_topics(settings)
    stream = make_stream(settings, customers=50, seed=81, days=8)
    bootstrap = settings.kafka.bootstrap_servers
    a, b, c = chunks(stream.records, 3)

    first = workers.start(settings)
    await produce(bootstrap, a)
    await wait_profiles(settings, stream.reference(len(a)), timeout=60, what="phase A")
    first.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 30) == 0

    # A plain restart against the same Redis: the marker is there, nothing is flagged.
    second = workers.start(settings)
    await produce(bootstrap, b)
    await wait_profiles(settings, stream.reference(len(a) + len(b)), timeout=60,
                        what="phase B after a restart")
    await wait_ok(web)
    assert error_lines(workers.log(1)) == []
    await wait_committed(web, settings)
    second.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(second.wait, 30) == 0

    # Redis loses its data while no worker runs: a fresh worker cannot remember the
    # marker, but the consumer group's committed offsets say events were processed.
    client = aioredis.Redis(port=redis.port)
    await client.flushall()
    await client.aclose()
    third = workers.start(settings)
    await wait_lost(web, "committed offsets")
    await produce(bootstrap, c)
    await asyncio.sleep(HOLD_S)
    assert alive(third)
    assert await key_count(redis) == 0, "something was written into the wiped Redis"
    errors = error_lines(workers.log(2))
    assert len(errors) == 1, errors
    assert "deployment marker" in errors[0]

    accept(settings)
    await wait_ok(web)
    await wait_profiles(settings, reference_after(stream, len(a) + len(b)), timeout=60,
                        what="profiles of the events since the wipe")
    assert error_lines(workers.log(2)) == errors
