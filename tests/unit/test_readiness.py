"""Readiness: every flag that feeds /readyz moves the ready gauge at once."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streamproc.metrics import create_metrics
from streamproc.runtime.readiness import Readiness


def _ready_gauge(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("streamproc_ready")


def test_ready_only_when_started_redis_verified_and_outputs_acknowledged() -> None:
    registry = CollectorRegistry()
    state = Readiness(create_metrics(registry))
    assert not state.ready
    state.mark_started()
    assert not state.ready  # the deployment marker is not verified yet
    state.on_guard("ok", None)
    assert state.ready
    assert _ready_gauge(registry) == 1
    state.on_redis(False)
    assert (state.ready, _ready_gauge(registry)) == (False, 0)
    state.on_redis(True)
    state.on_publish(False)
    assert (state.ready, _ready_gauge(registry)) == (False, 0)
    state.on_publish(True)
    assert (state.ready, _ready_gauge(registry)) == (True, 1)


def test_a_lost_redis_is_reported_with_its_reason() -> None:
    registry = CollectorRegistry()
    state = Readiness(create_metrics(registry))
    state.mark_started()
    state.on_guard("lost", "the deployment marker is gone")
    assert registry.get_sample_value("streamproc_redis_state_lost") == 1
    assert state.body() == {"ready": False, "started": True, "redis": True,
                            "redis_state": "lost", "publish": True,
                            "reason": "the deployment marker is gone"}
    state.on_guard("ok", None)
    assert registry.get_sample_value("streamproc_redis_state_lost") == 0
    assert "reason" not in state.body()
