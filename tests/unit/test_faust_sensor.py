"""The lean Faust sensor exports exactly what Faust's stock Prometheus sensor exports."""

from __future__ import annotations

from types import SimpleNamespace

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry

from streamproc.runtime.faust_sensor import LeanPrometheusMonitor


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


def _drive(monitor: PrometheusMonitor) -> None:
    streams = [_Stream("ingest"), _Stream("trainer")]
    tps = [TP("clicks", 0), TP("clicks", 1), TP("purchases", 0)]
    for rebalance in range(2):
        for n in range(30):
            tp, stream = tps[n % 3], streams[n % 2]
            message = SimpleNamespace(time_in=None)
            monitor.on_message_in(tp, 100 * rebalance + n, message)
            state = monitor.on_stream_event_in(tp, n, stream, SimpleNamespace())
            monitor.on_stream_event_out(tp, n, stream, SimpleNamespace(), state)
            monitor.on_message_out(tp, n, message)
        # A rebalance removes the per-partition series; later messages must recreate them.
        monitor._clear_partition_related_metrics()
        monitor.on_message_in(tps[rebalance], 999, SimpleNamespace(time_in=None))


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
    _drive(PrometheusMonitor(metrics=FaustMetrics.create(stock_registry, "x")))
    _drive(LeanPrometheusMonitor(metrics=FaustMetrics.create(lean_registry, "x")))
    stock, lean = _samples(stock_registry), _samples(lean_registry)
    assert lean == stock
    assert stock["x_messages_received_total", ()] == 62
    assert stock["x_messages_received_per_topics_partition", (("partition", "1"),
                                                               ("topic", "clicks"))] == 999
