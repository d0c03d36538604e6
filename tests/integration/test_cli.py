"""The CLI against the real broker, redis-server and a real worker process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamproc.cli import main
from streamproc.core.outputs import AlertValue, ChurnAlert, Reason, SegmentChanged, SegmentInfo
from streamproc.settings import Settings
from tests.integration.kafka_io import produce

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
VALUE = AlertValue(expected_value=90.0, horizon_days=30.0, value_at_risk=83.7, value_tier="high",
                   lifecycle_stage="at_risk", priority=1, trigger="entered_risk")


def _ts(minute: int) -> str:
    return T0.replace(minute=minute).isoformat()


def _click(cid: str, n: int, event_type: str = "page_view") -> dict[str, Any]:
    return {"event_id": f"{cid}-e{n}", "customer_id": cid, "event_type": event_type,
            "timestamp": _ts(n), "session_id": f"{cid}-s1", "url": "/"}


def _order(cid: str, n: int) -> dict[str, Any]:
    return {"event_id": f"{cid}-e{n}", "customer_id": cid, "order_id": f"{cid}-o{n}",
            "type": "order", "timestamp": _ts(n), "currency": "EUR", "total": 30.0,
            "items": [{"product_id": "p1", "category": "toys", "quantity": 3,
                       "unit_price": 10.0}]}


def _json_out(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _wait_for_profile(capsys: pytest.CaptureFixture[str], cid: str, events: float,
                      timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        code = main(["customer", cid, "--json"])
        out = capsys.readouterr().out
        if code == 0:
            report = json.loads(out)
            if report["profile"].get("events") == events:
                return report
        time.sleep(0.5)
    raise AssertionError(f"{cid} never reached {events} events: {report}")


def test_replay_jsonl_and_csv_then_inspect(cli_env: Settings, worker: subprocess.Popen[bytes],
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_text("\n".join([
        orjson.dumps({"events": [_click("c-a", 1, "session_start"), _click("c-a", 2)]}).decode(),
        orjson.dumps(_click("c-a", 3)).decode(),
        orjson.dumps(_order("c-a", 4)).decode(),
        orjson.dumps({**_order("c-a", 5), "total": 99.0}).decode(),  # total mismatch
        "not json",
    ]) + "\n")
    summary = _json_out(capsys, ["replay", str(jsonl), "--json"])
    assert summary["sent_events"] == 4
    assert summary["rejected"] == 2
    assert summary["reasons"] == {"total_mismatch": 1, "unparseable": 1}

    csv_file = tmp_path / "events.csv"
    items = json.dumps([{"product_id": "p1", "quantity": 3, "unit_price": 10.0}])
    csv_file.write_text(
        "event_id,customer_id,event_type,timestamp,session_id,url,order_id,type,items,total,"
        "currency\n"
        f"c-b-e1,c-b,session_start,{_ts(1)},c-b-s1,,,,,,\n"
        f"c-b-e2,c-b,page_view,{_ts(2)},c-b-s1,/,,,,,\n"
        f'c-b-e3,c-b,,{_ts(3)},,,c-b-o3,order,"{items.replace(chr(34), chr(34) * 2)}",30.0,'
        "EUR\n")
    summary = _json_out(capsys, ["replay", str(csv_file), "--json", "--rate", "1000"])
    assert summary["sent_events"] == 3
    assert summary["rejected"] == 0

    a = _wait_for_profile(capsys, "c-a", 4.0)
    assert a["profile"]["orders"] == 1.0
    b = _wait_for_profile(capsys, "c-b", 3.0)
    assert b["profile"]["orders"] == 1.0
    assert b["profile"]["revenue"] == 30.0

    assert main(["customer", "c-nobody"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "streamproc: unknown customer: c-nobody"

    doc = _json_out(capsys, ["segments", "--json"])
    assert doc["customers"] == 2
    assert sum(s["size"] for s in doc["segments"]) == 2
    html = tmp_path / "segments.html"
    assert main(["segments", "--html", str(html)]) == 0
    assert "<svg" in html.read_text()
    assert main(["customer", "c-a"]) == 0
    assert "c-a" in capsys.readouterr().out

    # A segment's members, by id and by name, as JSON and CSV (a model may not exist yet).
    if doc["segments"][0]["segment_id"] is not None:
        first = doc["segments"][0]
        members = _json_out(capsys, ["segments", "--members", str(first["segment_id"]),
                                     "--json"])
        assert members["customers"] == first["size"]
        assert {m["customer_id"] for m in members["members"]} <= {"c-a", "c-b"}
        assert main(["segments", "--members", first["name"], "--csv"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == first["size"] + 1
    assert main(["segments", "--members", "no such segment"]) == 1
    assert "unknown segment 'no such segment'" in capsys.readouterr().err
    assert main(["segments", "--csv"]) == 0
    assert capsys.readouterr().out.startswith("segment_id,name,size,share,recency_days")


def test_alerts_tail_lists_published_records(cli_env: Settings,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    alert = ChurnAlert.build(
        customer_id="c-risk", churn_probability=0.93, threshold=0.7, risk_level="critical",
        customer_value=410.0, value=VALUE, segment=SegmentInfo(segment_id=1, name="at risk"),
        reasons=[Reason(feature="recency_days", contribution=1.4, text="no visits for 40 days")],
        model_version=3, event_time=T0, emitted_at=T0)
    later = ChurnAlert.build(
        customer_id="c-other", churn_probability=0.75, threshold=0.7, risk_level="medium",
        customer_value=20.0, value=VALUE, segment=None, reasons=[], model_version=3,
        event_time=T0 + timedelta(hours=2), emitted_at=T0)
    change = SegmentChanged.build(
        customer_id="c-risk", previous=None, current=SegmentInfo(segment_id=1, name="at risk"),
        rfm_tier="at risk", model_version=3, event_time=T0 + timedelta(hours=1), emitted_at=T0,
        value_tier="high", lifecycle_stage="at_risk")
    # Written out of event-time order, on two topics.
    asyncio.run(produce(cli_env.kafka.bootstrap_servers, [
        (cli_env.topics.churn_alerts, "c-other", later.to_bytes()),
        (cli_env.topics.churn_alerts, "c-risk", alert.to_bytes()),
        (cli_env.topics.churn_alerts, "c-risk", b"garbage"),
        (cli_env.topics.segment_changes, "c-risk", change.to_bytes()),
    ]))
    assert main(["alerts", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["kind"] for r in rows] == ["unparseable", "churn_alert", "segment_changed",
                                         "churn_alert"]
    times = [r["record"]["event_time"] for r in rows[1:]]
    assert times == sorted(times, key=datetime.fromisoformat)
    assert rows[1]["record"]["alert_id"] == alert.alert_id

    def ids(*argv: str) -> list[str]:
        assert main(["alerts", "--json", *argv]) == 0
        return [json.loads(line)["record"]["customer_id"]
                for line in capsys.readouterr().out.splitlines()]

    assert ids("--kind", "segment_changed") == ["c-risk"]
    assert ids("--min-risk", "critical") == ["c-risk"]
    assert ids("--min-risk", "medium") == ["c-risk", "c-other"]
    assert ids("--customer", "c-other") == ["c-other"]
    assert ids("--customer", "c-risk", "--kind", "churn_alert") == ["c-risk"]
    assert main(["alerts", "--from-beginning"]) == 0
    assert "no visits for 40 days" in capsys.readouterr().out


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_demo_runs_end_to_end_and_stops_everything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    proc = subprocess.run(
        [sys.executable, "-m", "streamproc", "demo", "--seconds", "25", "--customers", "200",
         "--days", "90"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    applied = re.search(r"events applied: (\d+)", out)
    assert applied, out
    assert int(applied.group(1)) > 0
    assert out.rstrip().splitlines()[-1] == "demo stopped: worker, redis, broker"
    ports = re.search(r"broker 127\.0\.0\.1:(\d+), redis 127\.0\.0\.1:(\d+)", out)
    assert ports, out
    assert all(_port_closed(int(p)) for p in ports.groups())
