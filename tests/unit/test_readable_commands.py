"""What ``customer``, ``segments``, ``alerts`` and ``model`` print, without services."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from streamproc.api import CustomerReport, SegmentsReport, summarize_segments
from streamproc.commands.inspect import (
    SEGMENT_COLUMNS,
    AlertFilter,
    MembersReport,
    TailRecord,
    fmt,
    in_event_time_order,
    members_csv,
    print_customer,
    print_members,
    print_segments,
    segments_csv,
)
from streamproc.commands.model import describe_versions, format_list, format_status

NOW = datetime(2026, 3, 1, tzinfo=UTC)
DAY = 86_400.0


def _console(width: int) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=width, color_system=None), out


def _customer() -> CustomerReport:
    profile = {"events": 375.0, "sessions": 20.0, "orders": 6.0, "revenue": 206.67,
               "net_spend": 200.0, "average_order_value": 34.44, "recency_days": 3.25,
               "tenure_days": 104.2, "mean_days_between_orders": 17.0,
               "conversion_rate": 0.3, "cart_abandonment_rate": 0.5,
               "first_seen_at": NOW.timestamp() - 104 * DAY, "last_order_at": None,
               "last_active_at": NOW.timestamp() - 3 * DAY, "top_category": "toys"}
    return CustomerReport(
        "c-000123", NOW, profile, 12, 2, "regulars",
        {"recency_days": 5.0, "orders": 4.0, "net_spend": 120.5, "customers": 12.0}, 2, "new",
        (5, 1, 2),
        0.123, True, 0.7, "low",
        [{"feature": "recency_days", "contribution": 1.2, "text": "no order for 41 days"}])


@pytest.mark.parametrize(("name", "value", "text"), [
    ("sessions", 20.0, "20"), ("orders", 2.5, "2.5"), ("size", 214.0, "214"),
    ("customers", 12345, "12,345"), ("conversion_rate", 0.305, "30.5%"),
    ("churn_probability", 0.7, "70.0%"), ("recency_days", 3.25, "3.2"),
    ("mean_days_between_orders", 17.0, "17.0"), ("net_spend", 1234.5, "1,234.50"),
    ("first_seen_at", NOW.timestamp(), "2026-03-01T00:00:00Z"), ("orders", None, "-"),
    ("top_category", "toys", "toys"),
])
def test_figures_read_as_people_expect(name: str, value: Any, text: str) -> None:
    assert fmt(name, value) == text


def test_customer_own_figures_apart_from_the_segment_medians() -> None:
    console, out = _console(80)
    print_customer(_customer(), console)
    text = out.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text
    assert "2026-03-01T00:00:00Z" in text
    assert "RFM tier    new (R5 F1 M2 of 5)" in text
    assert "12.3%, low risk; alerts from 70%" in text
    own, typical = text.index("this customer"), text.index("its typical customer")
    assert own < typical
    assert "20.00" not in text
    assert " sessions             20" in text[own:typical]
    assert "2026-02-26T00:00:00Z" in text[own:typical]
    assert "120.50" in text[typical:]  # the segment's net spend only under its heading
    assert "(medians of 12 sampled customers, not this customer's figures)" in text
    assert "120.50" not in text[:typical]


def _segments() -> SegmentsReport:
    names = ["high-value loyal", "at risk", "lapsed", "bargain hunters", "window shoppers"]
    rows = [{"segment_id": i % 5, "segment_name": names[i % 5], "recency_days": i * 1.5,
             "orders": float(i % 7), "net_spend": i * 33.3, "average_order_value": 25.0 + i,
             "events": 100.0 + i, "cart_abandonment_rate": 0.4, "churn_probability": i / 40}
            for i in range(40)]
    return SegmentsReport(summarize_segments(rows), 7, NOW)


@pytest.mark.parametrize("width", [60, 80, 100, 200])
def test_segment_table_fits_without_cut_cells(width: int) -> None:
    console, out = _console(width)
    print_segments(_segments(), console)
    text = out.getvalue()
    assert all(len(line) <= width for line in text.splitlines()), text
    assert "…" not in text
    for name in ("high-value loyal", "window shoppers", "customers", "share"):
        assert name in text
    headers = [c.header for c in SEGMENT_COLUMNS]
    header_row = next(line for line in text.splitlines() if "segment" in line and "id" in line)
    shown = [h for h in headers if f" {h} " in f" {header_row} "]
    if width >= 200:
        assert shown == headers
        assert "left out" not in text
        return
    note = " ".join(text.split()).split("left out for width: ")[1].split(" (see")[0]
    left_out = note.split(", ")
    # Every column is shown or named; the ones left out are the last by priority.
    assert shown + left_out == headers


def test_segment_csv_has_every_column_and_integer_sizes() -> None:
    out = io.StringIO()
    segments_csv(_segments(), out)
    lines = out.getvalue().splitlines()
    assert lines[0].split(",") == [c.key for c in SEGMENT_COLUMNS]
    assert len(lines) == 6
    assert lines[1].split(",")[2] == "8"


def test_members_table_and_csv() -> None:
    report = MembersReport(2, "regulars", NOW, 12, [_customer()])
    console, out = _console(80)
    print_members(report, console)
    text = out.getvalue()
    assert "c-000123" in text
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    csv_out = io.StringIO()
    members_csv(report, csv_out)
    header, row = csv_out.getvalue().splitlines()
    assert header.startswith("customer_id,churn_probability,risk_level")
    assert row.startswith("c-000123,0.123,low")
    assert report.to_dict()["members"][0]["as_of"] == "2026-03-01T00:00:00Z"


def _alert(cid: str, minutes: int, level: str = "high") -> TailRecord:
    return TailRecord("churn_alert", "a", 0, minutes, {
        "customer_id": cid, "risk_level": level,
        "event_time": (NOW + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")})


def _change(cid: str, minutes: int) -> TailRecord:
    return TailRecord("segment_changed", "s", 1, minutes, {
        "customer_id": cid, "event_time": (NOW + timedelta(minutes=minutes)).isoformat()})


def test_alert_filters() -> None:
    alert, change = _alert("c1", 1, "medium"), _change("c1", 2)
    broken = TailRecord("unparseable", "a", 0, 9, {"error": "x"})
    assert all(AlertFilter().keeps(r) for r in (alert, change, broken))
    assert AlertFilter(kind="segment_changed").keeps(change)
    assert not AlertFilter(kind="segment_changed").keeps(alert)
    assert not AlertFilter(kind="churn_alert").keeps(broken)
    assert AlertFilter(min_risk="medium").keeps(alert)
    assert not AlertFilter(min_risk="high").keeps(alert)
    assert AlertFilter(min_risk="high").keeps(_alert("c1", 1, "critical"))
    assert not AlertFilter(min_risk="medium").keeps(change)
    assert AlertFilter(customers=frozenset({"c1"})).keeps(change)
    assert not AlertFilter(customers=frozenset({"c2"})).keeps(alert)


async def _batches(*batches: list[TailRecord], clock: list[float],
                   step: float) -> AsyncIterator[list[TailRecord]]:
    for batch in batches:
        yield batch
        clock[0] += step


async def _ordered(*batches: list[TailRecord], step: float = 0.1,
                   hold_s: float = 1.0) -> list[int]:
    clock = [0.0]
    out = in_event_time_order(_batches(*batches, clock=clock, step=step), hold_s=hold_s,
                              clock=lambda: clock[0])
    return [r.offset async for r in out]


async def test_backlog_comes_out_in_event_time_order_across_topics() -> None:
    # Two partitions read one after the other: the backlog is sorted as a whole.
    assert await _ordered([_alert("a", 5), _alert("b", 1)], [_change("c", 3), _change("d", 0)],
                          []) == [0, 1, 3, 5]


async def test_live_records_are_held_to_be_sorted_then_flushed() -> None:
    live = await _ordered([], [_alert("a", 9)], [_change("b", 7)], [_alert("c", 8)], [],
                          [_alert("d", 20)], step=0.4, hold_s=1.0)
    assert live == [7, 8, 9, 20]
    # Without an idle poll the hold time alone flushes, sorted within what it held; a
    # record arriving after that flush comes after it, whatever its event time.
    held = await _ordered([], [_alert("a", 9)], [_alert("b", 7)], [_alert("c", 30)],
                          [_alert("d", 29)], step=0.6, hold_s=1.0)
    assert held == [7, 9, 30, 29]


def test_describe_versions() -> None:
    assert describe_versions([]) == "none"
    assert describe_versions([5, 6, 7, 9, 11, 12]) == "5-7, 9, 11-12"


def _status(**changes: Any) -> dict[str, Any]:
    status = {"version": 24, "published_at": "2026-03-01T00:00:00Z", "age_s": 5400.0,
              "churn_ready": True, "churn_threshold": 0.7, "labels_seen": 5822,
              "positives_seen": 1164, "base_rate": 0.2,
              "quality": {"roc_auc": 0.91, "log_loss": 0.3, "precision": 0.8, "recall": 0.6,
                          "base_rate": 0.25, "window": 5000.0},
              "horizon_days": 132.0, "typical_gap_days": 41.4,
              "segments": {0: "regulars", 1: "at risk"}, "stored_versions": list(range(5, 25))}
    status.update(changes)
    return status


def test_model_status_reads_as_an_operator_needs() -> None:
    text = "\n".join(format_status(_status()))
    for words in ("model v24", "(90 min ago)", "threshold 0.70", "5,822", "1,164 churned",
                  "base rate 20.0%", "ROC AUC 0.910", "precision 0.800", "recall 0.600",
                  "horizon          132 days (typical gap between orders 41 days)",
                  "churned share there 25.0%", "0 regulars, 1 at risk", "stored versions  5-24"):
        assert words in text, words
    cold = "\n".join(format_status(_status(churn_ready=False, base_rate=None,
                                           quality={"window": 0.0})))
    assert "warming up" in cold
    assert "precision -" in cold
    assert format_status({"version": None, "stored_versions": []}) == [
        "no model version published yet", "stored versions: none"]


def test_model_list_fits_80_columns() -> None:
    rows = [{"version": 24, "current": True, "published_at": "2026-03-01T00:00:00.123456Z",
             "age_s": 200_000.0, "churn_ready": True, "labels_seen": 1_234_567,
             "roc_auc": 0.912},
            {"version": 23, "current": False, "refused": "bad signature"}]
    lines = format_list(rows)
    assert all(len(line) <= 80 for line in lines)
    assert lines[1].startswith("*      24  2026-03-01T00:00:00Z")
    assert "2.3 days" in lines[1]
    assert "refused: bad signature" in lines[2]
