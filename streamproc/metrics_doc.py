"""Render docs/metrics.md, the metrics reference, from the metrics factory.

``python -m streamproc.metrics_doc`` prints the page; ``--write PATH`` writes it
and ``--check PATH`` exits 1 when the file differs from the code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from prometheus_client import CollectorRegistry

from streamproc.metrics import create_metrics

DEFAULT_PATH = Path("docs/metrics.md")
REGENERATE = "python -m streamproc.metrics_doc --write docs/metrics.md"

# The series one family exposes in the text format, by type (``_created`` is left out:
# it is optional and carries no information an alert or panel should use).
_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}

_HEADER = f"""# Metrics reference

Every Prometheus metric a streamproc worker serves on `/metrics` (port
`STREAMPROC_METRICS__PORT`, default 6066). Faust's own sensor metrics are served
next to them with the prefix `streamproc_faust_` (their latencies are in
milliseconds, as Faust observes them), and so are the Prometheus client's standard
process and Python series (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
`process_open_fds`, `python_gc_*`, `python_info`...).

Every labelled counter is exported from the start with a 0 for each label value the
worker can use (topics, event types, outcomes, reason codes, operations, risk levels),
so rates and panels show 0 rather than nothing before the first increment.

Labels carry bounded values only (topic, event type, outcome, reason code,
segment, risk level, operation); never customer ids or payloads. Times are in
seconds.

Generated from `streamproc.metrics.create_metrics()`; do not edit by hand.
Regenerate with `{REGENERATE}`.

| Name | Type | Labels | Help |
|------|------|--------|------|
"""


@dataclass(frozen=True)
class MetricDoc:
    """One metric family as documented: exposed name, type, label names and help text."""

    family: str
    type: str
    labels: tuple[str, ...]
    help: str

    @property
    def name(self) -> str:
        """The name as scraped (counters carry ``_total``)."""
        return self.family + "_total" if self.type == "counter" else self.family

    @property
    def series(self) -> tuple[str, ...]:
        """Every sample name a scrape shows for this family."""
        return tuple(self.family + suffix for suffix in _SUFFIXES.get(self.type, ("",)))


def metric_docs(registry: CollectorRegistry | None = None) -> list[MetricDoc]:
    """The families of ``create_metrics()`` read back from its registry, sorted by name."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = create_metrics(registry, runtime=False)
    # collect() omits label names of labelled metrics without children, so take them
    # from the metric objects themselves.
    labels: dict[str, tuple[str, ...]] = {}
    for f in fields(metrics):
        metric = getattr(metrics, f.name)
        labels[metric._name] = tuple(metric._labelnames)
    docs = [MetricDoc(family.name, family.type, labels.get(family.name, ()),
                      family.documentation) for family in registry.collect()]
    return sorted(docs, key=lambda d: d.family)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render(docs: Sequence[MetricDoc] | None = None) -> str:
    """The Markdown page for ``docs`` (all of streamproc's metrics by default)."""
    rows = docs if docs is not None else metric_docs()
    lines = [
        f"| `{d.name}` | {d.type} | {', '.join(f'`{lb}`' for lb in d.labels) or '-'} "
        f"| {_cell(d.help)} |"
        for d in rows
    ]
    return _HEADER + "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print, write or check the metrics reference."""
    parser = argparse.ArgumentParser(prog="python -m streamproc.metrics_doc",
                                     description="Render the Prometheus metrics reference.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="PATH", type=Path, help="write the page to PATH")
    group.add_argument("--check", metavar="PATH", type=Path,
                       help="exit 1 if PATH differs from the code")
    args = parser.parse_args(argv)
    page = render()
    if args.check is not None:
        current = args.check.read_text(encoding="utf-8") if args.check.exists() else ""
        if current != page:
            print(f"{args.check} is out of date; regenerate it with: {REGENERATE}",
                  file=sys.stderr)
            return 1
        return 0
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(page, encoding="utf-8")
        return 0
    sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
