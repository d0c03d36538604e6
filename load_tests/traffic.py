"""Seeded persona traffic to Kafka, as single events or batch envelopes, paced or flat out.

    python -m load_tests.traffic --bootstrap 127.0.0.1:9092 --customers 1000 \
        --events 100000 --batch-size 10 [--rate 2000] [--seed 42]

Reusable: :func:`produce_traffic` returns :class:`ProduceStats`; :func:`prepare_messages`
builds the encoded records once so a benchmark can pre-produce them flat out.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaProducer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from load_tests.stats import Pacer
from streamproc.core.generator import TrafficGenerator, batch_envelopes

#: (topic, key, value, events in the message)
Record = tuple[str, bytes, bytes, int]
Acks = Literal[1, "all"]
#: called with (probe id, monotonic send time) for every probe sent
ProbeHook = Callable[[str, float], None]


@dataclass(frozen=True)
class ProduceStats:
    """What one production run achieved."""

    messages: int
    events: int
    probes: int
    bytes: int
    seconds: float
    target_events_per_s: float | None

    @property
    def events_per_s(self) -> float:
        """Achieved event rate."""
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        out = asdict(self)
        out["events_per_s"] = round(self.events_per_s, 1)
        out["seconds"] = round(self.seconds, 3)
        return out


def make_generator(customers: int, events: int, seed: int, *,
                   end: datetime | None = None) -> TrafficGenerator:
    """A generator whose period holds about ``events`` events, ending before ``end`` (now).

    Event times are in the past so the pipeline's future-skew check never fires.
    """
    if end is None:
        now = datetime.fromtimestamp(time.time(), UTC)
        end = now.replace(hour=0, minute=0, second=0, microsecond=0)  # stable within a day
    probe_days = 30.0
    estimate = TrafficGenerator(customers=customers, seed=seed, start=end,
                                days=probe_days).count_estimate()
    per_day = max(estimate / probe_days, 1e-9)
    days = max(1.0, math.ceil(events / per_day * 1.2))
    return TrafficGenerator(customers=customers, seed=seed, start=end - timedelta(days=days),
                            days=days)


def prepare_messages(customers: int, events: int, batch_size: int, seed: int,
                     topics: Mapping[str, str] | None = None) -> list[Record]:
    """The first ``events`` events of the seeded traffic, grouped and JSON-encoded.

    Envelopes are grouped without the generator's lag flush (``max_lag=events``), so
    a shape of B means up to B events per message; the mean depends on how many
    events each customer has in the sample (reported by the benchmark).
    """
    gen = make_generator(customers, events, seed)
    sample = list(itertools.islice(gen.events(), events))
    topic_of = dict(topics or {})
    out: list[Record] = []
    for topic, key, value in batch_envelopes(sample, batch_size, max_lag=max(events, 1)):
        n = len(value["events"]) if "events" in value else 1
        out.append((topic_of.get(topic, topic), key.encode(), orjson.dumps(value), n))
    return out


def probe_record(topic: str, probe_id: str, customer_id: str = "c-probe", *,
                 valid: bool = False) -> Record:
    """A probe clickstream event whose effect the benchmark can see on an output topic.

    Invalid (default): a well-formed event with an unknown ``event_type``; it is decoded
    and validated like any event, rides in a batch with valid events through the Redis
    call, and its dead letter is published with the batch's other outputs.
    Valid: a page view of a brand-new customer (pass a fresh ``customer_id``); once a
    model version exists, scoring publishes that customer's first ``segment_changed``.
    """
    value = {
        "event_id": probe_id,
        "customer_id": customer_id,
        "event_type": "page_view" if valid else "latency_probe",
        "timestamp": datetime.fromtimestamp(time.time() - 60, UTC).isoformat(
            timespec="milliseconds"),
        "session_id": f"s-{probe_id}",
    }
    if valid:
        value["url"] = "/"
    return topic, customer_id.encode(), orjson.dumps(value), 1


async def send_records(
    producer: AIOKafkaProducer,
    records: Iterable[Record],
    *,
    rate: float | None = None,
    total_events: int | None = None,
    probe_topic: str | None = None,
    probes_per_s: float = 0.0,
    on_probe: ProbeHook | None = None,
    duration_s: float | None = None,
    progress: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> ProduceStats:
    """Send records paced at ``rate`` events/s (None = flat out) and wait for every ack.

    With ``probes_per_s`` > 0, probe records are interleaved (they count towards the
    rate); ``on_probe`` learns each probe's id and monotonic send time. With
    ``duration_s`` sending stops after that long (records may be an endless iterator).
    """
    pacer = Pacer(rate, clock)
    probe_run = f"{int(time.time() * 1000) % 10**9}"
    probe_every = rate / probes_per_s if (rate and probes_per_s > 0) else None
    next_probe = 0.0
    messages = events = probes = size = 0
    pending: list[asyncio.Future[Any]] = []
    bar = _progress(total_events) if progress else None
    task = bar.add_task("producing", total=total_events) if bar else None
    started = clock()
    try:
        if bar:
            bar.start()
        for topic, key, value, n in records:
            if duration_s is not None and clock() - started >= duration_s:
                break
            if probe_every is not None and probe_topic and events >= next_probe:
                next_probe += probe_every
                wait = pacer.delay(1)
                if wait > 0:
                    await asyncio.sleep(wait)
                # Alternate dead-letter probes and new-customer probes (segment change).
                valid = probes % 2 == 1
                pid = f"probe-{probe_run}-{probes}"
                ptopic, pkey, pvalue, _ = probe_record(
                    probe_topic, pid, f"c-{pid}" if valid else "c-probe", valid=valid)
                sent_at = clock()
                pending.append(await producer.send(ptopic, pvalue, key=pkey))
                if on_probe:
                    on_probe(pid, sent_at)
                probes += 1
                events += 1
                messages += 1
                size += len(pvalue)
            wait = pacer.delay(n)
            if wait > 0:
                await asyncio.sleep(wait)
            pending.append(await producer.send(topic, value, key=key))
            messages += 1
            events += n
            size += len(value)
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
            if bar and task is not None and messages % 200 == 0:
                bar.update(task, completed=events)
        await asyncio.gather(*pending)
        if bar and task is not None:
            bar.update(task, completed=events)
    finally:
        if bar:
            bar.stop()
    return ProduceStats(messages, events, probes, size, clock() - started, rate)


def _progress(total: int | None) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TextColumn("{task.speed} ev/s" if total else ""),
                    TimeElapsedColumn(), transient=False)


def new_producer(bootstrap: str, *, acks: Acks = "all", linger_ms: int = 5,
                 **security: Any) -> AIOKafkaProducer:
    """An aiokafka producer as the trackers would configure it (acks=0 breaks Tansu)."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks=acks, linger_ms=linger_ms,
                            max_batch_size=256 * 1024, **security)


async def produce_traffic(
    bootstrap: str,
    *,
    customers: int,
    events: int,
    batch_size: int = 1,
    rate: float | None = None,
    seed: int = 42,
    topics: Mapping[str, str] | None = None,
    acks: Acks = "all",
    linger_ms: int = 5,
    progress: bool = True,
    security: Mapping[str, Any] | None = None,
) -> ProduceStats:
    """Produce ``events`` seeded persona events as messages of up to ``batch_size`` events."""
    records = prepare_messages(customers, events, batch_size, seed, topics)
    producer = new_producer(bootstrap, acks=acks, linger_ms=linger_ms, **dict(security or {}))
    await producer.start()
    try:
        return await send_records(producer, records, rate=rate, total_events=events,
                                  progress=progress)
    finally:
        await producer.stop()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m load_tests.traffic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", required=True, help="host:port of a broker")
    p.add_argument("--customers", type=int, default=1000)
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=1, help="events per message (envelope)")
    p.add_argument("--rate", type=float, default=None, help="events/s (default: flat out)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--acks", choices=["1", "all"], default="all")
    p.add_argument("--linger-ms", type=int, default=5)
    p.add_argument("--clickstream-topic", default="clickstream")
    p.add_argument("--purchases-topic", default="purchases")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = _parser().parse_args(argv)
    acks: Acks = 1 if args.acks == "1" else "all"
    stats = asyncio.run(produce_traffic(
        args.bootstrap, customers=args.customers, events=args.events,
        batch_size=args.batch_size, rate=args.rate, seed=args.seed, acks=acks,
        linger_ms=args.linger_ms, progress=not args.no_progress,
        topics={"clickstream": args.clickstream_topic, "purchases": args.purchases_topic}))
    print(orjson.dumps(stats.to_dict()).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
