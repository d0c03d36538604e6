"""The worker's scoring driver on the in-memory twin of its store, with a hand-set clock."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Sequence
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from streamproc.adapters.redis_store import CustomerUpdate
from streamproc.core.eventclock import PartitionClock
from streamproc.core.features import DAY, InMemoryProfiles, event_lane, event_ops
from streamproc.core.modelset import ModelBundle
from streamproc.core.replay import event_namespace
from streamproc.core.store import InMemoryStore, StateWrite
from streamproc.core.training import decode_record
from streamproc.metrics import create_metrics
from streamproc.runtime.pipeline import ActivityBatch, OutRecord, Retrier, no_acks
from streamproc.runtime.scoring import Scorer
from streamproc.settings import Settings
from tests.unit.test_step import T0, bundle

# Event times here lag the hand-set wall clock by days: publish them (history is tested in
# test_step.py and tests/integration/test_history.py).
SETTINGS = Settings(models={"signing_key": "k", "min_labels_before_alerts": 0,
                            "history_lag_hours": 0.0})
OPEN = PartitionClock(-math.inf, math.inf)  # nothing lags, no watermark yet


class FixedModels:
    """A model source that always has the same version."""

    def __init__(self, model: ModelBundle | None) -> None:
        self.bundle = model

    async def refresh(self) -> bool:
        return False


def scorer(store: InMemoryStore, clock: PartitionClock = OPEN) -> Scorer:
    metrics = create_metrics(CollectorRegistry())
    s = Scorer(SETTINGS, store, FixedModels(bundle()), metrics, Retrier(metrics, 0.1),
               clock=lambda: T0 + 1e6)
    s.clock_for = lambda _p: clock
    return s


def twin() -> InMemoryStore:
    return InMemoryStore(InMemoryProfiles.empty(clock=lambda: T0))


def apply(store: InMemoryStore, cid: str, n: int, ts: float, kind: str = "view") -> None:
    if kind == "order":
        value: dict[str, Any] = {"event_id": f"o{n}", "customer_id": cid, "order_id": f"o{n}",
                                 "type": "order", "total": 10.0, "currency": "EUR",
                                 "items": [{"product_id": "p", "quantity": 1,
                                            "unit_price": 10.0}]}
    else:
        value = {"event_id": f"e{n}", "customer_id": cid, "event_type": "page_view",
                 "session_id": f"s{n}"}
    event = event_namespace(value)
    store.profiles.apply(cid, value["event_id"], event_ops(event, ts), ts, event_lane(event))


def batch(store: InMemoryStore, activity: dict[str, list[float]], partition: int = 0,
          ) -> ActivityBatch:
    """What the pipeline hands the scorer after the Redis call applied these customers."""
    updates = [CustomerUpdate(r.customer_id, r.profile or {}, r, [1])
               for r in store.read_now(list(activity))]
    qualifying = {cid: [(t, 0.0) for t in times] for cid, times in activity.items()}
    return ActivityBatch(updates, qualifying, dict.fromkeys(activity, partition), 0.0)


def on(records: Sequence[OutRecord], topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in records if r.topic == topic]


class Sent:
    """A sender that keeps what the sweep publishes."""

    def __init__(self) -> None:
        self.records: list[OutRecord] = []

    async def __call__(self, records: Sequence[OutRecord]) -> Awaitable[None]:
        self.records += records
        return no_acks()


async def test_a_batch_scores_its_active_customers_and_schedules_their_checks() -> None:
    store = twin()
    apply(store, "c1", 0, T0)
    apply(store, "c2", 1, T0 + 60)
    s = scorer(store)
    out = await s.on_batch(batch(store, {"c1": [T0], "c2": [T0 + 60]}))
    topics = SETTINGS.topics
    assert sorted(r["customer_id"] for r in on(out, topics.segment_changes)) == ["c1", "c2"]
    # Activity is scored; training snapshots come from the census checks only.
    assert [r for r in out if r.topic == topics.training_examples] == []
    [c1] = store.read_now(["c1"])
    assert c1.state is not None
    assert (c1.state.owner, c1.state.last_activity, c1.state.segment is not None) == \
        (0, T0, True)
    assert store.schedules["checks:0"] == {"c1": T0 + 7 * DAY, "c2": T0 + 60 + 7 * DAY}
    assert s.metrics.segment_changes._value.get() == 2


async def test_activity_waits_while_another_input_lags_then_the_sweep_scores_it() -> None:
    store = twin()
    apply(store, "c1", 0, T0)
    behind = PartitionClock(T0 - 3600, T0 - 3600)  # the other topic is an hour behind
    s = scorer(store, behind)
    out = await s.on_batch(batch(store, {"c1": [T0]}))
    assert on(out, SETTINGS.topics.segment_changes) == []
    assert store.schedules["deferred:0"] == {"c1": T0}
    sent = Sent()
    await (await s.sweep(0, sent))
    assert sent.records == []  # still behind
    s.clock_for = lambda _p: PartitionClock(T0, T0)
    await (await s.sweep(0, sent))
    [change] = on(sent.records, SETTINGS.topics.segment_changes)
    assert change["previous"] is None
    assert store.schedules["deferred:0"] == {}
    [c1] = store.read_now(["c1"])
    assert c1.state is not None
    assert c1.state.last_snapshot == T0


async def test_the_sweep_fires_idle_checks_and_forgets_expired_customers() -> None:
    store = twin()
    apply(store, "c1", 1, T0 - 40 * DAY)  # a customer for 40 days: old enough to alert
    apply(store, "c1", 0, T0)
    s = scorer(store)
    await s.on_batch(batch(store, {"c1": [T0]}))
    store.write_now([StateWrite("c-gone", "", None, {"checks:0": T0})])
    s.clock_for = lambda _p: PartitionClock(T0 + 22 * DAY, math.inf)
    sent = Sent()
    await (await s.sweep(0, sent))
    assert s.metrics.idle_checks._value.get() == 3  # days 7, 14 and 21
    [record] = [r for r in sent.records if r.topic == SETTINGS.topics.training_examples]
    assert [e.at for e in decode_record(record.value).examples] == [
        T0 + d * DAY for d in (7, 14, 21)]
    [alert] = on(sent.records, SETTINGS.topics.churn_alerts)  # recency 21: p = 0.7
    assert alert["event_time"].startswith("2026-02-23")
    assert store.schedules["checks:0"] == {"c1": T0 + 28 * DAY}
    assert store.read_now(["c-gone"])[0].state is None


async def test_a_customer_written_meanwhile_is_read_and_decided_again_not_overwritten(
        ) -> None:
    store = twin()
    apply(store, "c1", 0, T0)  # a page view, consumed from partition 0 by worker A
    apply(store, "c1", 1, T0 + 600, "order")  # its order, on partition 1, worker B
    a_batch = batch(store, {"c1": [T0]}, partition=0)
    b_batch = batch(store, {"c1": [T0 + 600]}, partition=1)  # both read the same state
    a, b = scorer(store), scorer(store)
    b_out = await b.on_batch(b_batch)
    a_out = await a.on_batch(a_batch)
    first = [r for r in on(b_out + a_out, SETTINGS.topics.segment_changes)
             if r["previous"] is None]
    assert len(first) == 1  # one first assignment, not one per worker
    assert a.metrics.scoring_conflicts.labels("retried")._value.get() == 1
    assert a.metrics.multi_partition_customers._value.get() == 1
    [c1] = store.read_now(["c1"])
    assert c1.state is not None
    assert (c1.state.owner, c1.state.spread, c1.state.last_activity) == (1, True, T0 + 600)
    assert c1.state.pending == ()  # the census takes the snapshots
    assert c1.state.last_snapshot == T0 + 600  # the first scoring set the census phase
    assert store.schedules.get("checks:0", {}) == {}  # one schedule: the owner's
    assert store.schedules["checks:1"] == {"c1": T0 + 600 + 7 * DAY}
