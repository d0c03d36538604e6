"""The CLI without services: parsing, help, file parsing and routing, error paths, HTML."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from streamproc.cli import build_parser, main
from streamproc.commands import CommandError
from streamproc.commands.demo import DemoState, render_live, render_plain, summary_lines
from streamproc.commands.inspect import (
    format_record,
    parse_output,
    render_html,
    segments_document,
    summarize_segments,
)
from streamproc.commands.replay import (
    Line,
    ReplaySummary,
    detect_format,
    lines_from_text,
    parse_topic_map,
    route,
    validate,
)
from streamproc.core.events import DEFAULT_LIMITS
from streamproc.core.outputs import AlertValue, ChurnAlert, Reason, SegmentInfo
from streamproc.settings import Settings

NOW = datetime(2026, 3, 1, tzinfo=UTC)
VALUE = AlertValue(expected_value=90.0, horizon_days=30.0, value_at_risk=83.7, value_tier="high",
                   lifecycle_stage="at_risk", priority=1, trigger="entered_risk")
CLICK = {"event_id": "e1", "customer_id": "c1", "event_type": "page_view",
         "timestamp": "2026-02-01T10:00:00Z", "session_id": "s1", "url": "/"}
ORDER = {"event_id": "e2", "customer_id": "c1", "order_id": "o1", "type": "order",
         "timestamp": "2026-02-01T10:05:00Z", "currency": "EUR", "total": 20.0,
         "items": [{"product_id": "p1", "quantity": 2, "unit_price": 10.0}]}
COMMANDS = ["worker", "schemas", "demo", "replay", "customer", "segments", "alerts", "serve",
            "model"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: streamproc " + command in capsys.readouterr().out


def test_worker_help_explains_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "STREAMPROC_" in text
    assert "README" in text
    assert "STREAMPROC_MODELS__SIGNING_KEY" in text


def test_parser_defaults_and_types() -> None:
    parser = build_parser()
    demo = parser.parse_args(["demo", "--seconds", "5"])
    assert (demo.customers, demo.days, demo.rate, demo.seconds) == (500, 120.0, 2000.0, 5.0)
    replay = parser.parse_args(["replay", "f.csv", "--rate", "10", "--topic-map",
                                "clickstream=x", "--json"])
    assert replay.topic_map == ["clickstream=x"]
    assert replay.rate == 10.0
    assert replay.json
    customer = parser.parse_args(["customer", "c1", "--as-of", "2026-01-02T00:00:00"])
    assert customer.as_of == datetime(2026, 1, 2, tzinfo=UTC)
    # "now" (and no --as-of) mean the current event time, resolved by the read API.
    assert parser.parse_args(["customer", "c1", "--as-of", "now"]).as_of is None
    assert parser.parse_args(["segments", "--as-of", "NOW"]).as_of is None
    assert parser.parse_args(["segments"]).as_of is None
    alerts = parser.parse_args(["alerts", "-f", "--from-beginning"])
    assert alerts.follow
    assert alerts.from_beginning
    assert not alerts.json


@pytest.mark.parametrize("argv", [
    ["demo", "--rate", "0"], ["demo", "--customers", "x"], ["customer", "c1", "--as-of", "soon"],
    ["replay"], ["nope"], ["replay", "f", "--format", "xml"]])
def test_usage_errors_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "error:" in err


def test_missing_file_is_one_line_exit_1(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "missing.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no such file" in err


def test_bad_settings_are_one_line_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STREAMPROC_KAFKA__TOPIC_PARTITIONS", "zero")
    assert main(["segments"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "STREAMPROC_KAFKA__TOPIC_PARTITIONS" in err


def test_bad_topic_map_is_a_usage_error() -> None:
    with pytest.raises(CommandError) as err:
        parse_topic_map(["orders=x"], Settings())
    assert err.value.exit_code == 2
    assert parse_topic_map(["purchases=p2"], Settings()) == {"clickstream": "clickstream",
                                                             "purchases": "p2"}


def test_as_of_takes_what_the_http_api_takes() -> None:
    parser = build_parser()
    when = datetime(2026, 1, 1, tzinfo=UTC)
    for text in ("2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00Z",
                 str(round(when.timestamp() * 1000))):
        assert parser.parse_args(["customer", "c1", "--as-of", text]).as_of == when


def test_routing_by_event_shape() -> None:
    assert route(CLICK) == "clickstream"
    assert route(ORDER) == "purchases"
    assert route({"events": [ORDER, ORDER]}) == "purchases"
    assert route({"type": "refund"}) == "purchases"
    assert route({"customer_id": "c1"}) is None
    assert route({"events": []}) is None


def test_format_from_extension() -> None:
    assert detect_format(Path("a.csv"), None) == "csv"
    assert detect_format(Path("a.json"), None) == "jsonl"
    assert detect_format(Path("a.csv"), "jsonl") == "jsonl"


def test_jsonl_lines_and_parse_errors() -> None:
    text = orjson.dumps(CLICK).decode() + "\n\n{not json\n[1]\n" + orjson.dumps(
        {"events": [CLICK, ORDER]}).decode() + "\n"
    lines = lines_from_text(text, "jsonl")
    assert [line.number for line in lines] == [1, 3, 4, 5]
    assert lines[0].value == CLICK
    assert lines[1].value is None
    assert "invalid JSON" in (lines[1].error or "")
    assert lines[2].value is None
    assert "list" in (lines[2].error or "")


def test_csv_columns_are_typed_and_items_parsed() -> None:
    text = ("event_id,customer_id,event_type,order_id,type,timestamp,session_id,url,items,"
            "total,currency,price,quantity\n"
            "e1,c1,page_view,,,2026-02-01T10:00:00Z,s1,/,,,,,\n"
            'e2,c1,,o1,order,2026-02-01T10:05:00Z,,,"[{""product_id"": ""p1"", '
            '""quantity"": 2, ""unit_price"": 10.0}]",20.0,EUR,,\n'
            "e3,c1,add_to_cart,,,2026-02-01T10:00:00Z,s1,,,,,abc,1\n")
    lines = lines_from_text(text, "csv")
    assert lines[0].value == CLICK
    assert lines[1].value == ORDER
    assert lines[2].value is None
    assert "bad cell" in (lines[2].error or "")
    assert [route(line.value) for line in lines[:2] if line.value] == ["clickstream", "purchases"]


def test_validation_holds_back_bad_lines_and_bad_envelope_events() -> None:
    bad_total = {**ORDER, "event_id": "e3", "total": 99.0}
    lines = [Line(1, CLICK), Line(2, bad_total), Line(3, None, "invalid JSON"),
             Line(4, {"customer_id": "c1"}), Line(5, {"events": [CLICK, {**CLICK, "price": -1}]})]
    summary = ReplaySummary()
    out = list(validate(lines, DEFAULT_LIMITS, summary, now=NOW))
    assert [(m.source, m.key, m.events) for m in out] == [("clickstream", "c1", 1),
                                                          ("clickstream", "c1", 1)]
    assert orjson.loads(out[1].value) == CLICK  # a single survivor is sent bare
    assert summary.rejected == 4
    assert summary.reasons == {"total_mismatch": 1, "unparseable": 1, "unknown_shape": 1,
                               "schema": 1}
    assert summary.rejections[-1]["detail"].startswith("events[1]:")
    assert json.loads(orjson.dumps(summary.to_dict()))["lines"] == 5


def _rows() -> list[dict[str, object]]:
    return [
        {"segment_id": 0, "segment_name": "regulars", "orders": 2.0, "recency_days": 3.0},
        {"segment_id": 0, "segment_name": "regulars", "orders": 4.0, "recency_days": 5.0},
        {"segment_id": 1, "segment_name": "<browsers>", "orders": 0.0, "recency_days": 1.0},
        {"segment_id": None, "segment_name": None, "orders": None},
    ]


def test_segment_summary_sizes_and_medians() -> None:
    summaries = summarize_segments(_rows())
    assert [(s.name, s.size) for s in summaries] == [("regulars", 2), ("<browsers>", 1),
                                                     ("unassigned", 1)]
    assert summaries[0].medians == {"orders": 3.0, "recency_days": 4.0}
    assert summaries[0].share == 0.5
    doc = segments_document(summaries, 3, NOW)
    assert doc["as_of"] == "2026-03-01T00:00:00Z"
    assert doc["customers"] == 4
    assert doc["model_version"] == 3


def test_html_report_is_self_contained_and_escaped() -> None:
    page = render_html(summarize_segments(_rows()), 3, NOW)
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page
    assert page.count("<rect") == 3
    assert "&lt;browsers&gt;" in page
    assert "<browsers>" not in page
    assert "<script" not in page
    assert "http://" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")


def test_alert_records_parse_and_format() -> None:
    alert = ChurnAlert.build(
        customer_id="c9", churn_probability=0.91, threshold=0.7, risk_level="critical",
        customer_value=120.0, value=VALUE, segment=SegmentInfo(segment_id=2, name="at risk"),
        reasons=[Reason(feature="recency_days", contribution=1.2, text="no visits for 40 days")],
        model_version=4, event_time=NOW, emitted_at=NOW)
    record = parse_output("churn_alert", "alerts", 0, 7, alert.to_bytes())
    line = format_record(record)
    assert "c9" in line
    assert "critical" in line
    assert "no visits for 40 days" in line
    broken = parse_output("churn_alert", "alerts", 0, 8, b"{}")
    assert broken.kind == "unparseable"
    assert "UNPARSEABLE" in format_record(broken)


def test_demo_views_render_from_plain_state(tmp_path: Path) -> None:
    state = DemoState(total_events=100, produced_events=50, applied_events=40, customers=3,
                      model_version=2, quality={"roc_auc": 0.9, "labels_seen": 10.0},
                      segments=summarize_segments(_rows()))
    state.sample(0.0)
    state.applied_events = 60
    state.sample(2.0)
    assert state.events_per_s == 10.0
    line = render_plain(state, 12.0)
    assert "applied=60" in line
    assert "regulars=2" in line
    assert render_live(state, 12.0) is not None
    summary = "\n".join(summary_lines(state, 12.0, tmp_path / "worker.log"))
    assert "events applied: 60" in summary
    assert "roc_auc=0.900" in summary
