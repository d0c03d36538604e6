"""The lean Faust sensor exports exactly what Faust's stock Prometheus sensor exports."""

from __future__ import annotations

from types import SimpleNamespace

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from streamproc.runtime.faust_sensor import FLUSH_EVERY, FlushOnCollect, LeanPrometheusMonitor


class _Task:
    """A weak-referenceable task owner, as Faust's monitor keeps them in a WeakKeyDictionary."""

    def __init__(self, label: str) -> None:
        self.label = label


class _Stream:
    """What the sensor reads of a Faust stream."""

    def __init__(self, label: str) -> None:
        self.shortlabel = f"Stream: {label}"
        self.task_owner = _Task(label)

    def __str__(self) -> str:
        return self.shortlabel


def _drive(monitor: PrometheusMonitor, registry: CollectorRegistry,
           ) -> list[dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """Messages through the hooks, with rebalances; the registry's samples at each stop."""
    streams = [_Stream("ingest"), _Stream("trainer")]
    tps = [TP("clicks", 0), TP("clicks", 1), TP("purchases", 0)]
    seen = []
    for rebalance in range(2):
        for n in range(30):
            tp, stream = tps[n % 3], streams[n % 2]
            message = SimpleNamespace(time_in=None)
            monitor.on_message_in(tp, 100 * rebalance + n, message)
            monitor.track_tp_end_offset(tp, 1000 * rebalance + n)
            state = monitor.on_stream_event_in(tp, n, stream, SimpleNamespace())
            if n == 15:
                seen.append(_samples(registry))  # a scrape while an event is in flight
            monitor.on_stream_event_out(tp, n, stream, SimpleNamespace(), state)
            if n % 7:
                monitor.on_message_out(tp, n, message)  # some messages stay unacknowledged
        seen.append(_samples(registry))
        # A rebalance removes the per-partition series; later messages must recreate them.
        monitor._clear_partition_related_metrics()
        seen.append(_samples(registry))
        monitor.on_message_in(tps[rebalance], 999, SimpleNamespace(time_in=None))
    seen.append(_samples(registry))
    return seen


def _lean(registry: CollectorRegistry) -> LeanPrometheusMonitor:
    """As setup_lean_prometheus_sensors wires it: the flusher ahead of Faust's metrics."""
    flusher = FlushOnCollect()
    registry.register(flusher)
    monitor = LeanPrometheusMonitor(metrics=FaustMetrics.create(registry, "x"))
    flusher.monitor = monitor
    return monitor


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for metric in registry.collect():
        for s in metric.samples:
            timed = "latency" in s.name or "runtime" in s.name
            timing = timed and not s.name.endswith("_count")
            if timing or s.name.endswith("_created"):
                continue  # creation times and timings differ between runs; counts must not
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_lean_sensor_exports_the_same_series_and_values() -> None:
    stock_registry, lean_registry = CollectorRegistry(), CollectorRegistry()
    stock_seen = _drive(PrometheusMonitor(metrics=FaustMetrics.create(stock_registry, "x")),
                        stock_registry)
    lean_seen = _drive(_lean(lean_registry), lean_registry)
    assert lean_seen == stock_seen  # at every scrape, not only at the end
    stock = stock_seen[-1]
    assert stock["x_messages_received_total", ()] == 62
    assert stock["x_messages_received_per_topics_partition", (("partition", "1"),
                                                               ("topic", "clicks"))] == 999


def test_unscraped_runtimes_are_observed_in_bounded_batches() -> None:
    registry = CollectorRegistry()
    monitor = _lean(registry)
    stream, tp = _Stream("ingest"), TP("clicks", 0)
    for n in range(FLUSH_EVERY * 2 + 10):
        state = monitor.on_stream_event_in(tp, n, stream, SimpleNamespace())
        monitor.on_stream_event_out(tp, n, stream, SimpleNamespace(), state)
        assert len(monitor._runtimes_ms) < FLUSH_EVERY
    histogram = monitor._metrics.events_runtime_latency
    assert histogram._sum.get() >= 0
    # Two self-flushes happened without any scrape; the scrape exports the last ten.
    assert sum(b.get() for b in histogram._buckets) == FLUSH_EVERY * 2
    assert _samples(registry)["x_events_runtime_ms_count", ()] == FLUSH_EVERY * 2 + 10
