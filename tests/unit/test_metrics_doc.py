"""docs/metrics.md matches the code, and every metric follows the naming and label rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from streamproc.metrics import create_metrics, metric_names
from streamproc.metrics_doc import REGENERATE, MetricDoc, main, metric_docs, render

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"

DOCS = metric_docs()

# Labels whose values grow with the customer base or traffic: one series each would
# blow up Prometheus (and leak personal data into the monitoring stack).
UNBOUNDED_LABEL = re.compile(
    r"customer|client|user|email|event_?id|session|order_?id|product|sku|url|path|ip", re.I
)
TIME_WORDS = re.compile(
    r"latency|duration|seconds|\btime\b|timestamp|\bage\b|round trip|"
    r"roundtrip|elapsed|wall",
    re.I,
)
NON_BASE_TIME_UNITS = re.compile(
    r"_(ms|millis|milliseconds|us|micros|microseconds|"
    r"ns|nanoseconds|minutes|hours|days)(_|$)"
)


def test_doc_matches_the_code() -> None:
    assert DOC.exists(), f"{DOC} is missing; generate it with: {REGENERATE}"
    assert DOC.read_text(encoding="utf-8") == render(), (
        f"docs/metrics.md is out of date with streamproc/metrics.py; "
        f"regenerate it with: {REGENERATE}"
    )


def test_doc_lists_every_metric_once() -> None:
    text = DOC.read_text(encoding="utf-8")
    for d in DOCS:
        assert text.count(f"| `{d.name}` |") == 1, d.name
    assert {d.family for d in DOCS} == set(metric_names(create_metrics()))


def test_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "metrics.md"
    stale.write_text(render().replace("streamproc_ready", "streamproc_readiness"), encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert main(["--write", str(stale)]) == 0
    assert main(["--check", str(stale)]) == 0


def test_render_escapes_table_cells() -> None:
    page = render([MetricDoc("x", "gauge", ("a",), "one | two\nthree")])
    assert page.endswith("| `x` | gauge | `a` | one \\| two three |\n")


def test_labels_come_from_unobserved_labelled_metrics() -> None:
    by_name = {d.name: d for d in DOCS}
    assert by_name["streamproc_events_total"].labels == ("topic", "event_type", "outcome")
    assert by_name["streamproc_ready"].labels == ()


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.family)
def test_no_unbounded_labels(doc: MetricDoc) -> None:
    bad = [label for label in doc.labels if UNBOUNDED_LABEL.search(label)]
    assert not bad, f"{doc.name} has unbounded label(s) {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.family)
def test_names_follow_prometheus_conventions(doc: MetricDoc) -> None:
    assert doc.name.startswith("streamproc_")
    assert re.fullmatch(r"[a-z][a-z0-9_]*", doc.name), doc.name
    assert doc.help.strip(), f"{doc.name} has no help text"
    if doc.type == "counter":
        # prometheus_client appends _total to a counter; the family must not carry it twice.
        assert doc.name.endswith("_total"), doc.name
        assert not doc.family.endswith("_total"), doc.name
    else:
        assert not doc.name.endswith("_total"), f"only counters end in _total: {doc.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.family)
def test_time_metrics_are_in_seconds(doc: MetricDoc) -> None:
    assert not NON_BASE_TIME_UNITS.search(doc.family), f"{doc.name}: use seconds"
    if TIME_WORDS.search(doc.family) or TIME_WORDS.search(doc.help):
        assert doc.family.endswith("_seconds"), f"{doc.name} measures time: name it *_seconds"


def test_seconds_histograms_have_second_scale_buckets() -> None:
    registry = CollectorRegistry()
    create_metrics(registry)
    checked = 0
    for family in registry.collect():
        if family.type != "histogram" or not family.name.endswith("_seconds"):
            continue
        bounds = [
            float(s.labels["le"])
            for s in family.samples
            if s.name.endswith("_bucket") and s.labels["le"] != "+Inf"
        ]
        if not bounds:
            continue  # labelled: no children yet
        checked += 1
        # Milliseconds observed into a seconds histogram would need bounds in the thousands
        # to resolve anything; second-scale buckets start well below one second.
        assert min(bounds) < 1.0, family.name
    assert checked >= 3
