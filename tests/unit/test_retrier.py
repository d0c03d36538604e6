"""The Redis retrier: transient errors retried quietly, other errors said in full, no ids."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from streamproc.metrics import create_metrics
from streamproc.runtime.pipeline import Retrier, redact_keys


def test_redact_keys_blanks_every_hash_tag() -> None:
    text = "profile field zz has no stored position: sp:{c-000123}:p (and sp:{x}:p)"
    assert redact_keys(text) == "profile field zz has no stored position: sp:{…}:p (and sp:{…}:p)"


async def _fails_then_succeeds(exc: Exception, caplog: pytest.LogCaptureFixture) -> Retrier:
    metrics = create_metrics(CollectorRegistry())
    retrier = Retrier(metrics, max_backoff_s=0.01)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise exc
        return "ok"

    with caplog.at_level(logging.DEBUG, logger="streamproc.runtime.pipeline"):
        assert await retrier.call("apply_batch", flaky) == "ok"
    assert calls == 2
    return retrier


async def test_a_script_error_is_logged_with_its_text_but_without_the_customer(
        caplog: pytest.LogCaptureFixture) -> None:
    await _fails_then_succeeds(ResponseError(
        "Error running script: profile field zz has no stored position: sp:{c-000123}:p"),
        caplog)
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1
    assert errors[0].levelno == logging.ERROR
    assert "profile field zz has no stored position: sp:{…}:p" in errors[0].getMessage()
    assert "c-000123" not in errors[0].getMessage()
    # The full text, id included, only at DEBUG.
    assert any("c-000123" in r.getMessage() for r in caplog.records
               if r.levelno == logging.DEBUG)


async def test_a_lost_connection_is_a_warning_with_the_type_only(
        caplog: pytest.LogCaptureFixture) -> None:
    await _fails_then_succeeds(RedisConnectionError("Connection refused"), caplog)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert warnings[0].getMessage() == "redis apply_batch failed (ConnectionError); retrying"


async def test_a_busy_server_is_a_warning_with_the_type_only(
        caplog: pytest.LogCaptureFixture) -> None:
    await _fails_then_succeeds(ResponseError("BUSY Redis is busy running a script."), caplog)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "redis apply_batch failed (ResponseError); retrying"]
