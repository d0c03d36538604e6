"""What /metrics shows before anything happened: runtime collectors, zeroed label sets."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from streamproc.metrics import (
    REDIS_OPERATIONS,
    SNAPSHOT_REJECT_REASONS,
    Topics,
    create_metrics,
    set_segment_names,
)
from streamproc.runtime.scoring import _reason_code

ROOT = Path(__file__).resolve().parents[2]


def test_process_and_python_collectors_are_served() -> None:
    registry = CollectorRegistry()
    create_metrics(registry)
    page = generate_latest(registry).decode()
    for series in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                   "process_open_fds", "python_info", "python_gc_objects_collected_total"):
        assert re.search(rf"^{series}(\{{| )", page, re.M), series


def test_every_labelled_counter_starts_at_zero_for_its_label_values() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry, topics=Topics("clicks", "orders", ("out-a", "out-b")))
    for f in fields(metrics):
        metric = getattr(metrics, f.name)
        if isinstance(metric, Counter) and metric._labelnames:
            samples = [s for fam in metric.collect() for s in fam.samples
                       if s.name.endswith("_total")]
            assert samples, f"{f.name} has no series before its first increment"
            assert {s.value for s in samples} == {0.0}, f.name
    value = registry.get_sample_value
    assert value("streamproc_dead_letters_total",
                 {"topic": "clicks", "reason": "not_json"}) == 0.0
    assert value("streamproc_dead_letters_total",
                 {"topic": "orders", "reason": "late_event"}) == 0.0
    assert value("streamproc_duplicate_events_total", {"topic": "orders"}) == 0.0
    assert value("streamproc_redis_errors_total", {"operation": "apply_batch"}) == 0.0
    assert value("streamproc_model_snapshots_rejected_total", {"reason": "signature"}) == 0.0
    assert value("streamproc_publish_errors_total", {"topic": "out-b"}) == 0.0
    assert value("streamproc_events_total", {"topic": "clicks", "event_type": "page_view",
                                             "outcome": "applied"}) == 0.0
    assert value("streamproc_events_total", {"topic": "orders", "event_type": "unknown",
                                             "outcome": "rejected"}) == 0.0
    assert value("streamproc_churn_alerts_total", {"risk_level": "critical"}) == 0.0


def test_redis_operations_cover_every_call_site() -> None:
    """Each operation name the runtime passes to Retrier.call has a zeroed series."""
    source = "\n".join(p.read_text(encoding="utf-8")
                       for p in (ROOT / "streamproc" / "runtime").glob("*.py"))
    used = set(re.findall(r"\.call\(\s*\"([a-z_]+)\"", source))
    assert used
    assert used <= set(REDIS_OPERATIONS), sorted(used - set(REDIS_OPERATIONS))


@pytest.mark.parametrize("reason", [
    "bad signature", "foreign key", "bad magic", "truncated blob", "bad length",
    "unknown format 3", "unloadable pickle", "version 4 not found", "type mismatch",
    "not a model bundle", "anything else"])
def test_snapshot_refusal_reasons_are_all_zeroed(reason: str) -> None:
    assert _reason_code(reason) in SNAPSHOT_REJECT_REASONS


def test_segment_names_follow_the_model() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry, runtime=False)
    set_segment_names(metrics, {0: "regulars", 1: "at risk"})
    value = registry.get_sample_value
    assert value("streamproc_segment_info", {"segment": "1", "name": "at risk"}) == 1.0
    set_segment_names(metrics, {0: "lapsed"})
    assert value("streamproc_segment_info", {"segment": "0", "name": "lapsed"}) == 1.0
    assert value("streamproc_segment_info", {"segment": "0", "name": "regulars"}) is None
    assert value("streamproc_segment_info", {"segment": "1", "name": "at risk"}) is None
