"""``streamproc replay``: send JSONL or CSV events to the input topics (also the backfill path).

Every line is validated locally with the same decoder the worker uses; lines it would
dead-letter are reported with the reason and not sent. With ``--wait`` the command then
waits for the workers to process what it sent (``streamproc.commands.replay_wait``).
"""

from __future__ import annotations

import asyncio
import csv
import io
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson
from aiokafka import AIOKafkaProducer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamproc.commands import CommandError, utc_now
from streamproc.core.events import Source, ValidationLimits, decode_message
from streamproc.settings import Settings
from streamproc.times import iso_utc

if TYPE_CHECKING:
    from streamproc.commands.replay_wait import WaitReport

Format = Literal["jsonl", "csv"]

#: CSV columns converted from text; every other column stays a string.
_INT_COLUMNS = frozenset({"quantity"})
_FLOAT_COLUMNS = frozenset({"price", "total", "unit_price"})
_JSON_COLUMNS = frozenset({"items"})
#: Most rejections listed one by one in the summary (all are counted).
MAX_LISTED_REJECTIONS = 20


@dataclass(frozen=True, slots=True)
class Line:
    """One input line: its parsed value, or why it could not be parsed."""

    number: int
    value: dict[str, Any] | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A validated message ready to send."""

    source: Source
    key: str
    value: bytes
    events: int
    #: The latest event time among its events (seconds since the epoch).
    newest: float = 0.0


@dataclass
class PartitionRange:
    """What a replay wrote to one topic-partition: offsets and the latest event time."""

    first_offset: int
    last_offset: int
    newest: float


@dataclass
class Produced:
    """Where a replay's messages landed, from the broker's acknowledgements."""

    ranges: dict[tuple[str, int], PartitionRange] = field(default_factory=dict)

    def record(self, topic: str, partition: int, offset: int, newest: float) -> None:
        """One acknowledged message."""
        got = self.ranges.get((topic, partition))
        if got is None:
            self.ranges[(topic, partition)] = PartitionRange(offset, offset, newest)
            return
        got.first_offset = min(got.first_offset, offset)
        got.last_offset = max(got.last_offset, offset)
        got.newest = max(got.newest, newest)

    def holds(self, topic: str, partition: int, offset: int) -> bool:
        """Whether ``offset`` lies in the range this replay wrote on that topic-partition.

        Another producer writing the same partition meanwhile interleaves with that range.
        """
        got = self.ranges.get((topic, partition))
        return got is not None and got.first_offset <= offset <= got.last_offset


@dataclass
class ReplaySummary:
    """What a replay sent and what it refused."""

    lines: int = 0
    sent_messages: int = 0
    sent_events: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    rejections: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def reject(self, line: int, reason: str, detail: str) -> None:
        """Count a refused event (or whole line) and keep the first few for the report."""
        self.rejected += 1
        self.reasons[reason] += 1
        if len(self.rejections) < MAX_LISTED_REJECTIONS:
            self.rejections.append({"line": line, "reason": reason, "detail": detail})

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"lines": self.lines, "sent_messages": self.sent_messages,
                "sent_events": self.sent_events, "rejected": self.rejected,
                "reasons": dict(self.reasons), "rejections": self.rejections,
                "seconds": round(self.seconds, 3)}


def detect_format(path: Path, given: str | None) -> Format:
    """``--format`` if given, else from the file name (``.csv`` or JSONL)."""
    if given in ("jsonl", "csv"):
        return given  # type: ignore[return-value]
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


def read_jsonl(lines: Iterable[str]) -> Iterator[Line]:
    """One event or batch envelope per non-blank line."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield Line(number, None, f"invalid JSON: {exc}")
            continue
        if not isinstance(value, dict):
            yield Line(number, None, f"expected a JSON object, got {type(value).__name__}")
            continue
        yield Line(number, value)


def _cell(column: str, text: str) -> Any:
    if column in _JSON_COLUMNS:
        return orjson.loads(text)
    if column in _INT_COLUMNS:
        return int(text)
    if column in _FLOAT_COLUMNS:
        return float(text)
    return text


def read_csv(stream: Iterable[str]) -> Iterator[Line]:
    """Header row = event fields; empty cells are absent fields; ``items`` is a JSON string."""
    reader = csv.DictReader(stream)
    if not reader.fieldnames:
        return
    for row in reader:
        number = reader.line_num
        value: dict[str, Any] = {}
        try:
            for column, text in row.items():
                if column is None:
                    raise ValueError("more cells than header columns")
                if text is None or text == "":
                    continue
                value[column] = _cell(column, text)
        except (ValueError, orjson.JSONDecodeError) as exc:
            yield Line(number, None, f"bad cell: {exc}")
            continue
        yield Line(number, value)


def read_lines(path: Path, fmt: Format) -> Iterator[Line]:
    """Parsed lines of ``path``; a missing or unreadable file is a CommandError."""
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        try:
            yield from (read_csv(handle) if fmt == "csv" else read_jsonl(handle))
        except UnicodeDecodeError as exc:
            raise CommandError(f"{path} is not UTF-8 text: {exc}") from None


def route(value: Mapping[str, Any]) -> Source | None:
    """Input topic by event shape: ``order_id``/``type`` → purchases, ``event_type`` → clickstream.

    A batch envelope goes where its first event goes (the decoder rejects mixed batches).
    """
    events = value.get("events")
    if isinstance(events, list):
        first = events[0] if events else None
        return route(first) if isinstance(first, Mapping) else None
    if "order_id" in value or "type" in value:
        return "purchases"
    if "event_type" in value:
        return "clickstream"
    return None


def _customer_key(value: Mapping[str, Any]) -> str | None:
    events = value.get("events")
    target = events[0] if isinstance(events, list) and events else value
    cid = target.get("customer_id") if isinstance(target, Mapping) else None
    return cid if isinstance(cid, str) and cid else None


def validate(lines: Iterable[Line], limits: ValidationLimits, summary: ReplaySummary,
             now: Any = None) -> Iterator[Outgoing]:
    """Messages that pass the worker's own decoder; everything else is counted in ``summary``.

    From a batch envelope only the rejected events are held back.
    """
    for line in lines:
        summary.lines += 1
        if line.value is None:
            summary.reject(line.number, "unparseable", line.error or "")
            continue
        source = route(line.value)
        if source is None:
            summary.reject(line.number, "unknown_shape",
                           "neither event_type (clickstream) nor order_id/type (purchases)")
            continue
        key = _customer_key(line.value)
        raw = orjson.dumps(line.value)
        decoded = decode_message(raw, key.encode() if key else None, source,
                                 limits=limits, now=now or utc_now())
        for rejection in decoded.rejections:
            where = "" if rejection.index is None else f"events[{rejection.index}]: "
            summary.reject(line.number, rejection.reason, where + rejection.detail)
        if not decoded.events or key is None:
            continue
        if decoded.rejections:  # keep only the accepted events of an envelope
            bad = {r.index for r in decoded.rejections}
            kept = [e for i, e in enumerate(line.value["events"]) if i not in bad]
            raw = orjson.dumps(kept[0] if len(kept) == 1 else {**line.value, "events": kept})
        newest = max(e.timestamp.timestamp() for e in decoded.events)
        yield Outgoing(source, key, raw, len(decoded.events), newest)


def parse_topic_map(pairs: Sequence[str], settings: Settings) -> dict[Source, str]:
    """``clickstream=TOPIC`` / ``purchases=TOPIC`` overrides of the configured topic names."""
    topics: dict[Source, str] = {"clickstream": settings.topics.clickstream,
                                 "purchases": settings.topics.purchases}
    for pair in pairs:
        name, sep, topic = pair.partition("=")
        if not sep or name not in topics or not topic:
            raise CommandError(f"bad --topic-map {pair!r}: use clickstream=TOPIC or "
                               "purchases=TOPIC", exit_code=2)
        topics[name] = topic
    return topics


class Pacer:
    """Sleeps so that at most ``rate`` events per second go out (None = flat out)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate if rate and rate > 0 else None
        self.started = time.monotonic()
        self.sent = 0

    def delay(self, events: int) -> float:
        """Seconds to wait before sending ``events`` more."""
        if self.rate is None:
            return 0.0
        due = self.started + self.sent / self.rate
        self.sent += events
        return max(0.0, due - time.monotonic())


async def send(settings: Settings, messages: Iterable[Outgoing], topics: Mapping[Source, str],
               summary: ReplaySummary, *, rate: float | None, progress: Progress | None,
               total: int | None = None) -> Produced:
    """Send keyed by customer id, paced, and wait for every acknowledgement.

    Returns where every message landed (partition, offset), for ``--wait``.
    """
    from streamproc.runtime.kafka import aiokafka_security

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all",
                                linger_ms=5, **aiokafka_security(settings.kafka))
    try:
        await producer.start()
    except Exception as exc:
        await producer.stop()
        raise CommandError(f"cannot reach the broker at {settings.kafka.bootstrap_servers}: "
                           f"{exc}") from None
    pacer = Pacer(rate)
    task = progress.add_task("replaying", total=total) if progress else None
    produced = Produced()
    pending: list[asyncio.Future[Any]] = []
    newest: list[float] = []

    async def settle() -> None:
        for meta, at in zip(await asyncio.gather(*pending), newest, strict=True):
            produced.record(meta.topic, meta.partition, meta.offset, at)
        pending.clear()
        newest.clear()

    try:
        for message in messages:
            wait = pacer.delay(message.events)
            if wait > 0:
                await asyncio.sleep(wait)
            pending.append(await producer.send(topics[message.source], message.value,
                                               key=message.key.encode()))
            newest.append(message.newest)
            summary.sent_messages += 1
            summary.sent_events += message.events
            if len(pending) >= 2000:
                await settle()
            if progress is not None and task is not None:
                progress.update(task, completed=summary.lines)
        await settle()
    finally:
        await producer.stop()
    return produced


def _count_lines(path: Path) -> int | None:
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None


def replay(settings: Settings, path: Path, *, fmt: str | None, rate: float | None,
           topic_map: Sequence[str], as_json: bool, wait: bool = False,
           wait_timeout_s: float = 300.0) -> int:
    """The ``replay`` command.

    Rejected lines are reported and skipped; if nothing at all could be sent, that is an
    error (exit 1). With ``wait`` it returns once the workers processed what was sent.
    """
    if not path.is_file():
        raise CommandError(f"no such file: {path}")
    kind = detect_format(path, fmt)
    topics = parse_topic_map(topic_map, settings)
    limits = settings.ingest.validation_limits()
    summary = ReplaySummary()
    total = _count_lines(path)
    if total is not None and kind == "csv":
        total = max(total - 1, 0)
    err = Console(stderr=True)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                        transient=True) if err.is_terminal else None
    messages = validate(read_lines(path, kind), limits, summary)

    async def go() -> WaitReport | None:
        from streamproc.commands.replay_wait import output_marks

        marks = await output_marks(settings) if wait else {}
        started = time.monotonic()
        produced = await send(settings, messages, topics, summary, rate=rate,
                              progress=progress, total=total)
        summary.seconds = time.monotonic() - started
        if not wait or not summary.sent_messages:
            return None
        return await _wait(settings, produced, marks, wait_timeout_s, progress)

    if progress is not None:
        with progress:
            report = asyncio.run(go())
    else:
        report = asyncio.run(go())
    if as_json:
        from streamproc.commands import print_json

        doc = summary.to_dict()
        if report is not None:
            doc["wait"] = report.to_dict()
        print_json(doc)
    else:
        print_summary(summary, path, topics)
        if report is not None:
            print_wait(summary, report)
    if summary.rejected and not summary.sent_events:
        raise CommandError(f"every event of {path} was rejected ({summary.rejected}); "
                           "nothing was sent")
    return 0


async def _wait(settings: Settings, produced: Produced, marks: Mapping[Any, int],
                stall_timeout_s: float, progress: Progress | None) -> WaitReport:
    from streamproc.commands.replay_wait import WaitReport, count_outputs, wait_for_workers

    started = time.monotonic()
    task = progress.add_task("waiting for the workers", total=None) if progress else None

    def status(text: str) -> None:
        if progress is not None and task is not None:
            progress.update(task, description=text)

    goals = await wait_for_workers(settings, produced, stall_timeout_s=stall_timeout_s,
                                   status=status)
    report = WaitReport(goals)
    await count_outputs(settings, marks, produced, report)
    report.seconds = time.monotonic() - started
    return report


def print_wait(summary: ReplaySummary, report: WaitReport, out: Any = None) -> None:
    """Human summary of ``--wait``: processed, dead-lettered, alerted, and how far checks ran."""
    out = out or sys.stdout
    dead = sum(report.dead_letters.values())
    reasons = ", ".join(f"{r}={n}" for r, n in report.dead_letters.most_common())
    print(f"processed by the workers: {summary.sent_events - dead} events applied (or "
          f"skipped as already counted), {dead} dead-lettered"
          f"{f' ({reasons})' if reasons else ''}; "
          f"{report.churn_alerts} churn alerts and {report.segment_changes} segment changes "
          f"emitted meanwhile ({report.seconds:.1f}s)", file=out)
    done = ", ".join(f"{p}: {iso_utc(g.watermark)}"
                     for p, g in report.goals.items())
    print(f"idle checks and label expiries done up to the watermark of each partition "
          f"(its last replayed event time minus the allowed lateness): {done}; later ones run "
          "when later events move event time on", file=out)


def print_summary(summary: ReplaySummary, path: Path, topics: Mapping[Source, str],
                  out: Any = None) -> None:
    """Human summary: sent, rejected by reason, the first rejections."""
    out = out or sys.stdout
    rate = summary.sent_events / summary.seconds if summary.seconds > 0 else 0.0
    print(f"replayed {path}: {summary.sent_events} events in {summary.sent_messages} messages "
          f"to {topics['clickstream']} / {topics['purchases']} "
          f"({summary.seconds:.1f}s, {rate:.0f} events/s)", file=out)
    if summary.rejected:
        reasons = ", ".join(f"{r}={n}" for r, n in summary.reasons.most_common())
        print(f"rejected {summary.rejected} (validated locally, NOT sent): {reasons}", file=out)
        for item in summary.rejections:
            print(f"  line {item['line']}: {item['reason']}: {item['detail']}", file=out)
        if summary.rejected > len(summary.rejections):
            print(f"  ... and {summary.rejected - len(summary.rejections)} more", file=out)


def lines_from_text(text: str, fmt: Format) -> list[Line]:
    """Parse in-memory text (tests and callers holding data already)."""
    stream = io.StringIO(text, newline="")
    return list(read_csv(stream) if fmt == "csv" else read_jsonl(stream))
