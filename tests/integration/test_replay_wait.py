"""``replay --wait`` and the read API's "now" against a real worker, broker and redis-server."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from streamproc.adapters import keys
from streamproc.adapters.event_time import (
    EventTimeWriter,
    current_event_time,
    partition_watermarks,
)
from streamproc.api import AnalyticsReader
from streamproc.cli import main
from streamproc.core.store import schedule_name
from streamproc.settings import Settings
from streamproc.times import iso_utc

pytestmark = pytest.mark.integration

# 1990s history: no date floor keeps it out.
T0 = datetime(1997, 1, 1, 12, tzinfo=UTC)


def _order(cid: str, n: int, day: float, total: float = 12.0) -> dict[str, Any]:
    return {"event_id": f"{cid}-o{n}", "customer_id": cid, "order_id": f"{cid}-o{n}",
            "type": "order", "timestamp": (T0 + timedelta(days=day)).isoformat(),
            "currency": "USD", "total": total,
            "items": [{"product_id": "cd", "quantity": 1, "unit_price": total}]}


def _write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(orjson.dumps(e).decode() + "\n" for e in events))
    return path


def _json_out(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


async def _due_checks(settings: Settings, upto: dict[str, str]) -> int:
    client = aioredis.Redis.from_url(settings.redis.url)
    try:
        prefix = settings.redis.key_prefix
        due = 0
        for partition, when in upto.items():
            limit = datetime.fromisoformat(when).timestamp()
            key = keys.schedule_key(prefix, schedule_name("checks", int(partition)))
            due += await client.zcount(key, "-inf", limit)
        return due
    finally:
        await client.aclose()


def test_replay_wait_then_now_ranks_the_longer_idle_customer_first(
        cli_env: Settings, worker: subprocess.Popen[bytes], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # c-long last ordered on day 1, c-short on day 50; c-busy moves event time to day 60
    # and orders often enough (10 > the 8 purchase ids remembered) to make a late event.
    events = [_order("c-long", 1, 0), _order("c-long", 2, 1), _order("c-short", 1, 0),
              _order("c-short", 2, 50, total=0.0)]  # a free order is an order
    events += [_order("c-busy", n, 50 + n) for n in range(1, 11)]
    events.sort(key=lambda e: e["timestamp"])
    summary = _json_out(capsys, ["replay", str(_write(tmp_path / "a.jsonl", events)),
                                 "--wait", "--json"])
    assert summary["sent_events"] == 14
    assert summary["rejected"] == 0
    wait = summary["wait"]
    assert wait["dead_letters"] == 0
    # Done means: nothing due at or before each partition's watermark is left.
    assert wait["checks_done_up_to"]
    assert asyncio.run(_due_checks(cli_env, wait["checks_done_up_to"])) == 0
    last = T0 + timedelta(days=60)
    lateness = timedelta(seconds=cli_env.ingest.allowed_lateness_s)
    assert max(datetime.fromisoformat(w) for w in wait["checks_done_up_to"].values()) == \
        last - lateness

    # Without --as-of (or with "now") everyone is scored as of the current event time.
    now = asyncio.run(_event_time(cli_env))
    assert now == last - lateness
    long_idle = _json_out(capsys, ["customer", "c-long", "--json"])
    short_idle = _json_out(capsys, ["customer", "c-short", "--json", "--as-of", "now"])
    assert long_idle["as_of"] == short_idle["as_of"] == iso_utc(now)
    assert long_idle["profile"]["recency_days"] == pytest.approx(59 - 1 / 24)
    assert short_idle["profile"]["recency_days"] == pytest.approx(10 - 1 / 24)
    assert short_idle["profile"]["orders"] == 2
    reports = asyncio.run(_all_reports(cli_env))
    ranked = sorted(reports, key=lambda r: -r["profile"]["recency_days"])
    assert [r["customer_id"] for r in ranked] == ["c-long", "c-short", "c-busy"]
    assert {r["as_of"] for r in reports} == {iso_utc(now)}
    assert _json_out(capsys, ["segments", "--json"])["as_of"] == iso_utc(now)

    # An order older than every id c-busy's dedupe remembers: the worker dead-letters it,
    # and --wait attributes that dead letter to this replay.
    late = _write(tmp_path / "b.jsonl", [_order("c-busy", 99, 2)])
    again = _json_out(capsys, ["replay", str(late), "--wait", "--json"])
    assert again["wait"]["dead_letter_reasons"] == {"late_event": 1}
    assert main(["replay", str(late), "--wait"]) == 0
    out = capsys.readouterr().out
    assert "0 events applied (or skipped as already counted), 1 dead-lettered " \
        "(late_event=1)" in out
    assert "idle checks and label expiries done up to the watermark" in out


async def _event_time(settings: Settings) -> datetime:
    reader = AnalyticsReader(settings)
    try:
        now = await reader.event_time()
        assert now is not None
        return now
    finally:
        await reader.close()


async def _all_reports(settings: Settings) -> list[dict[str, Any]]:
    reader = AnalyticsReader(settings)
    try:
        return [r.to_dict() async for r in reader.all_customers()]
    finally:
        await reader.close()


def test_replay_that_rejects_everything_exits_1(cli_env: Settings, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path / "bad.jsonl", [{**_order("c-x", 1, 0), "total": 99.0},
                                          {**_order("c-x", 2, 0), "currency": "usd"}])
    assert main(["replay", str(bad)]) == 1
    captured = capsys.readouterr()
    assert "rejected 2 (validated locally, NOT sent): " in captured.out
    assert captured.err.strip() == (f"streamproc: every event of {bad} was rejected (2); "
                                    "nothing was sent")


async def test_event_time_only_moves_forward(make_settings: Callable[..., Settings],
                                             redis_client: aioredis.Redis) -> None:
    prefix = make_settings().redis.key_prefix
    first, second = EventTimeWriter(redis_client, prefix), EventTimeWriter(redis_client, prefix)
    assert await current_event_time(redis_client, prefix) is None
    await first.advance({0: 100.0, 1: 50.0, 2: float("-inf")})  # -inf: nothing seen yet
    # A worker that just took partition 0 over starts from an older watermark.
    await second.advance({0: 60.0, 1: 70.0})
    assert await partition_watermarks(redis_client, prefix) == {0: 100.0, 1: 70.0}
    assert await current_event_time(redis_client, prefix) == 100.0


def test_now_before_any_worker_swept_is_a_clear_error(
        cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segments"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("streamproc: no event time recorded under key prefix")
    assert err.endswith("pass an explicit as_of (--as-of ISO)")
    doc = _json_out(capsys, ["segments", "--json", "--as-of", "1997-10-01T00:00:00Z"])
    assert (doc["as_of"], doc["customers"]) == ("1997-10-01T00:00:00Z", 0)
