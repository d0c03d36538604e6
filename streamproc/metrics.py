"""Every Prometheus metric streamproc exports, built in one factory.

Metrics take an injectable registry so tests use a fresh ``CollectorRegistry``.
Labels carry only bounded values (topic, event type, outcome, reason code,
segment id, risk level); never customer ids or payloads. Every labelled counter starts
with a 0 for each label value the code can use, so rates and panels work before the
first increment; the registry also gets the standard ``process_*`` and ``python_*``
collectors.
"""

from __future__ import annotations

import collections
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Final, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from streamproc.core.events import REJECT_REASONS, ClickstreamEventType
from streamproc.core.lifecycle import LifecycleStage
from streamproc.core.outputs import RiskLevel

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
EVENT_AGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0, 86400.0)
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
PROBABILITY_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))


#: Operations the worker names when it calls Redis (``Retrier.call``; a test checks the code).
REDIS_OPERATIONS: Final = ("apply_batch", "read_scoring_state", "write_scoring_state",
                           "sweep", "load_model", "train", "event_time", "ping",
                           "deployment_check")
#: Reasons a model snapshot is refused (``scoring._reason_code`` and the trainer state).
SNAPSHOT_REJECT_REASONS: Final = ("signature", "foreign", "magic", "truncated", "length",
                                  "format", "unloadable", "not_found", "type", "not_a",
                                  "other", "trainer_state")
#: Kinds of training examples (``parse_training_record``).
TRAINING_KINDS: Final = ("profile", "label")
CLICKSTREAM_TYPES: Final[tuple[str, ...]] = get_args(ClickstreamEventType)
PURCHASE_TYPES: Final = ("order", "refund")
OUTCOMES: Final = ("applied", "duplicate", "rejected")


@dataclass(frozen=True)
class Metrics:
    """The metric objects, one attribute each; documentation is each metric's help text."""

    events: Counter
    dead_letters: Counter
    duplicates: Counter
    cart_links_dropped: Counter
    batch_events: Histogram
    batch_seconds: Histogram
    event_age_seconds: Histogram
    ingest_to_publish_seconds: Histogram
    redis_seconds: Histogram
    redis_errors: Counter
    redis_up: Gauge
    publish_errors: Counter
    redis_state_lost: Gauge
    ready: Gauge
    consumer_lag: Gauge
    watermark_seconds: Gauge
    segment_customers: Gauge
    segment_info: Info
    segment_changes: Counter
    churn_alerts: Counter
    lifecycle_changes: Counter
    history_suppressed: Counter
    churn_probability: Histogram
    model_version: Gauge
    model_snapshot_age_seconds: Gauge
    model_snapshot_timestamp_seconds: Gauge
    model_rejected_snapshots: Counter
    churn_model_ready: Gauge
    churn_labels: Counter
    churn_roc_auc: Gauge
    churn_log_loss: Gauge
    churn_brier: Gauge
    churn_base_rate: Gauge
    churn_predicted_positive_rate: Gauge
    churn_precision: Gauge
    churn_recall: Gauge
    churn_horizon_seconds: Gauge
    training_examples: Counter
    idle_checks: Counter
    feature_set_mismatches: Counter
    scoring_conflicts: Counter
    multi_partition_customers: Counter


@dataclass(frozen=True)
class Topics:
    """The topic names label values come from (the defaults of ``TopicSettings``)."""

    clickstream: str = "clickstream"
    purchases: str = "purchases"
    outputs: tuple[str, ...] = ("segment-changes", "churn-alerts", "streamproc-deadletter",
                                "streamproc-training")


def create_metrics(registry: CollectorRegistry | None = None, *, topics: Topics | None = None,
                   runtime: bool = True) -> Metrics:
    """Build every metric on ``registry`` (a fresh one when None), every labelled counter
    at 0 for the label values ``topics`` and the code allow; ``runtime`` adds the
    ``process_*`` and ``python_*`` collectors (the worker's registry is its own, so the
    client's default registry, which has them, is not served)."""
    reg = registry if registry is not None else CollectorRegistry()
    metrics = _build(reg)
    zero_labelled_counters(metrics, topics or Topics())
    if runtime:
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
    return metrics


#: What a feature-set mismatch skipped (``feature_set_mismatches``'s ``kind`` label).
FEATURE_SET_KINDS = ("model", "pending_snapshot", "training_example", "trainer_state")


def zero_labelled_counters(metrics: Metrics, topics: Topics) -> None:
    """Create every known label set of every labelled counter (at 0).

    A counter that appears only at its first increment has no earlier sample: ``rate`` and
    ``increase`` miss that first step and dashboards show "No data" until then.
    """
    inputs = {topics.clickstream: CLICKSTREAM_TYPES, topics.purchases: PURCHASE_TYPES}
    for topic, types in inputs.items():
        for event_type in types:
            for outcome in OUTCOMES:
                metrics.events.labels(topic, event_type, outcome)
        metrics.events.labels(topic, "unknown", "rejected")
        metrics.duplicates.labels(topic)
        for reason in sorted(REJECT_REASONS):
            metrics.dead_letters.labels(topic, reason)
    for operation in REDIS_OPERATIONS:
        metrics.redis_errors.labels(operation)
    for topic in topics.outputs:
        metrics.publish_errors.labels(topic)
    for level in get_args(RiskLevel):
        metrics.churn_alerts.labels(level)
    for reason in SNAPSHOT_REJECT_REASONS:
        metrics.model_rejected_snapshots.labels(reason)
    for label in ("0", "1"):
        metrics.churn_labels.labels(label)
    for kind in TRAINING_KINDS:
        metrics.training_examples.labels(kind)
    for kind in FEATURE_SET_KINDS:
        metrics.feature_set_mismatches.labels(kind)
    for outcome in ("retried", "gave_up"):
        metrics.scoring_conflicts.labels(outcome)
    for stage in get_args(LifecycleStage):
        metrics.lifecycle_changes.labels(stage)


def set_segment_names(metrics: Metrics, names: Mapping[int, str]) -> None:
    """Publish the current model's segment names (``streamproc_segment_info``), dropping
    segments the model no longer has, so dashboards can show names instead of ids."""
    metrics.segment_info.clear()
    for segment_id, name in names.items():
        metrics.segment_info.labels(str(segment_id)).info({"name": name})


def _build(reg: CollectorRegistry) -> Metrics:
    return Metrics(
        events=Counter("streamproc_events_total", "Input events by topic, event type and outcome "
                       "(applied, duplicate, rejected).", ["topic", "event_type", "outcome"],
                       registry=reg),
        dead_letters=Counter("streamproc_dead_letters_total",
                             "Dead-letter records acknowledged by the broker, by source topic "
                             "and reason code.",
                             ["topic", "reason"], registry=reg),
        duplicates=Counter("streamproc_duplicate_events_total",
                           "Redelivered events suppressed by the event_id dedupe.", ["topic"],
                           registry=reg),
        cart_links_dropped=Counter(
            "streamproc_cart_links_dropped_total",
            "Cart/order session links dropped because a customer's link ring "
            "(INGEST__LINKED_SESSIONS) was full: each may be a converted cart session not "
            "counted.", registry=reg),
        batch_events=Histogram("streamproc_batch_events", "Valid events per processed batch.",
                               buckets=BATCH_BUCKETS, registry=reg),
        batch_seconds=Histogram("streamproc_batch_duration_seconds",
                                "Wall time to process one batch end to end.",
                                buckets=LATENCY_BUCKETS, registry=reg),
        event_age_seconds=Histogram("streamproc_event_age_seconds",
                                    "Event time to the moment its batch's effects were durable.",
                                    buckets=EVENT_AGE_BUCKETS, registry=reg),
        ingest_to_publish_seconds=Histogram(
            "streamproc_ingest_to_publish_seconds",
            "From receiving a batch to its outputs being acknowledged by the broker.",
            buckets=LATENCY_BUCKETS, registry=reg),
        redis_seconds=Histogram("streamproc_redis_roundtrip_seconds",
                                "Redis round-trip latency by operation.", ["operation"],
                                buckets=LATENCY_BUCKETS, registry=reg),
        redis_errors=Counter("streamproc_redis_errors_total",
                             "Failed Redis calls (retried with backoff) by operation.",
                             ["operation"], registry=reg),
        redis_up=Gauge("streamproc_redis_up", "1 when the last Redis call succeeded.",
                       registry=reg),
        publish_errors=Counter(
            "streamproc_publish_errors_total",
            "Output records the broker did not acknowledge, by output topic; each is sent "
            "again with backoff while its batch's offsets wait.", ["topic"], registry=reg),
        redis_state_lost=Gauge(
            "streamproc_redis_state_lost",
            "1 while Redis lacks this deployment's marker (flushed, restarted without its data "
            "or replaced): the worker consumes and writes nothing until an operator restores "
            "Redis or runs `streamproc deployment accept`.", registry=reg),
        ready=Gauge("streamproc_ready", "1 when the worker is ready to process events "
                    "(started, Redis answering, outputs being acknowledged).", registry=reg),
        consumer_lag=Gauge("streamproc_consumer_lag_messages",
                           "Messages between the committed offset and the log end.",
                           ["topic", "partition"], registry=reg),
        watermark_seconds=Gauge("streamproc_watermark_timestamp_seconds",
                                "Event-time watermark per input partition (Unix seconds).",
                                ["partition"], registry=reg),
        segment_customers=Gauge("streamproc_segment_customers",
                                "Customers last assigned to each segment by this worker.",
                                ["segment"], registry=reg),
        segment_info=Info("streamproc_segment",
                          "Name of each segment of the model version this worker scores "
                          "with (value 1); join it on segment to show names.", ["segment"],
                          registry=reg),
        segment_changes=Counter("streamproc_segment_changes_total",
                                "segment_changed events published.", registry=reg),
        churn_alerts=Counter("streamproc_churn_alerts_total", "Churn alerts published by risk.",
                             ["risk_level"], registry=reg),
        lifecycle_changes=Counter("streamproc_lifecycle_changes_total",
                                  "lifecycle_changed events published by new stage.",
                                  ["stage"], registry=reg),
        history_suppressed=Counter(
            "streamproc_history_suppressed_total",
            "Alerts, segment changes and lifecycle changes held back as history (older "
            "than MODELS__HISTORY_LAG_HOURS).", registry=reg),
        churn_probability=Histogram("streamproc_churn_probability",
                                    "Churn probabilities of scored customers.",
                                    buckets=PROBABILITY_BUCKETS, registry=reg),
        model_version=Gauge("streamproc_model_version", "Model version this worker scores with.",
                            registry=reg),
        model_snapshot_age_seconds=Gauge(
            "streamproc_model_snapshot_age_seconds",
            "Wall seconds since the current model snapshot was published.", registry=reg),
        model_snapshot_timestamp_seconds=Gauge(
            "streamproc_model_snapshot_timestamp_seconds",
            "Unix time the current model snapshot was published.", registry=reg),
        model_rejected_snapshots=Counter(
            "streamproc_model_snapshots_rejected_total",
            "Model snapshots refused (bad signature or format); never unpickled.",
            ["reason"], registry=reg),
        churn_model_ready=Gauge("streamproc_churn_model_ready",
                                "1 once the churn model learned enough labels to alert.",
                                registry=reg),
        churn_labels=Counter("streamproc_churn_labels_total",
                             "Delayed churn labels produced, by label.", ["label"],
                             registry=reg),
        # Quality gauges carry the churn definition as a label so that, like any labelled
        # gauge, they are absent until set: a figure that cannot be computed yet (one class
        # seen so far) is not exported, rather than a NaN or a made-up 0.
        churn_roc_auc=Gauge("streamproc_churn_roc_auc",
                            "Progressive ROC AUC of the churn model on delayed labels (absent "
                            "until both classes are in the window).", ["definition"],
                            registry=reg),
        churn_log_loss=Gauge("streamproc_churn_log_loss",
                             "Progressive log loss of the churn model on delayed labels (absent "
                             "until both classes are in the window).", ["definition"],
                             registry=reg),
        churn_brier=Gauge("streamproc_churn_brier",
                          "Progressive Brier score of the churn model on delayed labels (absent "
                          "until both classes are in the window).", ["definition"],
                          registry=reg),
        churn_base_rate=Gauge("streamproc_churn_base_rate",
                              "Share of churned among the recent delayed labels: what the "
                              "quality figures are read against.", ["definition"],
                              registry=reg),
        churn_predicted_positive_rate=Gauge(
            "streamproc_churn_predicted_positive_rate",
            "Share of recent predictions at or above the alert threshold (near 0 or 1: the "
            "model says the same of everyone).", ["definition"], registry=reg),
        churn_precision=Gauge("streamproc_churn_precision",
                              "Precision at the alert threshold on delayed labels.",
                              ["definition"], registry=reg),
        churn_recall=Gauge("streamproc_churn_recall",
                           "Recall at the alert threshold on delayed labels.", ["definition"],
                           registry=reg),
        churn_horizon_seconds=Gauge("streamproc_churn_horizon_seconds",
                                 "The churn horizon in use (set, or learned from the "
                                 "purchase rhythm).", ["definition"], registry=reg),
        training_examples=Counter("streamproc_training_examples_total",
                                  "Examples learned by the trainer, by kind.", ["kind"],
                                  registry=reg),
        idle_checks=Counter("streamproc_idle_checks_total",
                            "Idle customers re-scored as the watermark advanced.", registry=reg),
        feature_set_mismatches=Counter(
            "streamproc_feature_set_mismatches_total",
            "Stored model inputs of another feature set, skipped: pending snapshots dropped, "
            "training examples skipped, model snapshots and trainer states not loaded.",
            ["kind"], registry=reg),
        scoring_conflicts=Counter(
            "streamproc_scoring_conflicts_total",
            "Scoring-state writes refused because another worker wrote the customer since it "
            "was read: retried (read and decided again) or given up after the last attempt.",
            ["outcome"], registry=reg),
        multi_partition_customers=Counter(
            "streamproc_multi_partition_customers_total",
            "Customers whose events arrived on more than one partition (producers with "
            "different partitioners), counted once each.", registry=reg),
    )


def metric_names(metrics: Metrics) -> list[str]:
    """Every exported metric family name (for the README reference check)."""
    return [getattr(metrics, f.name)._name for f in fields(metrics)]


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every value, with one increment per bucket touched.

    prometheus_client has no bulk observe, and one ``observe`` per event of a 20,000-event
    batch costs ~0.9 us each. This writes the same state ``observe`` writes (the sum and
    the per-bucket counts, which the client accumulates when it renders);
    tests/unit/test_metrics.py checks the two agree on every sample.
    """
    if not values:
        return
    bounds = histogram._upper_bounds  # ascending, the last one +Inf
    # NaN compares false with every bound: observe() counts it in no bucket, nor does this.
    buckets = collections.Counter(bisect_left(bounds, v) for v in values if v == v)
    for index, count in buckets.items():
        histogram._buckets[index].inc(count)
    histogram._sum.inc(sum(values))
