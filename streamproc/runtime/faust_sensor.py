"""Faust's Prometheus sensor, with its per-message work deferred to the scrape.

Faust calls its sensor five times per Kafka message (message in, stream event in
and out, message out, partition end offset). The stock ``PrometheusMonitor``
updates Prometheus metrics in every call: labelled-child lookups, a locked
increment each, a histogram observation. At one event per message that was 15 %
of a worker's throughput in an A/B run (``load_tests/README.md``).

Faust's base ``Monitor``, which every Faust app runs anyway, already counts most of
it in plain attributes. This subclass keeps only the base bookkeeping (plus the
event runtimes) on the per-message path and moves the totals into the very same
Prometheus series when they are read: a collector registered ahead of Faust's
metrics flushes the deltas on every ``registry.collect()`` (the ``/metrics`` page),
and the runtime backlog flushes itself every ``FLUSH_EVERY`` events, so memory
stays bounded even when nobody scrapes. Every other hook (sends, commits,
rebalances) is the stock one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from faust.sensors.monitor import Monitor
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor, setup_prometheus_sensors
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from streamproc.metrics import observe_many

#: Event runtimes kept before they are observed without waiting for a scrape.
FLUSH_EVERY = 4096


class LeanPrometheusMonitor(PrometheusMonitor):
    """``PrometheusMonitor`` whose per-message hooks only count; :meth:`flush` exports.

    Between flushes the exported series lag behind; once flushed they hold exactly
    what the stock sensor's would (tests/unit/test_faust_sensor.py).
    """

    def __init__(self, metrics: FaustMetrics, **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        self._runtimes_ms: list[float] = []
        self._stream_labels: dict[str, str] = {}  # str(stream) -> the stock series label
        # What the Prometheus series hold already, to export only the difference.
        self._flushed_received = 0
        self._flushed_by_topic: Counter[str] = Counter()
        self._flushed_events = 0
        self._flushed_by_stream: Counter[str] = Counter()
        self._events_out_active = 0  # stream events that left (the stock gauge's dec)

    # -- per-message hooks: the base Monitor's counters and nothing else ---------------------

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        """Count a message handed to the streams (exported by :meth:`flush`)."""
        Monitor.on_message_in(self, tp, offset, message)

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any,
                           event: Any) -> dict[str, Any] | None:
        """Count an event entering a stream (exported by :meth:`flush`)."""
        state = Monitor.on_stream_event_in(self, tp, offset, stream, event)
        key = self.stream_lookup[stream]
        if key not in self._stream_labels:
            self._stream_labels[key] = f"stream.{self._stream_label(stream)}.events"
        return state

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any,
                            state: dict[str, Any] | None = None) -> None:
        """Record an event's runtime (observed by :meth:`flush`)."""
        Monitor.on_stream_event_out(self, tp, offset, stream, event, state)
        self._events_out_active += 1
        if state is not None:
            self._runtimes_ms.append(self.secs_to_ms(state["time_total"]))
            if len(self._runtimes_ms) >= FLUSH_EVERY:
                self.flush()

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        """Count an acknowledged message (exported by :meth:`flush`)."""
        Monitor.on_message_out(self, tp, offset, message)

    def track_tp_end_offset(self, tp: Any, offset: int) -> None:
        """Remember a partition's end offset (exported by :meth:`flush`)."""
        Monitor.track_tp_end_offset(self, tp, offset)

    # -- export ------------------------------------------------------------------------------

    def flush(self) -> None:
        """Move everything counted since the last flush into the Prometheus series."""
        m = self._metrics
        received = self.messages_received_total
        m.messages_received.inc(received - self._flushed_received)
        self._flushed_received = received
        _inc_by_delta(self.messages_received_by_topic, self._flushed_by_topic,
                      lambda topic: m.messages_received_per_topics.labels(topic=topic))
        for tp, offset in self.tp_read_offsets.items():
            m.messages_received_per_topics_partition.labels(
                topic=tp.topic, partition=tp.partition).set(offset)
        for tp, end in self.tp_end_offsets.items():
            m.topic_partition_end_offset.labels(topic=tp.topic, partition=tp.partition).set(end)
        m.active_messages.set(self.messages_active)
        events = self.events_total
        m.total_events.inc(events - self._flushed_events)
        self._flushed_events = events
        _inc_by_delta(self.events_by_stream, self._flushed_by_stream,
                      lambda key: m.total_events_per_stream.labels(
                          stream=self._stream_labels[key]))
        m.total_active_events.set(events - self._events_out_active)
        runtimes, self._runtimes_ms = self._runtimes_ms, []
        observe_many(m.events_runtime_latency, runtimes)

    def _clear_partition_related_metrics(self) -> None:
        # The stock sensor drops the per-partition series (and the base monitor's offsets)
        # on rebalance: export what was counted before, so no message goes uncounted.
        self.flush()
        super()._clear_partition_related_metrics()


def _inc_by_delta(counts: Mapping[str, int], flushed: Counter[str],
                  child: Callable[[str], Any]) -> None:
    """Increase each labelled counter by what ``counts`` gained since the last flush."""
    for key, n in counts.items():
        delta = n - flushed[key]
        if delta:
            child(key).inc(delta)
            flushed[key] = n


class FlushOnCollect(Collector):
    """Exports nothing itself: flushes the monitor before the series after it are read."""

    def __init__(self) -> None:
        self.monitor: LeanPrometheusMonitor | None = None

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        if self.monitor is not None:
            self.monitor.flush()
        return ()


def setup_lean_prometheus_sensors(app: Any, *, pattern: str, registry: CollectorRegistry,
                                  name_prefix: str) -> None:
    """Faust's ``setup_prometheus_sensors`` (metrics page included), with the lean monitor."""
    # Registered before Faust's metrics because a registry collects in registration order.
    flusher = FlushOnCollect()
    registry.register(flusher)
    setup_prometheus_sensors(app, pattern=pattern, registry=registry, name_prefix=name_prefix)
    app.monitor = flusher.monitor = LeanPrometheusMonitor(metrics=app.monitor._metrics)
