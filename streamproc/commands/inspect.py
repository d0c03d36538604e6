"""``streamproc customer``, ``segments`` and ``alerts``: read what the workers computed.

Tables fit the terminal (80 columns when piped): columns are dropped by priority and the
caption says which; ``--csv`` and ``--json`` always carry every column.
"""

from __future__ import annotations

import asyncio
import csv
import html
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from streamproc.api import (
    COUNT_FIELDS,
    RISK_LEVELS,
    SEGMENT_FIELDS,
    AnalyticsReader,
    CustomerNotFound,
    CustomerReport,
    MemberFilter,
    NoEventTime,
    PageCursor,
    SegmentsReport,
    SegmentSummary,
    UnknownSegment,
    report_row,
    summarize_segments,
)
from streamproc.commands import CommandError, print_json
from streamproc.core.outputs import ChurnAlert, SegmentChanged
from streamproc.settings import Settings
from streamproc.times import iso_utc

# --- numbers -----------------------------------------------------------------------------

#: Whole numbers in summaries and listings (besides the profile's COUNT_FIELDS).
_WHOLE: Final = COUNT_FIELDS | {"size", "customers", "orders"}


def fmt(name: str, value: Any) -> str:
    """One figure as people read it: counts as integers, rates as percentages, days with
    one decimal, times in the one ISO-8601 UTC format, money with two decimals."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if name.endswith("_at"):
        return iso_utc(float(value))
    if name in _WHOLE:
        return f"{int(value):,}" if float(value).is_integer() else f"{value:,.1f}"
    if name.endswith(("_rate", "_share", "probability")) or name == "share":
        return f"{value:.1%}"
    if "days" in name:
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.2f}"


_SHORT: Final = {"mean_days_between_orders": "days between orders",
                 "days_since_last_order": "days since order",
                 "cart_abandonment_rate": "cart abandonment",
                 "average_order_value": "avg order value"}


def _label(name: str) -> str:
    return _SHORT.get(name, name.replace("_", " "))


# --- customer --------------------------------------------------------------------------------

#: The customer's own figures ``customer`` prints, in order.
CUSTOMER_FIELDS: Final = (
    "events", "sessions", "orders", "items_purchased", "revenue", "net_spend",
    "average_order_value", "refund_rate", "recency_days", "days_since_last_order",
    "tenure_days", "mean_days_between_orders", "conversion_rate", "cart_abandonment_rate",
    "orders_30d", "spend_30d", "top_category",
)
#: Its times, one to a line (an ISO-8601 time is 20 characters).
CUSTOMER_TIMES: Final = ("first_seen_at", "last_active_at", "last_order_at")


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


def _pairs(items: Sequence[tuple[str, str]], per_row: int = 2) -> Table:
    """Name/value pairs ``per_row`` to a row (fits 80 columns), read top to bottom."""
    table = Table(box=None, show_header=False, padding=(0, 1))
    for _ in range(per_row):
        table.add_column(style="dim", no_wrap=True)
        table.add_column(justify="right", no_wrap=True)
    rows = (len(items) + per_row - 1) // per_row
    for r in range(rows):
        cells: list[str] = []
        for c in range(per_row):
            i = c * rows + r
            name, value = items[i] if i < len(items) else ("", "")
            cells += ["  " + name if c and name else name, value]
        table.add_row(*cells)
    return table


def print_customer(report: CustomerReport, console: Console) -> None:
    """Segment, RFM tier, churn risk with reasons, then the customer's own figures apart
    from the segment's typical ones."""
    console.print(f"[bold]{report.customer_id}[/] as of {iso_utc(report.as_of)} "
                  f"(model version {fmt('model_version', report.model_version)})")
    if report.segment_id is None:
        console.print("segment     - (no model version published yet)")
    else:
        published = report.published_segment_id
        note = "" if published in (None, report.segment_id) else \
            f" (last published: {published})"
        console.print(f"segment     {report.segment_id} [bold]{report.segment_name}[/]{note}")
    scores = "" if report.rfm_scores is None else \
        " (R{} F{} M{} of 5)".format(*report.rfm_scores)
    console.print(f"RFM tier    {report.rfm_tier or '-'}{scores}")
    if report.churn_probability is not None:
        level = f", {report.risk_level} risk" if report.risk_level else \
            " (churn model still warming up: no alerts yet)"
        threshold = "" if report.churn_threshold is None else \
            f"; alerts from {report.churn_threshold:.0%}"
        console.print(f"churn       {report.churn_probability:.1%}{level}{threshold}")
        for reason in report.reasons[:5]:
            console.print(f"  - {reason['text']} ({reason['contribution']:+.2f})")
    own = [(_label(n), fmt(n, report.profile.get(n))) for n in CUSTOMER_FIELDS
           if n in report.profile]
    console.print("[bold]this customer[/]")
    console.print(_pairs(own))
    console.print(_pairs([(_label(n), fmt(n, report.profile.get(n))) for n in CUSTOMER_TIMES],
                         per_row=1))
    if report.segment_profile:
        medians = {n: v for n, v in report.segment_profile.items() if n != "customers"}
        size = report.segment_profile.get("customers")
        sample = "" if size is None else f" of {fmt('customers', size)} sampled customers"
        console.print(f"[bold]segment {report.segment_name}: its typical customer[/]")
        console.print(f"(medians{sample}, not this customer's figures)")
        console.print(_pairs([(_label(n), fmt(n, v)) for n, v in medians.items()]))


# --- segments --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its key in the row, header, and whether it may be dropped."""

    key: str
    header: str
    keep: bool = False
    right: bool = True


#: Segment summary columns; the droppable ones in the order they are kept.
SEGMENT_COLUMNS: Final = (
    Column("segment_id", "id", keep=True), Column("name", "segment", keep=True, right=False),
    Column("size", "customers", keep=True), Column("share", "share", keep=True),
    Column("recency_days", "recency d"), Column("orders", "orders"),
    Column("net_spend", "net spend"), Column("churn_probability", "churn p"),
    Column("average_order_value", "avg order"), Column("cart_abandonment_rate", "cart aband."),
    Column("events", "events"),
)


def segment_rows(summaries: Sequence[SegmentSummary]) -> list[dict[str, Any]]:
    """One plain row per segment: id, name, size, share and the medians."""
    return [{"segment_id": s.segment_id, "name": s.name, "size": s.size, "share": s.share,
             **{n: s.medians.get(n) for n in SEGMENT_FIELDS}} for s in summaries]


def _table(columns: Sequence[Column], cells: Sequence[Sequence[str]],
           shown: Sequence[int]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for i in shown:
        table.add_column(columns[i].header, justify="right" if columns[i].right else "left",
                         no_wrap=True)
    for row in cells:
        table.add_row(*(row[i] for i in shown))
    return table


def fit_columns(columns: Sequence[Column], cells: Sequence[Sequence[str]],
                console: Console) -> list[int]:
    """Indexes of the columns to show uncut on ``console``: every ``keep`` one, then the
    others in order while the table, as rich measures it, still fits."""
    chosen = [i for i, c in enumerate(columns) if c.keep]
    unbounded = console.options.update_width(1_000_000)  # the table's natural width
    for i, column in enumerate(columns):
        if column.keep:
            continue
        trial = sorted([*chosen, i])
        needed = Measurement.get(console, unbounded, _table(columns, cells, trial))
        if needed.maximum <= console.width:
            chosen = trial
    return chosen


def print_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]], console: Console,
                *, title: str, caption: str = "") -> None:
    """``rows`` as a table that fits the console; dropped columns are named below it."""
    cells = [[fmt(c.key, row.get(c.key)) for c in columns] for row in rows]
    shown = fit_columns(columns, cells, console)
    left_out = [columns[i].header for i in range(len(columns)) if i not in shown]
    console.print(f"[bold]{title}[/]")
    console.print(_table(columns, cells, shown))
    if caption:
        console.print(caption)
    if left_out:
        console.print(f"left out for width: {', '.join(left_out)} (see --csv or --json)")


def write_csv(columns: Sequence[str], rows: Iterable[dict[str, Any]], out: TextIO) -> None:
    """CSV with a header; numbers unformatted, times in the one ISO-8601 format."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])


async def collect_segments(settings: Settings, as_of: datetime | None) -> SegmentsReport:
    """Summaries over every stored customer as of ``as_of`` (None: the current event time)."""
    reader = AnalyticsReader(settings)
    try:
        return await reader.segment_summaries(as_of)
    except NoEventTime as exc:
        raise CommandError(f"{exc} (--as-of ISO)") from None
    finally:
        await reader.close()


def segments_document(summaries: Sequence[SegmentSummary], model_version: int | None,
                      as_of: datetime) -> dict[str, Any]:
    """The ``segments --json`` document."""
    return SegmentsReport(list(summaries), model_version, as_of).to_dict()


def print_segments(report: SegmentsReport, console: Console) -> None:
    """A table of segments with sizes and median profiles that fits the console."""
    print_table(SEGMENT_COLUMNS, segment_rows(report.summaries), console,
                title=f"segments as of {iso_utc(report.as_of)} (model version "
                      f"{fmt('v', report.model_version)})",
                caption="figures after share: medians over the segment's customers")


def segments_csv(report: SegmentsReport, out: TextIO) -> None:
    """``segments --csv``: every column."""
    write_csv([c.key for c in SEGMENT_COLUMNS], segment_rows(report.summaries), out)


# --- members of a segment ----------------------------------------------------------------------

#: Member listing columns (``segments --members``).
MEMBER_COLUMNS: Final = (
    Column("customer_id", "customer", keep=True, right=False),
    Column("churn_probability", "churn p", keep=True),
    Column("risk_level", "risk", keep=True, right=False),
    Column("recency_days", "recency d"), Column("orders", "orders"),
    Column("net_spend", "net spend"), Column("rfm_tier", "RFM tier", right=False),
    Column("tenure_days", "tenure d"), Column("events", "events"),
)


def member_row(report: CustomerReport) -> dict[str, Any]:
    """The plain row of one member."""
    row = {n: report.profile.get(n, 0.0) for n in ("recency_days", "orders", "net_spend",
                                                   "tenure_days", "events")}
    row.update(customer_id=report.customer_id, churn_probability=report.churn_probability,
               risk_level=report.risk_level, rfm_tier=report.rfm_tier,
               segment_id=report.segment_id, segment_name=report.segment_name)
    return row


@dataclass(frozen=True, slots=True)
class MembersReport:
    """The customers scored into one segment, most at risk first."""

    segment_id: int
    name: str
    as_of: datetime
    model_version: int | None
    members: list[CustomerReport]

    def to_dict(self) -> dict[str, Any]:
        """The ``segments --members --json`` document."""
        return {"as_of": iso_utc(self.as_of), "model_version": self.model_version,
                "segment": {"segment_id": self.segment_id, "name": self.name},
                "customers": len(self.members),
                "members": [r.to_dict() for r in self.members]}


async def collect_members(settings: Settings, segment: str,
                          as_of: datetime | None) -> MembersReport:
    """Every customer of ``segment`` (id or name) as of ``as_of``, most at risk first."""
    reader = AnalyticsReader(settings)
    try:
        segment_id = await reader.find_segment(segment)
        bundle = await reader.bundle()
        name = bundle.segments[segment_id].name if bundle else str(segment_id)
        which, members, cursor = MemberFilter(segment_id=segment_id), [], None
        while True:
            page = await reader.members(which, limit=1000, as_of=as_of, cursor=cursor,
                                        max_scan=100_000)
            members += page.reports
            if page.next_cursor is None:
                break
            cursor = PageCursor.decode(page.next_cursor)
    except (NoEventTime, UnknownSegment) as exc:
        raise CommandError(f"{exc}" + (" (--as-of ISO)" if isinstance(exc, NoEventTime)
                                       else "")) from None
    finally:
        await reader.close()
    members.sort(key=lambda r: (-(r.churn_probability or 0.0), r.customer_id))
    return MembersReport(segment_id, name, page.as_of, page.model_version, members)


def print_members(report: MembersReport, console: Console) -> None:
    """The members as a table that fits the console."""
    print_table(MEMBER_COLUMNS, [member_row(r) for r in report.members], console,
                title=f"segment {report.segment_id} {report.name}: {len(report.members):,} "
                      f"customers as of {iso_utc(report.as_of)}",
                caption="most at risk first")


def members_csv(report: MembersReport, out: TextIO) -> None:
    """``segments --members ID --csv``: every column."""
    write_csv([c.key for c in MEMBER_COLUMNS], (member_row(r) for r in report.members), out)


# --- HTML ------------------------------------------------------------------------------------


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
                   ("id", "name", "customers", "share", *(f"median {_label(n)}"
                                                           for n in SEGMENT_FIELDS)))
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(fmt(c.key, row.get(c.key)))}</td>"
                         for c in SEGMENT_COLUMNS) + "</tr>"
        for row in segment_rows(summaries))
    when = esc(iso_utc(as_of))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>streamproc segments</title><style>"
        "body{font-family:sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}td:nth-child(2),th:nth-child(2){text-align:left}"
        "th{background:#f0f0f0}</style></head><body>"
        f"<h1>Customer segments</h1><p>{total} customers, model version "
        f"{esc(fmt('v', model_version))}, as of {when}.</p>{svg}"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        "</body></html>\n")



# --- alerts ----------------------------------------------------------------------------------

_NO_TIME: Final = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TailRecord:
    """One record read from the churn-alerts or segment-changes topic."""

    kind: str  # "churn_alert" | "segment_changed" | "unparseable"
    topic: str
    partition: int
    offset: int
    value: dict[str, Any]

    @property
    def event_time(self) -> datetime:
        """The record's event time (the earliest instant for an unparseable record)."""
        raw = self.value.get("event_time")
        return datetime.fromisoformat(raw) if isinstance(raw, str) else _NO_TIME

    def to_dict(self) -> dict[str, Any]:
        """JSON form (one line per record with ``--json``)."""
        return {"kind": self.kind, "topic": self.topic, "partition": self.partition,
                "offset": self.offset, "record": self.value}


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Which records ``alerts`` prints (None / empty: any)."""

    kind: str | None = None
    #: Churn alerts at this risk level or above; segment changes are left out then.
    min_risk: str | None = None
    customers: frozenset[str] = frozenset()

    def keeps(self, record: TailRecord) -> bool:
        """Whether ``record`` passes; unparseable records pass only an empty filter."""
        if record.kind == "unparseable":
            return self.kind is None and self.min_risk is None and not self.customers
        if self.kind is not None and record.kind != self.kind:
            return False
        if self.customers and record.value.get("customer_id") not in self.customers:
            return False
        if self.min_risk is not None:
            level = record.value.get("risk_level")
            return record.kind == "churn_alert" and level in RISK_LEVELS and \
                RISK_LEVELS.index(level) >= RISK_LEVELS.index(self.min_risk)
        return True


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


async def tail_batches(settings: Settings, *, follow: bool, from_beginning: bool,
                       last: int, stop: asyncio.Event | None = None,
                       idle_s: float = 1.0) -> AsyncIterator[list[TailRecord]]:
    """Records of both output topics as fetched, an empty list when a poll found none
    (no consumer group: nothing is committed).

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
        while stop is None or not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=int(idle_s * 500))
            yield [parse_output(kinds[tp.topic], tp.topic, tp.partition, r.offset, r.value)
                   for tp, records in fetched.items() for r in records]
            if fetched:
                idle_since = time.monotonic()
            elif not follow and time.monotonic() - idle_since >= idle_s:
                return
    finally:
        await consumer.stop()


async def tail_outputs(settings: Settings, *, follow: bool, from_beginning: bool,
                       last: int, stop: asyncio.Event | None = None,
                       idle_s: float = 1.0) -> AsyncIterator[TailRecord]:
    """The records of :func:`tail_batches` one by one, as fetched."""
    async for batch in tail_batches(settings, follow=follow, from_beginning=from_beginning,
                                    last=last, stop=stop, idle_s=idle_s):
        for record in batch:
            yield record


async def in_event_time_order(batches: AsyncIterator[list[TailRecord]], *, hold_s: float,
                              clock: Callable[[], float] = time.monotonic,
                              ) -> AsyncIterator[TailRecord]:
    """Records sorted by event time across topics and partitions.

    Everything up to the first empty poll (what was already there) comes out as one
    sorted run; after that, records are held until the oldest held one waited ``hold_s``
    or a poll comes back empty, and each such group comes out sorted.
    """
    held: list[tuple[datetime, int, TailRecord]] = []
    caught_up, oldest, seq = False, 0.0, 0

    def flush() -> list[TailRecord]:
        out = [r for _, _, r in sorted(held, key=lambda h: (h[0], h[1]))]
        held.clear()
        return out

    async for batch in batches:
        if batch and not held:
            oldest = clock()
        for record in batch:
            held.append((record.event_time, seq, record))
            seq += 1
        if not batch:
            caught_up = True
        if held and caught_up and (not batch or clock() - oldest >= hold_s):
            for record in flush():
                yield record
    for record in flush():
        yield record


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """Partition ids of ``topic``; empty if it does not exist (yet)."""
    if topic not in await consumer.topics():  # refreshes the cluster metadata
        return set()
    return set(consumer.partitions_for_topic(topic) or ())


async def print_alerts(settings: Settings, *, follow: bool, from_beginning: bool, last: int,
                       as_json: bool, which: AlertFilter | None = None,
                       hold_s: float = 1.0) -> int:
    """The ``alerts`` command; prints in event-time order, returns how many it printed."""
    which = which or AlertFilter()
    count = 0
    batches = tail_batches(settings, follow=follow, from_beginning=from_beginning, last=last)
    async for record in in_event_time_order(batches, hold_s=hold_s):
        if not which.keeps(record):
            continue
        count += 1
        if as_json:
            print(orjson.dumps(record.to_dict()).decode(), flush=True)
        else:
            print(format_record(record), flush=True)
    return count


__all__ = [
    "SEGMENT_FIELDS",
    "AlertFilter",
    "MembersReport",
    "SegmentSummary",
    "SegmentsReport",
    "TailRecord",
    "collect_members",
    "collect_segments",
    "fetch_customer",
    "fit_columns",
    "fmt",
    "format_record",
    "in_event_time_order",
    "members_csv",
    "parse_output",
    "print_alerts",
    "print_customer",
    "print_json",
    "print_members",
    "print_segments",
    "render_html",
    "report_row",
    "segments_csv",
    "segments_document",
    "summarize_segments",
    "tail_batches",
    "tail_outputs",
]
