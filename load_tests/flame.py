"""Summarise a py-spy collapsed-stack profile (``py-spy record --format raw``) of a worker.

    python -m load_tests.flame /tmp/profile.txt

Two views: *where* (each sample goes to the category of its leaf-most frame that
matches one, so C code shows up under the Python library calling it) and
*inclusive* (share of samples with a given function anywhere on the stack).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table

#: (category, substrings of a frame "func (file:line)"); leaf-most match wins.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("prometheus metrics (.labels/.inc/.observe)", ("prometheus_client/",)),
    ("pydantic validation", ("pydantic/", "pydantic_core", "streamproc/core/events.py")),
    ("msgpack (encode/decode blobs)", ("msgpack", "encode_blob", "decode_blob")),
    ("redis client (redis-py, hiredis)", ("redis/",)),
    ("feature ops (core/features.py)", ("streamproc/core/features.py",)),
    ("dead letters / outputs (core/outputs.py)", ("streamproc/core/outputs.py",)),
    ("pipeline own code (runtime/pipeline.py, app.py)",
     ("streamproc/runtime/pipeline.py", "streamproc/runtime/app.py")),
    ("faust stream/agent machinery", ("faust/streams.py", "faust/agents/", "faust/channels.py",
                                     "faust/events.py", "faust/topics.py")),
    ("faust consumer/transport", ("faust/transport/",)),
    ("faust other (sensors, tables, web)", ("faust/",)),
    ("mode (service framework)", ("mode/",)),
    ("aiokafka client", ("aiokafka/", "kafka/")),
    ("aiohttp (/metrics web)", ("aiohttp/",)),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
)

#: functions whose inclusive share is reported (substring of a frame).
INCLUSIVE: tuple[tuple[str, str], ...] = (
    ("IngestPipeline.process", "process (streamproc/runtime/pipeline.py"),
    ("decode_message (orjson + pydantic)", "decode_message (streamproc/core/events.py"),
    ("RedisProfileStore.apply_batch", "apply_batch (streamproc/adapters/redis_store.py"),
    ("event_ops", "event_ops (streamproc/core/features.py"),
    ("pipeline._count", "_count (streamproc/runtime/pipeline.py"),
    ("publisher.publish", "publish (streamproc/runtime/kafka.py"),
    ("prometheus_client (any)", "prometheus_client/"),
    ("metric .labels()", "labels (prometheus_client/metrics.py"),
    ("ingest agent body", "ingest_agent (streamproc/runtime/app.py"),
    ("_raw_messages", "_raw_messages (streamproc/runtime/app.py"),
    ("stream.ack", "ack (faust/streams.py"),
    ("noack_take", "noack_take (faust/streams.py"),
    ("faust Stream.__aiter__/_py_aiter", "_py_aiter (faust/streams.py"),
    ("aiokafka fetcher", "aiokafka/consumer/fetcher.py"),
)


def parse(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """(frames root..leaf, samples) per collapsed-stack line."""
    out = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        out.append((stack.split(";"), n))
    return out


def categorize(frames: Sequence[str]) -> str:
    """Category of the leaf-most frame that matches one; "other" if none does."""
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other"


def summarize(stacks: Sequence[tuple[list[str], int]],
              within: str | None = None) -> tuple[dict[str, float], dict[str, float], int]:
    """Shares by category and inclusive function shares (0..1), and the samples counted.

    ``within``: keep only stacks with a frame containing it (e.g. skip start-up).
    """
    kept = [(f, n) for f, n in stacks if within is None or any(within in x for x in f)]
    total = sum(n for _, n in kept)
    by_cat: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, n in kept:
        by_cat[categorize(frames)] += n
        for label, needle in INCLUSIVE:
            if any(needle in x for x in frames):
                incl[label] += n
    if not total:
        return {}, {}, 0
    return ({k: v / total for k, v in by_cat.most_common()},
            {k: v / total for k, v in incl.most_common()}, total)


def main(argv: Sequence[str] | None = None) -> int:
    """Print both views for each profile given."""
    console = Console()
    for path in (argv if argv is not None else sys.argv[1:]):
        with open(path) as fh:
            stacks = parse(fh)
        cats, incl, total = summarize(stacks)
        t = Table(title=f"{path}: {total} samples (100 Hz, active only)")
        t.add_column("where (leaf-most category)")
        t.add_column("share", justify="right")
        for k, v in cats.items():
            t.add_row(k, f"{v:.1%}")
        console.print(t)
        t2 = Table(title="inclusive")
        t2.add_column("function")
        t2.add_column("share", justify="right")
        for k, v in incl.items():
            t2.add_row(k, f"{v:.1%}")
        console.print(t2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
