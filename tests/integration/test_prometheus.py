"""A real Prometheus scrapes a real worker process that processes real events.

The worker runs against the session's Tansu broker and redis-server; Prometheus
(Debian's ``/usr/bin/prometheus``) scrapes it every second with our alerting rules
loaded, and the test reads the figures back through Prometheus' HTTP API.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from streamproc.core.generator import TrafficGenerator, batch_envelopes
from streamproc.metrics import REDIS_OPERATIONS
from streamproc.runtime.embedded import free_port, spawn_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings, to_env
from tests.integration.kafka_io import produce, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
JOB = "crm-analytics"  # any name: the rules find workers by the service label
START = datetime(2026, 1, 1, tzinfo=UTC)
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=5)

# Garbage input and the reason code each one is dead-lettered with.
GARBAGE: list[tuple[str, bytes, str]] = [
    ("clickstream", b"\xff\xfe not json", "undecodable"),
    ("clickstream", b"{not json", "not_json"),
    ("purchases", b"also not json", "not_json"),
    ("purchases", b"[1, 2, 3]", "not_object"),
    ("clickstream", b'{"events": []}', "empty_batch"),
]


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        pytest.fail("the prometheus server is missing: apt-get install prometheus "
                    "(.ci/run installs it)", pytrace=False)
    return found


@dataclass
class PrometheusServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def prometheus_servers() -> Iterator[list[PrometheusServer]]:
    """Servers started by ``start_prometheus`` during the test; stopped afterwards."""
    servers: list[PrometheusServer] = []
    yield servers
    for server in servers:
        if server.proc.poll() is None:
            server.proc.terminate()
            try:
                server.proc.wait(15)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait(5)


def worker_relabelling() -> list[dict[str, Any]]:
    """The relabelling deploy/prometheus/prometheus.yml gives the workers' scrape job."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    (job,) = [j for j in config["scrape_configs"] if "dns_sd_configs" in j]
    relabel: list[dict[str, Any]] = job["relabel_configs"]
    return relabel


def start_prometheus(servers: list[PrometheusServer], tmp_path: Path,
                     target: str) -> PrometheusServer:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                   "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}],
                            "relabel_configs": worker_relabelling()}],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={config_path}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT)
    server = PrometheusServer(f"http://127.0.0.1:{port}", proc, log)
    servers.append(server)
    return server


@pytest.fixture
def worker_procs(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        yield session


async def get_status(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """Status and body (JSON when it parses); status 0 while nothing listens."""
    try:
        async with http.get(url) as resp:
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError):
        return 0, None
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


async def query(http: aiohttp.ClientSession, prom: PrometheusServer,
                promql: str) -> list[dict[str, Any]]:
    """Instant query; the result vector (each item has ``metric`` and ``value``)."""
    async with http.get(f"{prom.url}/api/v1/query", params={"query": promql}) as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def scalar(http: aiohttp.ClientSession, prom: PrometheusServer, promql: str) -> float:
    """The single value of ``promql`` (NaN when the vector is empty)."""
    result = await query(http, prom, promql)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else math.nan


def traffic(settings: Settings) -> tuple[list[tuple[str, str, Any]], Counter[str]]:
    """Records for the broker (half single events, half envelopes) and valid events by topic."""
    gen = TrafficGenerator(customers=40, seed=23, start=START, days=20)
    events = list(gen.events())
    topic_of = {"clickstream": settings.topics.clickstream,
                "purchases": settings.topics.purchases}
    half = len(events) // 2
    records: list[tuple[str, str, Any]] = [
        (topic_of[e.topic], e.key, e.value) for e in events[:half]]
    records += [(topic_of[t], k, v) for t, k, v in batch_envelopes(events[half:], 10)]
    records += [(topic_of[t], "c-garbage", raw) for t, raw, _ in GARBAGE]
    return records, Counter(topic_of[e.topic] for e in events)


async def test_prometheus_scrapes_a_working_worker(
        make_settings: Any, worker_procs: list[subprocess.Popen[bytes]],
        prometheus_servers: list[PrometheusServer], http: aiohttp.ClientSession,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    # Faust keeps "<group>-data" in the working directory: keep it out of the checkout.
    monkeypatch.chdir(tmp_path)
    port = free_port()
    settings: Settings = make_settings(metrics={"port": port, "host": "127.0.0.1"})
    await ensure_topics(settings)
    worker_procs.append(spawn_worker(to_env(settings), log_path=tmp_path / "worker.log"))
    prom = start_prometheus(prometheus_servers, tmp_path, f"127.0.0.1:{port}")
    worker_url = f"http://127.0.0.1:{port}"

    async def worker_ready() -> bool:
        assert worker_procs[0].poll() is None, (tmp_path / "worker.log").read_text()
        status, _ = await get_status(http, f"{worker_url}/readyz")
        return status == 200

    async def prometheus_ready() -> bool:
        assert prom.proc.poll() is None, prom.log.read_text()
        status, _ = await get_status(http, f"{prom.url}/-/ready")
        return status == 200

    await wait_until(prometheus_ready, timeout=20, what="Prometheus to be ready")
    await wait_until(worker_ready, timeout=40, what="the worker's /readyz to answer 200")

    # Health pages, read directly.
    status, body = await get_status(http, f"{worker_url}/healthz")
    assert (status, body) == (200, {"status": "ok"})
    status, body = await get_status(http, f"{worker_url}/readyz")
    assert status == 200
    assert body["ready"] is True

    # docker-compose.yml's worker healthcheck, run as is against this worker's port.
    test = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["worker"][
        "healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    check = await asyncio.create_subprocess_exec(
        sys.executable, *[arg.replace(":6066/", f":{port}/") for arg in test[2:]])
    assert await asyncio.wait_for(check.wait(), 10) == 0

    # An idle worker reports Redis up too (the periodic model refresh is a Redis call), so
    # StreamprocRedisDown does not page for a worker that has no traffic yet.
    async def idle_redis_up() -> bool:
        return await scalar(http, prom, "streamproc_redis_up") == 1

    await wait_until(idle_redis_up, timeout=15, what="streamproc_redis_up == 1 while idle")

    # Before any event: process and Python series, and labelled counters already at 0.
    assert await scalar(http, prom, "process_cpu_seconds_total") > 0
    assert await scalar(http, prom, "process_resident_memory_bytes") > 0
    assert await query(http, prom, "python_info")
    assert await scalar(http, prom, f'sum(streamproc_dead_letters_total{{topic='
                        f'"{settings.topics.purchases}", reason="schema"}})') == 0
    assert await scalar(http, prom, "count(streamproc_redis_errors_total)") == len(
        REDIS_OPERATIONS)
    assert await scalar(http, prom, "sum(streamproc_model_snapshots_rejected_total)") == 0
    assert await scalar(http, prom, "sum(streamproc_duplicate_events_total)") == 0

    records, valid_by_topic = traffic(settings)
    valid = sum(valid_by_topic.values())
    assert valid > 500
    await produce(settings.kafka.bootstrap_servers, records)

    applied_q = 'sum(streamproc_events_total{outcome="applied"})'

    async def all_applied() -> bool:
        return await scalar(http, prom, applied_q) == valid

    await wait_until(all_applied, timeout=40, interval=0.5,
                     what=f"Prometheus to report {valid} applied events")

    # Input accounting: every valid event applied once, per topic; every bad one dead-lettered.
    by_topic = await query(http, prom,
                           'sum by (topic) (streamproc_events_total{outcome="applied"})')
    assert {r["metric"]["topic"]: float(r["value"][1]) for r in by_topic} == {
        t: float(n) for t, n in valid_by_topic.items()}
    assert await scalar(http, prom, 'sum(streamproc_events_total{outcome="duplicate"})') == 0

    expected_reasons = Counter(reason for _, _, reason in GARBAGE)

    async def dead_letters_counted() -> bool:
        rows = await query(http, prom, "sum by (reason) (streamproc_dead_letters_total) > 0")
        return {r["metric"]["reason"]: float(r["value"][1]) for r in rows} == {
            k: float(v) for k, v in expected_reasons.items()}

    await wait_until(dead_letters_counted, timeout=10, what="dead letters by reason")
    assert await scalar(http, prom, 'sum(streamproc_events_total{outcome="rejected"})') == len(
        GARBAGE)

    # Health gauges and the scrape itself.
    assert await scalar(http, prom, f'up{{job="{JOB}", service="streamproc"}}') == 1
    assert await scalar(http, prom, "streamproc_redis_up") == 1
    assert await scalar(http, prom, "streamproc_ready") == 1

    # Histograms: one age observation per applied event; batches and Redis calls observed.
    assert await scalar(http, prom, "sum(streamproc_event_age_seconds_count)") == valid
    assert await scalar(http, prom, "sum(streamproc_batch_duration_seconds_count)") > 0
    assert await scalar(
        http, prom, 'sum(streamproc_redis_roundtrip_seconds_count{operation="apply_batch"})') > 0
    p99 = await scalar(http, prom, "histogram_quantile(0.99, sum by (le) "
                       "(streamproc_batch_duration_seconds_bucket))")
    assert 0 < p99 < 30
    assert await scalar(http, prom, "sum(streamproc_batch_events_sum)") == valid

    # Faust's own sensor, served on the same registry: every input message was received once.
    rows = await query(http, prom, "streamproc_faust_messages_received_per_topic_total")
    received = {r["metric"]["topic"]: float(r["value"][1]) for r in rows}
    for topic, sent in Counter(t for t, _, _ in records).items():
        assert received.get(topic) == sent, (topic, received)
    assert await scalar(http, prom, "sum(streamproc_faust_messages_received_total)") >= len(
        records)
    assert await query(http, prom, "streamproc_faust_total_rebalances")

    # The alerting rules load in a real server and nothing pages for a healthy worker.
    async with http.get(f"{prom.url}/api/v1/rules") as resp:
        groups = (await resp.json())["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 8
    assert all(rule["health"] == "ok" for rule in rules), [
        (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    # (Evaluated every second; an alert pending from before the first event has to resolve.)
    async def nothing_pending() -> bool:
        return await query(http, prom, 'ALERTS{alertname=~"StreamprocWorkerDown|'
                           'StreamprocRedisDown|StreamprocWorkersAbsent"}') == []

    await wait_until(nothing_pending, timeout=10, what="no availability alert")

    assert time.monotonic() - started < 60
