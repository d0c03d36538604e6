"""Security: Redis AUTH end to end, clear wrong-password failures, no secrets or PII in logs."""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import Callable

import pytest
from redis.exceptions import AuthenticationError

from streamproc.adapters.redis_store import PreparedEvent, RedisProfileStore, make_client
from streamproc.core.events import ClickstreamEvent
from streamproc.core.features import FeatureConfig, event_ops
from streamproc.runtime.embedded import free_port
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings
from tests.integration.kafka_io import produce, wait_until
from tests.integration.test_resilience import (
    OwnRedis,
    Workers,
    alive,
    check_dead_letters,
    make_stream,
    metrics_on,
    own_redis,
    probe,
    wait_profiles,
    workers,
)
from tests.reference import reference_profiles

__all__ = ["own_redis", "workers"]  # fixtures, re-exported so pytest finds them here

pytestmark = pytest.mark.integration

PAYLOAD_MARK = "PAYLOADMARK-7f3a9c"
CUSTOMER_MARK = "cust-LOGMARK-51b2"


def _event(customer: str, n: int) -> dict[str, object]:
    return {"event_id": f"sec-{n}", "customer_id": customer, "event_type": "page_view",
            "timestamp": f"2026-02-01T00:00:{n % 60:02d}Z", "session_id": f"sess-{n}",
            "category": "books", "url": f"https://shop.example/{PAYLOAD_MARK}/{n}"}


async def test_store_works_with_the_password_and_refuses_a_wrong_one(
        make_settings: Callable[..., Settings], own_redis: Callable[..., OwnRedis]) -> None:
    password = secrets.token_urlsafe(16)
    redis = own_redis(password=password)
    settings = make_settings(redis={"url": redis.url, "password": password})
    assert password not in repr(settings)
    assert password not in str(settings.model_dump())

    client = make_client(settings.redis)
    try:
        assert await client.ping()
        store = RedisProfileStore.from_settings(client, settings.redis, FeatureConfig())
        event = ClickstreamEvent.model_validate(_event("c-auth", 1))
        ts = event.timestamp.timestamp()
        [update] = await store.apply_batch(
            [PreparedEvent("c-auth", event.event_id, ts, event_ops(event, ts))])
        assert update.applied == [True]
        state = await store.get_state("c-auth")
        assert state is not None
        assert state["ev"] == 1
    finally:
        await client.aclose()

    for wrong in (make_settings(redis={"url": redis.url, "password": "not-" + password}),
                  make_settings(redis={"url": redis.url})):
        bad = make_client(wrong.redis)
        try:
            with pytest.raises(AuthenticationError) as err:
                await bad.ping()
        finally:
            await bad.aclose()
        message = str(err.value).lower()
        assert "password" in message or "auth" in message, message
        assert password not in str(err.value)


async def test_worker_with_a_wrong_password_stays_up_and_reports_redis_down(
        make_settings: Callable[..., Settings], own_redis: Callable[..., OwnRedis],
        workers: Workers) -> None:
    # Decision: a wrong password is handled like an outage (the password may be rotated
    # under a running worker): the worker stays up, keeps its offsets, says /readyz 503,
    # streamproc_redis_up 0, and logs one clear warning line per failed attempt.
    password = secrets.token_urlsafe(16)
    wrong = "wrong-" + secrets.token_urlsafe(8)
    redis = own_redis(password=password)
    web = free_port()
    settings = make_settings(redis={"url": redis.url, "password": wrong,
                                    "retry_max_backoff_s": 1.0},
                             metrics=metrics_on(web))
    await ensure_topics(settings)
    worker = workers.start(settings)
    await produce(settings.kafka.bootstrap_servers,
                  [(settings.topics.clickstream, "c-auth", _event("c-auth", 2))])
    await wait_until(lambda: _probe_is(web, (503, 0.0)), timeout=45,
                     what="readyz 503 and streamproc_redis_up 0")
    await asyncio.sleep(3)
    assert alive(worker), workers.log(0)[-3000:]
    assert await probe(web) == (503, 0.0)
    log = workers.log(0)
    warnings = [line for line in log.splitlines() if "AuthenticationError" in line]
    assert warnings, log[-3000:]
    assert all("redis" in line.lower() for line in warnings)
    assert password not in log
    assert wrong not in log


async def test_worker_reports_a_wrong_password_before_any_traffic(
        make_settings: Callable[..., Settings], own_redis: Callable[..., OwnRedis],
        workers: Workers) -> None:
    password = secrets.token_urlsafe(16)
    redis = own_redis(password=password)
    web = free_port()
    settings = make_settings(redis={"url": redis.url, "password": "wrong-" + password},
                             metrics=metrics_on(web))
    await ensure_topics(settings)
    worker = workers.start(settings)
    await wait_until(lambda: _probe_is(web, (503, 0.0)), timeout=45,
                     what="an idle worker to report Redis down")
    await asyncio.sleep(4)
    assert alive(worker), workers.log(0)[-3000:]
    assert await probe(web) == (503, 0.0), "an idle worker must not claim Redis is fine"


async def _probe_is(port: int, want: tuple[int, float]) -> bool:
    return await probe(port) == want


async def test_info_logs_hold_no_customer_data_or_secrets(
        make_settings: Callable[..., Settings], own_redis: Callable[..., OwnRedis],
        workers: Workers) -> None:
    password = secrets.token_urlsafe(16)
    signing_key = "sk-" + secrets.token_urlsafe(24)
    redis = own_redis(password=password)
    settings = make_settings(redis={"url": redis.url, "password": password,
                                    "retry_max_backoff_s": 1.0},
                             models={"signing_key": signing_key})
    assert settings.log_level == "INFO"
    await ensure_topics(settings)
    stream = make_stream(settings, customers=40, seed=51, days=10)
    marked = [(settings.topics.clickstream, CUSTOMER_MARK, _event(CUSTOMER_MARK, n))
              for n in range(5)]
    garbage = [(settings.topics.clickstream, CUSTOMER_MARK, b"\xff" + PAYLOAD_MARK.encode()),
               (settings.topics.purchases, CUSTOMER_MARK, _event(CUSTOMER_MARK, 9))]
    worker = workers.start(settings)
    half = len(stream.records) // 2
    await produce(settings.kafka.bootstrap_servers, stream.records[:half] + marked + garbage)
    await wait_profiles(settings, stream.reference(half) | _marked_profile(), timeout=60,
                        what="the first half in Redis")
    # A short Redis outage exercises the retry/warning path too.
    redis.stop()
    await produce(settings.kafka.bootstrap_servers, stream.records[half:])
    await wait_until(lambda: _logged(workers, "retrying"), timeout=30,
                     what="the worker to log the Redis outage")
    redis.start()
    reference = stream.reference()
    await wait_profiles(settings, reference | _marked_profile(), timeout=60)
    await check_dead_letters(settings, stream.invalid + len(garbage))
    worker.send_signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait, 30)

    log = workers.log(0)
    leaks = [needle for needle in (password, signing_key, PAYLOAD_MARK, CUSTOMER_MARK,
                                   *reference, *(e["event_id"] for e in stream.valid[:200]))
             if needle in log]
    assert not leaks, f"INFO logs leak {leaks[:5]}: {log[-2000:]}"



async def _logged(workers: Workers, text: str) -> bool:
    return text in workers.log(0)


def _marked_profile() -> dict[str, dict[str, object]]:
    """The marker customer's reference profile (five valid page views)."""
    return reference_profiles([_event(CUSTOMER_MARK, n) for n in range(5)])
