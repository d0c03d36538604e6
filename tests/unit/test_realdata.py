"""The real-data evaluation's pure parts: CDNOW rows to events, labels, metrics, calibration."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from load_tests import cdnow
from load_tests.baselines import p_no_purchase, summarize
from load_tests.churn_metrics import (
    average_ranks,
    brier,
    calibration_table,
    cutoff_alerts,
    evaluate,
    pr_auc,
    roc_auc,
    streaming_alerts,
)
from streamproc.core.events import PurchaseEvent

# The file's own layout: fixed-width columns, CRLF line ends.
ROWS = [
    " 00004 0001 19970101  2   29.33\r\n",
    " 00004 0001 19970118  2   29.73\r\n",
    " 00004 0001 19970118  1   14.96\r\n",
    " 00004 0001 19971105  1   11.77\r\n",
    " 01101 0087 19970105  1    0.00\r\n",
    "\r\n",
    " 00018 0002 19970930  3   37.47\r\n",
]


def test_rows_become_orders_with_distinct_times_and_ids() -> None:
    orders = cdnow.parse_orders(ROWS)
    assert [(o.customer_id, o.day, o.seq, o.cds, o.usd) for o in orders[:3]] == [
        ("00004", date(1997, 1, 1), 0, 2, 29.33), ("00004", date(1997, 1, 18), 0, 2, 29.73),
        ("00004", date(1997, 1, 18), 1, 1, 14.96)]
    same_day = orders[1:3]
    assert same_day[1].at - same_day[0].at == timedelta(minutes=1)
    assert len({o.event_id for o in orders}) == len(orders)
    # Ids depend on the data only, so a second run (or a re-read) replays the same events.
    assert [o.event_id for o in cdnow.parse_orders(ROWS)] == [o.event_id for o in orders]
    with pytest.raises(ValueError, match="line 1: expected 5 columns"):
        cdnow.parse_orders(["00004 0001 19970101 2\n"])


def test_events_pass_the_workers_own_validation() -> None:
    for order in cdnow.parse_orders(ROWS):
        event = PurchaseEvent.model_validate(cdnow.order_event(order))
        assert event.timestamp == order.at
        assert event.total == order.usd
        assert event.currency == "USD"
        assert sum(i.quantity for i in event.items) == order.cds
    free = cdnow.order_event(cdnow.parse_orders(ROWS)[4])
    assert free["total"] == 0.0  # a free order is still an order


def test_split_population_and_labels() -> None:
    split = cdnow.Split()
    orders = cdnow.parse_orders(ROWS)
    assert split.cutoff == datetime(1997, 10, 1, tzinfo=UTC)
    assert len(split.calibration(orders)) == 5
    assert [o.event_id for o in cdnow.replay_order(orders)][:2] == [
        "cdnow-00004-19970101-0", "cdnow-01101-19970105-0"]
    population = cdnow.customers(orders, split)
    assert sorted(population) == ["00004", "00018", "01101"]
    assert population["00004"].value == pytest.approx(29.33 + 29.73 + 14.96)
    people = [population[c] for c in ("00004", "00018", "01101")]
    # 00004 comes back on 1997-11-05: 35 days after the cutoff.
    assert cdnow.churn_labels(people, split.cutoff, 273) == [0, 1, 1]
    assert cdnow.churn_labels(people, split.cutoff, 30) == [1, 1, 1]


def test_calibration_summary_in_days() -> None:
    split = cdnow.Split()
    population = cdnow.customers(cdnow.parse_orders(ROWS), split)
    s = summarize([population["00004"], population["00018"]], split)
    # 00004: purchase days Jan 1 and Jan 18 (two orders that day count once), cutoff Sep 30.
    assert s.frequency.tolist() == [1.0, 0.0]
    assert s.recency.tolist() == [17.0, 0.0]
    assert s.age.tolist() == [272.0, 0.0]
    assert s.orders.tolist() == [3.0, 1.0]
    assert s.recency_days[1] == pytest.approx(0.5)  # noon on the cutoff day
    assert s.mean_order_value[0] == pytest.approx((29.33 + 29.73 + 14.96) / 3)


def test_bgnbd_no_purchase_probability_limits() -> None:
    p_alive = np.array([1.0, 0.0, 0.4])
    x, age = np.array([2.0, 2.0, 2.0]), np.array([100.0, 100.0, 100.0])
    assert p_no_purchase(p_alive, 0.25, 30.0, x, age, 0.0).tolist() == [1.0, 1.0, 1.0]
    far = p_no_purchase(p_alive, 0.25, 30.0, x, age, 1e9)
    assert far == pytest.approx([0.0, 1.0, 0.6], abs=1e-4)  # only the dead stay silent
    # Alive: the Gamma(r + x, alpha + T) posterior's Laplace transform at t.
    assert p_no_purchase(p_alive, 0.25, 30.0, x, age, 30.0)[0] == pytest.approx(
        (130 / 160) ** 2.25)
    shorter, longer = (p_no_purchase(p_alive, 0.25, 30.0, x, age, t) for t in (30.0, 273.0))
    assert (longer <= shorter).all()


def test_roc_and_pr_auc_by_hand() -> None:
    y = [1, 0, 1, 0, 1]
    s = [0.9, 0.8, 0.7, 0.3, 0.3]
    # Pairs (churner, stayer): (.9,.8) (.9,.3) (.7,.8) (.7,.3) (.3,.8) (.3,.3 tie) -> 3.5/6
    assert roc_auc(y, s) == pytest.approx(3.5 / 6)
    # Thresholds .9: P=1 R=1/3; .8: P=1/2; .7: P=2/3 R=2/3; .3: P=3/5 R=1.
    assert pr_auc(y, s) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    assert roc_auc([1, 1], [0.2, 0.3]) is None
    assert pr_auc([0, 0], [0.2, 0.3]) is None
    assert roc_auc([1, 0], [0.1, 0.9]) == 0.0  # an inverted score ranks backwards
    assert brier([1, 0], [0.75, 0.5]) == pytest.approx((0.0625 + 0.25) / 2)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        roc_auc([2, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"probabilities must lie in \[0, 1\]"):
        brier([1], [1.5])


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_is_the_share_of_correctly_ordered_pairs(rows: list[tuple[int, int]]) -> None:
    y = [r[0] for r in rows]
    s = [float(r[1]) for r in rows]
    pairs = [(p, n) for p, yp in zip(s, y, strict=True) if yp
             for n, yn in zip(s, y, strict=True) if not yn]
    if pairs:
        expected = sum((p > n) + 0.5 * (p == n) for p, n in pairs) / len(pairs)
        assert roc_auc(y, s) == pytest.approx(expected)
    else:
        assert roc_auc(y, s) is None
    assert average_ranks(np.asarray(s)).sum() == pytest.approx(len(s) * (len(s) - 1) / 2)


def test_calibration_deciles_keep_ties_together() -> None:
    p = [i / 100 for i in range(100)]
    y = [1 if i % 4 == 0 else 0 for i in range(100)]
    table = calibration_table(y, p)
    assert [b.customers for b in table] == [10] * 10
    assert table[0].mean_predicted == pytest.approx(0.045)
    assert table[0].observed == pytest.approx(0.3)
    assert table[9].predicted_low == pytest.approx(0.9)
    # One value for everyone: one bin, not ten arbitrary ones.
    (only,) = calibration_table([1, 0, 0, 1], [0.999] * 4)
    assert (only.customers, only.observed, only.gap) == (4, 0.5, pytest.approx(0.499))
    metrics = evaluate(y, p, probability=True)
    assert metrics.max_calibration_gap == pytest.approx(max(b.gap for b in table))
    assert evaluate(y, p, probability=False).calibration == []


def test_alert_figures() -> None:
    split = cdnow.Split()
    population = cdnow.customers(cdnow.parse_orders(ROWS), split)
    day = 86_400.0
    jan18 = datetime(1997, 1, 18, 12, 1, tzinfo=UTC).timestamp()  # 00004's last calibration
    alerts = [("00004", jan18 - 10 * day),  # wrong: orders within 30 days
              ("00004", jan18 + 200 * day),  # right; stands (after the last calibration order)
              ("01101", datetime(1997, 2, 1, tzinfo=UTC).timestamp()),  # right; stands
              ("nobody", 0.0)]  # not in the population: ignored
    churned = {"00018", "01101"}
    figures = streaming_alerts(alerts, population, horizon_days=30, churned=churned)
    assert (figures.alerts, figures.alerted_customers) == (3, 2)
    assert figures.alerts_per_customer == pytest.approx(1.0)
    assert figures.precision == pytest.approx(2 / 3)
    assert figures.churned_value_covered == pytest.approx(0.0 / 37.47)  # 01101 spent 0
    at_cutoff = cutoff_alerts(["00004", "00018", "01101"], [0.9, 0.8, 0.1], 0.7, population,
                              horizon_labels=[1, 1, 1], churned=churned)
    assert (at_cutoff.alerts, at_cutoff.precision) == (2, 1.0)
    assert at_cutoff.churned_value_covered == pytest.approx(1.0)
