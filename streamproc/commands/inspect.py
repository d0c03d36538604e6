"""``streamproc customer``, ``segments`` and ``alerts``: read what the workers computed."""

from __future__ import annotations

import asyncio
import html
import statistics
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from streamproc.api import AnalyticsReader, CustomerNotFound, CustomerReport, NoEventTime
from streamproc.commands import CommandError, print_json
from streamproc.core.outputs import ChurnAlert, SegmentChanged
from streamproc.settings import Settings

#: Profile fields summarised per segment (median over the segment's customers).
SEGMENT_FIELDS: tuple[str, ...] = (
    "recency_days", "orders", "net_spend", "average_order_value", "events",
    "cart_abandonment_rate", "churn_probability",
)
UNASSIGNED = "unassigned"


# --- customer --------------------------------------------------------------------------------


async def fetch_customer(settings: Settings, customer_id: str,
                         as_of: datetime | None) -> CustomerReport:
    """One customer's report as of ``as_of`` (None: now, the current event time).

    An unknown id, or no event time recorded yet, is a CommandError (exit 1).
    """
    reader = AnalyticsReader(settings)
    try:
        return await reader.customer(customer_id, as_of)
    except CustomerNotFound:
        raise CommandError(f"unknown customer: {customer_id}") from None
    except NoEventTime as exc:
        raise CommandError(f"{exc} (--as-of ISO)") from None
    finally:
        await reader.close()


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def print_customer(report: CustomerReport, console: Console) -> None:
    """Readable report: segment, RFM tier, churn risk with reasons, key profile fields."""
    p = report.profile
    console.print(f"[bold]{report.customer_id}[/] as of {report.as_of.isoformat()} "
                  f"(model version {_num(report.model_version)})")
    if report.segment_id is not None:
        console.print(f"segment   {report.segment_id} [bold]{report.segment_name}[/]  "
                      + ", ".join(f"{k}={_num(v)}" for k, v in report.segment_profile.items()))
    else:
        console.print("segment   - (no model version published yet)")
    console.print(f"RFM tier  {report.rfm_tier or '-'}")
    if report.churn_probability is not None:
        ready = "" if report.churn_model_ready else " (churn model still warming up)"
        console.print(f"churn     {report.churn_probability:.1%}{ready}")
        for reason in report.reasons[:5]:
            console.print(f"  - {reason['text']} ({reason['contribution']:+.2f})")
    table = Table("profile", "value", show_header=False, box=None)
    for name in ("events", "sessions", "orders", "revenue", "net_spend", "average_order_value",
                 "recency_days", "days_since_last_order", "tenure_days", "conversion_rate",
                 "cart_abandonment_rate", "refund_rate", "top_category"):
        if name in p:
            table.add_row(name, _num(p[name]))
    console.print(table)


# --- segments --------------------------------------------------------------------------------


@dataclass
class SegmentSummary:
    """Size and median profile of one segment."""

    segment_id: int | None
    name: str
    size: int
    share: float
    medians: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"segment_id": self.segment_id, "name": self.name, "size": self.size,
                "share": round(self.share, 4), "medians": self.medians}


def summarize_segments(rows: Iterable[dict[str, Any]]) -> list[SegmentSummary]:
    """Group plain rows (``segment_id``, ``segment_name`` and profile fields) into summaries.

    Rows without a segment (no model version yet) form an ``unassigned`` group.
    """
    groups: dict[int | None, list[dict[str, Any]]] = {}
    names: dict[int | None, str] = {}
    for row in rows:
        sid = row.get("segment_id")
        groups.setdefault(sid, []).append(row)
        names[sid] = row.get("segment_name") or (UNASSIGNED if sid is None else f"segment {sid}")
    total = sum(len(g) for g in groups.values())
    out = []
    for sid, members in groups.items():
        medians = {}
        for name in SEGMENT_FIELDS:
            values = [float(m[name]) for m in members if isinstance(m.get(name), int | float)]
            if values:
                medians[name] = round(statistics.median(values), 4)
        out.append(SegmentSummary(sid, names[sid], len(members),
                                  len(members) / total if total else 0.0, medians))
    out.sort(key=lambda s: (-s.size, s.segment_id is None, s.segment_id or 0))
    return out


def report_row(report: CustomerReport) -> dict[str, Any]:
    """The plain row :func:`summarize_segments` reads."""
    row = {k: report.profile.get(k) for k in SEGMENT_FIELDS}
    row.update(segment_id=report.segment_id, segment_name=report.segment_name,
               churn_probability=report.churn_probability)
    return row


@dataclass(frozen=True, slots=True)
class SegmentsReport:
    """Segment summaries, the model version that scored them and the instant they describe."""

    summaries: list[SegmentSummary]
    model_version: int | None
    as_of: datetime


async def collect_segments(settings: Settings, as_of: datetime | None) -> SegmentsReport:
    """Summaries over every stored customer as of ``as_of`` (None: the current event time)."""
    reader = AnalyticsReader(settings)
    try:
        when = await reader.resolve_as_of(as_of)
        rows = [report_row(r) async for r in reader.all_customers(when)]
        bundle = await reader.bundle()
    except NoEventTime as exc:
        raise CommandError(f"{exc} (--as-of ISO)") from None
    finally:
        await reader.close()
    return SegmentsReport(summarize_segments(rows), bundle.version if bundle else None, when)


def segments_document(summaries: Sequence[SegmentSummary], model_version: int | None,
                      as_of: datetime) -> dict[str, Any]:
    """The ``segments --json`` document."""
    return {"as_of": as_of.isoformat(), "model_version": model_version,
            "customers": sum(s.size for s in summaries),
            "segments": [s.to_dict() for s in summaries]}


def print_segments(summaries: Sequence[SegmentSummary], model_version: int | None,
                   console: Console) -> None:
    """A table of segments with sizes and median profiles."""
    table = Table(title=f"segments (model version {_num(model_version)})")
    table.add_column("id", justify="right")
    table.add_column("name")
    table.add_column("customers", justify="right")
    table.add_column("share", justify="right")
    for name in SEGMENT_FIELDS:
        table.add_column(f"median {name}", justify="right")
    for s in summaries:
        table.add_row(_num(s.segment_id), s.name, str(s.size), f"{s.share:.1%}",
                      *(_num(s.medians.get(n)) for n in SEGMENT_FIELDS))
    console.print(table)


def render_html(summaries: Sequence[SegmentSummary], model_version: int | None,
                as_of: datetime) -> str:
    """A self-contained HTML report: inline SVG bar chart of sizes and a table (no scripts)."""
    esc = html.escape
    total = sum(s.size for s in summaries)
    largest = max((s.size for s in summaries), default=0) or 1
    bar_h, gap, label_w, chart_w = 24, 8, 220, 480
    height = len(summaries) * (bar_h + gap) + gap
    bars = []
    for i, s in enumerate(summaries):
        y = gap + i * (bar_h + gap)
        width = max(1.0, chart_w * s.size / largest)
        bars.append(
            f'<text x="{label_w - 8}" y="{y + bar_h * 0.7:.0f}" text-anchor="end">'
            f"{esc(s.name)}</text>"
            f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="{bar_h}" fill="#4878a8">'
            f"<title>{esc(s.name)}: {s.size}</title></rect>"
            f'<text x="{label_w + width + 6:.1f}" y="{y + bar_h * 0.7:.0f}">{s.size} '
            f"({s.share:.1%})</text>")
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + chart_w + 120}" '
           f'height="{height}" role="img" aria-label="segment sizes" '
           f'font-family="sans-serif" font-size="13">{"".join(bars)}</svg>')
    head = "".join(f"<th>{esc(h)}</th>" for h in
                   ("id", "name", "customers", "share", *(f"median {n}" for n in SEGMENT_FIELDS)))
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in (
            _num(s.segment_id), s.name, str(s.size), f"{s.share:.1%}",
            *(_num(s.medians.get(n)) for n in SEGMENT_FIELDS))) + "</tr>"
        for s in summaries)
    when = esc(as_of.isoformat())
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>streamproc segments</title><style>"
        "body{font-family:sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}td:nth-child(2),th:nth-child(2){text-align:left}"
        "th{background:#f0f0f0}</style></head><body>"
        f"<h1>Customer segments</h1><p>{total} customers, model version "
        f"{esc(_num(model_version))}, as of {when}.</p>{svg}"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        "</body></html>\n")


# --- alerts ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TailRecord:
    """One record read from the churn-alerts or segment-changes topic."""

    kind: str  # "churn_alert" | "segment_changed" | "unparseable"
    topic: str
    partition: int
    offset: int
    value: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (one line per record with ``--json``)."""
        return {"kind": self.kind, "topic": self.topic, "partition": self.partition,
                "offset": self.offset, "record": self.value}


def parse_output(kind: str, topic: str, partition: int, offset: int,
                 raw: bytes | None) -> TailRecord:
    """Validate against the output contract; a record that does not fit is ``unparseable``."""
    model = ChurnAlert if kind == "churn_alert" else SegmentChanged
    try:
        value = model.from_bytes(raw or b"").model_dump(mode="json")
    except ValidationError as exc:
        return TailRecord("unparseable", topic, partition, offset,
                          {"error": str(exc).splitlines()[0],
                           "raw": (raw or b"")[:200].decode("utf-8", "replace")})
    return TailRecord(kind, topic, partition, offset, value)


def format_record(record: TailRecord) -> str:
    """One readable line."""
    v = record.value
    if record.kind == "churn_alert":
        reasons = "; ".join(r["text"] for r in v.get("reasons", [])[:3]) or "no reasons given"
        segment = (v.get("segment") or {}).get("name", "-")
        return (f"{v['event_time']}  ALERT    {v['customer_id']}  {v['risk_level']:<8} "
                f"p={v['churn_probability']:.2f}  value={v['customer_value']:.2f}  "
                f"segment={segment}  v{v['model_version']}  — {reasons}")
    if record.kind == "segment_changed":
        before = (v.get("previous") or {}).get("name", "(new)")
        return (f"{v['event_time']}  SEGMENT  {v['customer_id']}  {before} → "
                f"{v['current']['name']}  rfm={v.get('rfm_tier') or '-'}  "
                f"v{v['model_version']}")
    return (f"{record.topic}[{record.partition}]@{record.offset}  UNPARSEABLE  "
            f"{v.get('error')}")


async def tail_outputs(settings: Settings, *, follow: bool, from_beginning: bool,
                       last: int, stop: asyncio.Event | None = None,
                       idle_s: float = 1.0) -> AsyncIterator[TailRecord]:
    """Records of both output topics (no consumer group: nothing is committed).

    Starts about ``last`` records before the end of each partition (or at the beginning);
    without ``follow`` it ends when no record arrived for ``idle_s`` seconds.
    """
    from streamproc.runtime.kafka import aiokafka_security

    kinds = {settings.topics.churn_alerts: "churn_alert",
             settings.topics.segment_changes: "segment_changed"}
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers,
                                group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest",
                                **aiokafka_security(settings.kafka))
    try:
        await consumer.start()
    except Exception as exc:
        await consumer.stop()
        raise CommandError(f"cannot reach the broker at {settings.kafka.bootstrap_servers}: "
                           f"{exc}") from None
    try:
        partitions = []
        for topic in kinds:
            ids = await _partitions(consumer, topic)
            partitions += [TopicPartition(topic, p) for p in sorted(ids)]
        if not partitions:
            return
        consumer.assign(partitions)
        begin = await consumer.beginning_offsets(partitions)
        end = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, begin[tp] if from_beginning else max(begin[tp], end[tp] - last))
        # Without --follow, stop once nothing new arrives for idle_s. End offsets are not
        # trusted as the stop condition: Tansu reports the last batch's base offset + 1.
        idle_since = time.monotonic()
        while True:
            if stop is not None and stop.is_set():
                return
            batch = await consumer.getmany(timeout_ms=int(idle_s * 500))
            for tp, records in batch.items():
                for r in records:
                    yield parse_output(kinds[tp.topic], tp.topic, tp.partition, r.offset,
                                       r.value)
            if batch:
                idle_since = time.monotonic()
            elif not follow and time.monotonic() - idle_since >= idle_s:
                return
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """Partition ids of ``topic``; empty if it does not exist (yet)."""
    if topic not in await consumer.topics():  # refreshes the cluster metadata
        return set()
    return set(consumer.partitions_for_topic(topic) or ())


async def print_alerts(settings: Settings, *, follow: bool, from_beginning: bool, last: int,
                       as_json: bool) -> int:
    """The ``alerts`` command; prints as it reads, returns how many records it printed."""
    count = 0
    async for record in tail_outputs(settings, follow=follow, from_beginning=from_beginning,
                                     last=last):
        count += 1
        if as_json:
            print(orjson.dumps(record.to_dict()).decode(), flush=True)
        else:
            print(format_record(record), flush=True)
    return count


__all__ = [
    "SEGMENT_FIELDS",
    "SegmentSummary",
    "SegmentsReport",
    "TailRecord",
    "collect_segments",
    "fetch_customer",
    "format_record",
    "parse_output",
    "print_alerts",
    "print_customer",
    "print_json",
    "print_segments",
    "render_html",
    "segments_document",
    "summarize_segments",
    "tail_outputs",
]
