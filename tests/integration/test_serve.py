"""``streamproc serve`` against a real worker, broker and redis-server.

One worker learns a seeded persona stream replayed with ``replay --wait``; the read API
then runs as its own process, as a Redis user that may only run read commands, so every
request below also proves the API never writes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from streamproc.api import AnalyticsReader, CustomerReport
from streamproc.commands.replay import replay
from streamproc.core.generator import TrafficGenerator, batch_envelopes
from streamproc.runtime.embedded import Service, free_port, spawn_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings, to_env
from streamproc.times import iso_utc

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 1, tzinfo=UTC)
TOKEN = "serve-test-token"
MAX_PAGE = 50
MAX_SCAN = 25  # small: pages that stop before they are full are exercised too


@dataclass
class Served:
    settings: Settings
    url: str
    events_per_customer: dict[str, int]
    #: Every stored customer scored by the reader in-process (full access), as of now.
    reports: dict[str, CustomerReport]
    now: datetime
    #: The read-only Redis user the API runs as.
    redis_user: str
    redis_password: str


def _settings(broker: Service, redis_server: Service) -> Settings:
    run = uuid.uuid4().hex[:10]
    return Settings(
        kafka={"bootstrap_servers": f"127.0.0.1:{broker.port}", "consumer_group": f"sv-{run}",
               "topic_partitions": 1},
        topics={n: f"{n}-{run}" for n in ("clickstream", "purchases", "segment_changes",
                                          "churn_alerts", "dead_letter", "training_examples")},
        redis={"url": f"redis://127.0.0.1:{redis_server.port}/0", "key_prefix": f"sv{run}"},
        models={"signing_key": "test-signing-key", "churn_horizon_days": 14,
                "min_labels_before_alerts": 0, "snapshot_every_examples": 50,
                "reload_interval_s": 0.5},
        metrics={"port": 0},
        serve={"host": "127.0.0.1", "port": free_port(), "token": TOKEN,
               "max_page_size": MAX_PAGE, "default_page_size": 10,
               "max_scan_per_page": MAX_SCAN, "summary_ttl_s": 0},
    )


def _read_only_user(redis_server: Service, prefix: str) -> tuple[str, str]:
    """A Redis ACL user allowed read commands on the deployment's keys, nothing else."""
    name, password = f"api-{prefix}", uuid.uuid4().hex
    admin = redis.Redis(port=redis_server.port)
    try:
        # The ACL the README recommends for the read API's Redis user.
        admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], reset_keys=True,
                          keys=[f"{prefix}:*"], categories=["-@all", "+@read", "+@connection"])
    finally:
        admin.close()
    return name, password


def _replay(settings: Settings, tmp: Path, gen: TrafficGenerator) -> None:
    lines = [orjson.dumps(value).decode()
             for _, _, value in batch_envelopes(gen.events(), 20, max_lag=300)]
    path = tmp / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert replay(settings, path, fmt="jsonl", rate=None, topic_map=[], as_json=True,
                  wait=True, wait_timeout_s=120) == 0


async def _settled_reports(settings: Settings) -> tuple[dict[str, CustomerReport], datetime]:
    """Once the published model version stops moving: every customer scored as of now."""
    reader = AnalyticsReader(settings)
    try:
        last, stable, deadline = -1, 0, time.monotonic() + 120
        while stable < 3 and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            version = await reader.models.current_version()
            stable = stable + 1 if version == last and version > 0 else 0
            last = version
        assert stable >= 3, "the model version never settled"
        now = await reader.event_time()
        assert now is not None
        return {r.customer_id: r async for r in reader.all_customers()}, now
    finally:
        await reader.close()


def _spawn_api(settings: Settings, user: str, password: str, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(to_env(settings))
    env.update(STREAMPROC_REDIS__USERNAME=user, STREAMPROC_REDIS__PASSWORD=password)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "streamproc", "serve"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"the read API never became ready:\n{log.read_text()}")


@pytest.fixture(scope="module")
def served(broker: Service, redis_server: Service,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = _settings(broker, redis_server)
    tmp = tmp_path_factory.mktemp("serve")
    gen = TrafficGenerator(customers=60, seed=5, start=START, days=60)
    per_customer: dict[str, int] = {}
    for event in gen.events():
        per_customer[event.key] = per_customer.get(event.key, 0) + 1
    asyncio.run(ensure_topics(settings))
    worker = spawn_worker(to_env(settings), log_path=tmp / "worker.log")
    api = None
    try:
        _replay(settings, tmp, gen)
        reports, now = asyncio.run(_settled_reports(settings))
        user, password = _read_only_user(redis_server, settings.redis.key_prefix)
        # The worker stops first: nothing changes under the API while it is read.
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        api = _spawn_api(settings, user, password, tmp / "api.log")
        url = f"http://127.0.0.1:{settings.serve.port}"
        _wait_ready(url, api, tmp / "api.log")
        yield Served(settings, url, per_customer, reports, now, user, password)
    finally:
        for proc in (api, worker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


def _get(served: Served, path: str, token: str | None = TOKEN,
         **query: Any) -> tuple[int, Any, dict[str, str]]:
    url = served.url + path
    if query:
        url += "?" + urllib.parse.urlencode(query, doseq=True)
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            body, status, headers = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        body, status, headers = exc.read(), exc.code, dict(exc.headers)
    try:
        return status, json.loads(body), headers
    except ValueError:
        return status, body.decode(), headers


def _customer_path(cid: str) -> str:
    return "/v1/customers/" + urllib.parse.quote(cid, safe="")


def test_openapi_and_docs_describe_every_route(served: Served) -> None:
    status, spec, _ = _get(served, "/openapi.json", token=None)
    assert status == 200
    assert {"/v1/customers/{customer_id}", "/v1/customers", "/v1/segments",
            "/v1/segments/{segment}/members", "/v1/model"} <= set(spec["paths"])
    limit = next(p for p in spec["paths"]["/v1/customers"]["get"]["parameters"]
                 if p["name"] == "limit")
    assert limit["schema"]["maximum"] == MAX_PAGE
    assert "bearer" in json.dumps(spec["components"]["securitySchemes"]).lower()
    status, page, _ = _get(served, "/docs", token=None)
    assert status == 200
    assert "swagger" in page.lower()


def test_bearer_token_is_required(served: Served) -> None:
    for token in (None, "wrong", TOKEN + "x", ""):
        status, body, headers = _get(served, "/v1/segments", token=token)
        assert status == 401, (token, body)
        assert headers.get("www-authenticate", headers.get("WWW-Authenticate")) == "Bearer"
    assert _get(served, "/v1/segments")[0] == 200
    assert _get(served, "/healthz", token=None)[0] == 200


def test_customer_as_of_now_matches_the_reader_and_the_events_sent(served: Served) -> None:
    checked = 0
    for cid, report in served.reports.items():
        status, doc, _ = _get(served, _customer_path(cid))
        assert status == 200, doc
        assert doc == report.to_dict()
        assert doc["as_of"] == iso_utc(served.now)
        assert doc["profile"]["events"] == served.events_per_customer[cid]
        checked += 1
    assert checked == len(served.events_per_customer)
    doc = served.reports[next(iter(served.reports))].to_dict()
    assert doc["segment"] is not None
    assert doc["risk_level"] in ("low", "medium", "high", "critical")
    assert isinstance(doc["profile"]["sessions"], int)
    for name, value in doc["profile"].items():
        if name.endswith("_at") and value is not None:
            assert value.endswith("Z")
            assert datetime.fromisoformat(value).tzinfo is not None


def test_as_of_accepts_iso_epoch_ms_and_now(served: Served) -> None:
    cid = max(served.reports, key=lambda c: served.reports[c].profile["recency_days"])
    now = served.reports[cid].to_dict()
    epoch_ms = round(served.now.timestamp() * 1000)
    at_ms = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    by_ms = _get(served, _customer_path(cid), as_of=str(epoch_ms))[1]
    by_iso = _get(served, _customer_path(cid), as_of=at_ms.isoformat())[1]
    assert by_ms == by_iso
    assert by_ms["as_of"] == iso_utc(at_ms)
    assert _get(served, _customer_path(cid), as_of="now")[1] == now
    earlier = _get(served, _customer_path(cid),
                   as_of=iso_utc(served.now - timedelta(days=3)))[1]
    assert earlier["profile"]["recency_days"] == pytest.approx(
        now["profile"]["recency_days"] - 3, abs=1e-6)


@pytest.mark.parametrize(("path", "query", "status", "words"), [
    ("/v1/customers/nobody-has-this-id", {}, 404, "unknown customer"),
    ("/v1/customers/" + "x" * 200, {}, 422, "longer than 128"),
    ("/v1/customers/%01bad", {}, 422, "control characters"),
    ("/v1/customers/%20padded", {}, 422, "whitespace"),
    ("/v1/customers/c", {"as_of": "yesterday"}, 422, "not a time"),
    ("/v1/customers/c", {"as_of": "1969-12-31T00:00:00Z"}, 422, "before 1970"),
    ("/v1/customers/c", {"as_of": "9" * 30}, 422, "not a time"),
    ("/v1/customers", {"limit": 10**9}, 422, f"less than or equal to {MAX_PAGE}"),
    ("/v1/customers", {"limit": MAX_PAGE + 1}, 422, f"less than or equal to {MAX_PAGE}"),
    ("/v1/customers", {"limit": 0}, 422, "greater than or equal to 1"),
    ("/v1/customers", {"limit": "many"}, 422, "integer"),
    ("/v1/customers", {"risk_level": "doomed"}, 422, "'low', 'medium', 'high' or 'critical'"),
    ("/v1/customers", {"cursor": "not-a-cursor"}, 422, "invalid cursor"),
    ("/v1/customers", {"segment": "no such segment"}, 404, "unknown segment"),
    ("/v1/segments/99/members", {}, 404, "unknown segment"),
    ("/v1/segments/no%20such/members", {"limit": 10**6}, 422, "less than or equal"),
])
def test_bad_requests_are_clear_4xx(served: Served, path: str, query: dict[str, Any],
                                    status: int, words: str) -> None:
    got, body, _ = _get(served, path, **query)
    assert got == status, body
    assert words in json.dumps(body), body


def test_unknown_segment_names_the_known_ones(served: Served) -> None:
    status, body, _ = _get(served, "/v1/segments/99/members")
    assert status == 404
    for report in served.reports.values():
        assert f"{report.segment_id} ({report.segment_name})" in body["detail"]


def test_segment_summaries_count_every_customer(served: Served) -> None:
    status, doc, _ = _get(served, "/v1/segments")
    assert status == 200
    assert doc["as_of"] == iso_utc(served.now)
    assert doc["customers"] == len(served.reports)
    sizes: dict[int | None, int] = {}
    for report in served.reports.values():
        sizes[report.segment_id] = sizes.get(report.segment_id, 0) + 1
    assert {s["segment_id"]: s["size"] for s in doc["segments"]} == sizes
    assert all(isinstance(s["size"], int) for s in doc["segments"])


def _all_pages(served: Served, path: str, **query: Any) -> tuple[list[str], int]:
    ids: list[str] = []
    pages, cursor = 0, None
    while True:
        extra = {} if cursor is None else {"cursor": cursor}
        status, page, _ = _get(served, path, **query, **extra)
        assert status == 200, page
        assert len(page["items"]) <= query.get("limit", 10)
        assert page["as_of"] == iso_utc(served.now)
        ids += [item["customer_id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, pages
        assert pages < 1000


def test_segment_members_paged_list_each_member_once(served: Served) -> None:
    segment = max({r.segment_id for r in served.reports.values()},
                  key=lambda s: sum(r.segment_id == s for r in served.reports.values()))
    expected = sorted(c for c, r in served.reports.items() if r.segment_id == segment)
    ids, pages = _all_pages(served, f"/v1/segments/{segment}/members", limit=3)
    assert sorted(ids) == expected
    assert len(ids) == len(set(ids))
    assert pages >= len(expected) / 3
    name = served.reports[expected[0]].segment_name
    by_name, _ = _all_pages(served, "/v1/customers", segment=name, limit=MAX_PAGE)
    assert sorted(by_name) == expected


def test_risk_level_members_and_full_listing(served: Served) -> None:
    levels = {r.risk_level for r in served.reports.values()}
    for level in levels:
        expected = sorted(c for c, r in served.reports.items() if r.risk_level == level)
        ids, _ = _all_pages(served, "/v1/customers", risk_level=level, limit=7)
        assert sorted(ids) == expected, level
    everyone, pages = _all_pages(served, "/v1/customers", limit=MAX_PAGE)
    assert sorted(everyone) == sorted(served.reports)
    # MAX_SCAN stops pages early: 60 customers at 25 examined per page take 3+ pages.
    assert pages >= len(served.reports) / MAX_SCAN


def test_model_document(served: Served) -> None:
    status, doc, _ = _get(served, "/v1/model")
    assert status == 200
    version = {r.model_version for r in served.reports.values()}
    assert {doc["model_version"]} == version
    assert doc["published_at"].endswith("Z")
    assert {s["segment_id"] for s in doc["segments"]} >= \
        {r.segment_id for r in served.reports.values()}


def test_the_api_user_can_not_write(served: Served, redis_server: Service) -> None:
    """The negative control: the ACL every request above ran under refuses writes."""
    client = redis.Redis(port=redis_server.port, username=served.redis_user,
                         password=served.redis_password)
    try:
        assert client.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set(f"{served.settings.redis.key_prefix}:x", "1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.eval("return 1", 0)
    finally:
        client.close()


@pytest.fixture
def bare_api(redis_server: Service, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two read APIs without a worker: one on an empty key prefix of the real Redis, one
    on a port where no Redis listens. Yields their base URLs."""
    procs = []
    urls = []
    for port in (redis_server.port, free_port()):
        settings = Settings(
            redis={"url": f"redis://127.0.0.1:{port}/0", "key_prefix": f"e{uuid.uuid4().hex[:8]}"},
            models={"signing_key": "test-signing-key"},
            serve={"host": "127.0.0.1", "port": free_port()})
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
        env.update(to_env(settings))
        log = tmp_path / f"api-{port}.log"
        with open(log, "ab") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "streamproc", "serve"],
                                          env=env, stdout=out, stderr=subprocess.STDOUT))
        urls.append(f"http://127.0.0.1:{settings.serve.port}")
    try:
        for url, proc in zip(urls, procs, strict=True):
            deadline = time.monotonic() + 30
            while _status(url + "/healthz") != 200:
                assert proc.poll() is None
                assert time.monotonic() < deadline, "the read API did not start"
                time.sleep(0.2)
        yield urls[0], urls[1]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return 0


def test_before_any_worker_and_without_redis(bare_api: tuple[str, str]) -> None:
    empty, no_redis = bare_api
    served = Served(Settings(), empty, {}, {}, START, "", "")
    status, body, _ = _get(served, "/v1/segments", token=None)
    assert status == 409
    assert "pass an explicit as_of" in body["detail"]
    status, body, _ = _get(served, "/v1/segments", token=None, as_of="2026-01-01T00:00:00Z")
    assert (status, body["customers"], body["as_of"]) == (200, 0, "2026-01-01T00:00:00Z")
    status, body, _ = _get(served, "/v1/model", token=None)
    assert (status, body["model_version"]) == (200, None)
    assert _get(served, "/v1/customers/c-1", token=None)[0] == 404
    status, body, _ = _get(served, "/v1/segments/0/members", token=None)
    assert status == 404
    assert "no model version published yet" in body["detail"]
    assert _status(empty + "/readyz") == 200
    # Redis unreachable: 503, and the process keeps answering.
    down = Served(Settings(), no_redis, {}, {}, START, "", "")
    status, body, _ = _get(down, "/v1/customers/c-1", token=None)
    assert (status, body["detail"]) == (503, "Redis is unreachable")
    assert _status(no_redis + "/readyz") == 503
    assert _status(no_redis + "/healthz") == 200
