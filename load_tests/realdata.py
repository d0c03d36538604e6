"""Churn on real purchase histories: CDNOW through the real path vs batch baselines.

    python -m load_tests.realdata --out load_tests/results/realdata.json

1. The CDNOW 1/10 sample (``load_tests.cdnow``) becomes purchase events; the calibration
   period (orders up to 1997-09-30) is written to a JSONL file in event-time order.
2. An embedded Tansu broker and a redis-server start, then one real worker with default
   settings (``--set GROUP.FIELD=VALUE`` changes one); ``python -m streamproc replay FILE
   --wait --json`` sends the file and returns once the worker processed it; the run then
   waits until the published model version stops changing (the trainer caught up).
3. Every customer is scored as of the cutoff through the read API
   (``AnalyticsReader.all_customers(as_of=cutoff)``); the churn alerts are read back.
4. In the same run, on the same customers and labels: lifetimes' BG/NBD, a 5-fold
   logistic regression on RFM + tenure, and streamproc's ``recency_days`` alone.

Labels: churned = no order in the 39 weeks after the cutoff, and no order within the
model's own horizon H after it. Printed as rich tables and written as JSON (``--out``).
The driver (``stream_scores``) is one function; metrics, baselines and the report take
plain scores, so an in-memory driver can reuse them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from load_tests import cdnow
from load_tests.baselines import (
    bgnbd_gamma_gamma_value,
    fit_bgnbd,
    logistic_cv,
    rfm_matrix,
    summarize,
    versions,
)
from load_tests.bench import _code_state, parse_overrides
from load_tests.cdnow import DAY
from load_tests.churn_metrics import cutoff_alerts, evaluate, streaming_alerts, value_figures
from load_tests.realdata_report import print_report
from streamproc.settings import Settings, to_env

LONG_LABEL = "churn_39w"
HORIZON_LABEL = "churn_horizon"
#: The run goes on once the published model version did not change for this long.
SETTLE_S = 10.0


@dataclass
class StreamScores:
    """What a streaming driver hands the evaluation: one row per scored customer."""

    churn_probability: dict[str, float | None]
    recency_days: dict[str, float]
    #: Spend expected over the model's horizon (None before a model).
    expected_value: dict[str, float | None]
    #: Churn alerts as (customer id, event time in seconds).
    alerts: list[tuple[str, float]]
    horizon_days: float
    threshold: float
    model: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)


# --- the real path -------------------------------------------------------------------------


def worker_settings(bootstrap: str, redis_url: str,
                    overrides: Mapping[str, Mapping[str, Any]]) -> Settings:
    """Default settings but for where the services are (and any ``--set``)."""
    groups: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": bootstrap, "consumer_group": "realdata"},
        "redis": {"url": redis_url, "key_prefix": "realdata"},
        # 1997 replayed as if live: the alerts it would have raised are what is measured.
        "models": {"signing_key": secrets.token_urlsafe(32), "history_lag_hours": 0.0},
        "metrics": {"port": 0},
    }
    for group, values in overrides.items():
        groups.setdefault(group, {}).update(values)
    return Settings(**groups)  # type: ignore[arg-type]


def replay_file(settings: Settings, path: Path, timeout_s: float) -> dict[str, Any]:
    """``python -m streamproc replay FILE --wait --json``: the CLI a user runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMPROC_")}
    env.update(to_env(settings))
    proc = subprocess.run([sys.executable, "-m", "streamproc", "replay", str(path), "--wait",
                           "--json"], env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"replay failed ({proc.returncode}): {proc.stderr.strip()}")
    doc: dict[str, Any] = orjson.loads(proc.stdout)
    return doc


async def settle_model(settings: Settings, quiet_s: float, limit_s: float = 300.0) -> int:
    """Wait until the published model version has not changed for ``quiet_s``."""
    from streamproc.api import AnalyticsReader

    reader = AnalyticsReader(settings)
    try:
        version, since, started = -1, time.monotonic(), time.monotonic()
        while time.monotonic() - since < quiet_s and time.monotonic() - started < limit_s:
            current = await reader.models.current_version()
            if current != version:
                version, since = current, time.monotonic()
            await asyncio.sleep(1.0)
        return version
    finally:
        await reader.close()


async def read_scores(settings: Settings, as_of: datetime) -> StreamScores:
    """Every stored customer scored as of ``as_of``, the model, and every churn alert."""
    from streamproc.api import AnalyticsReader
    from streamproc.commands.inspect import tail_outputs

    reader = AnalyticsReader(settings)
    try:
        probability: dict[str, float | None] = {}
        recency: dict[str, float] = {}
        value: dict[str, float | None] = {}
        async for report in reader.all_customers(as_of=as_of):
            probability[report.customer_id] = report.churn_probability
            recency[report.customer_id] = float(report.profile["recency_days"])
            value[report.customer_id] = report.expected_value
        bundle = await reader.bundle()
    finally:
        await reader.close()
    alerts = [(r.value["customer_id"], datetime.fromisoformat(r.value["event_time"]).timestamp())
              async for r in tail_outputs(settings, follow=False, from_beginning=True, last=0)
              if r.kind == "churn_alert"]
    model = {} if bundle is None else {
        "version": bundle.version, "churn_ready": bundle.churn_ready,
        "labels_seen": bundle.labels_seen, "horizon_days": bundle.horizon_days,
        "typical_gap_days": bundle.typical_gap_days, "quality": dict(bundle.quality)}
    m = settings.models
    # The H-day label uses the horizon the model published (the operator's if set).
    horizon = bundle.horizon_days if bundle is not None else m.churn_horizon_days
    if horizon is None:
        raise RuntimeError("no model version was published: no horizon to label against")
    return StreamScores(probability, recency, value, alerts, horizon, m.churn_threshold, model)


def stream_scores(orders: Sequence[cdnow.Order], split: cdnow.Split,
                  overrides: Mapping[str, Mapping[str, Any]], workdir: Path,
                  console: Console, settle_s: float = SETTLE_S) -> StreamScores:
    """Replay the calibration orders through a real worker and read the scores back."""
    from streamproc.runtime.embedded import spawn_worker, start_redis, start_tansu, stop_process
    from streamproc.runtime.kafka import ensure_topics

    events = workdir / "calibration.jsonl"
    with events.open("w", encoding="utf-8") as handle:
        handle.writelines(cdnow.jsonl(cdnow.replay_order(split.calibration(orders))))
    started = time.monotonic()
    broker = start_tansu()
    redis = start_redis()
    worker = None
    try:
        settings = worker_settings(f"127.0.0.1:{broker.port}",
                                   f"redis://127.0.0.1:{redis.port}/0", overrides)
        asyncio.run(ensure_topics(settings))
        worker = spawn_worker(to_env(settings), log_path=workdir / "worker.log")
        console.print(f"replaying {events} (worker log {workdir / 'worker.log'})")
        replayed = replay_file(settings, events, timeout_s=3600)
        replay_s = time.monotonic() - started
        version = asyncio.run(settle_model(settings, settle_s))
        scores = asyncio.run(read_scores(settings, split.cutoff))
        scores.run = {"replay": replayed, "replay_seconds": round(replay_s, 1),
                      "settled_model_version": version,
                      "seconds": round(time.monotonic() - started, 1)}
        return scores
    finally:
        if worker is not None:
            stop_process(worker)
        redis.stop()
        broker.stop()


# --- evaluation ----------------------------------------------------------------------------


def evaluate_run(population: Mapping[str, cdnow.Customer], split: cdnow.Split,
                 stream: StreamScores) -> dict[str, Any]:
    """Every score against both labels, calibration tables and alert figures, as JSON."""
    ids = sorted(population)
    missing = [c for c in ids if c not in stream.recency_days]
    ids = [c for c in ids if c in stream.recency_days]
    customers = [population[c] for c in ids]
    horizon = stream.horizon_days
    labels = {LONG_LABEL: cdnow.churn_labels(customers, split.cutoff, split.holdout_days),
              HORIZON_LABEL: cdnow.churn_labels(customers, split.cutoff, horizon)}
    days = {LONG_LABEL: float(split.holdout_days), HORIZON_LABEL: horizon}
    summary = summarize(customers, split)
    bgnbd = fit_bgnbd(summary)
    cutoff = split.cutoff.timestamp()
    spend = [c.spend_between(cutoff, cutoff + split.holdout_days * DAY) for c in customers]
    predicted = [stream.expected_value.get(c) for c in ids]
    value: dict[str, Any] = {"BG/NBD + Gamma-Gamma": value_figures(
        spend, bgnbd_gamma_gamma_value(bgnbd, customers, split.holdout_days).tolist())}
    if all(v is not None for v in predicted):
        value = {"streamproc": value_figures(spend, [float(v or 0.0) for v in predicted]),
                 **value}
    rfm = rfm_matrix(summary)
    streamed = [stream.churn_probability.get(c) for c in ids]
    scores: dict[str, dict[str, Any]] = {}
    probabilities: dict[str, dict[str, Sequence[float]]] = {}
    for label, y in labels.items():
        probabilities[label] = {"BG/NBD": bgnbd.p_no_purchase(days[label]).tolist(),
                                "logistic RFM+tenure": logistic_cv(rfm, y).tolist()}
        if all(p is not None for p in streamed):
            probabilities[label] = {"streamproc": [float(p or 0.0) for p in streamed],
                                    **probabilities[label]}
        scores[label] = {name: evaluate(y, p, probability=True).to_dict()
                         for name, p in probabilities[label].items()}
        scores[label]["streamproc recency_days"] = evaluate(
            y, [stream.recency_days[c] for c in ids], probability=False).to_dict()
    churned = {c for c, y in zip(ids, labels[LONG_LABEL], strict=True) if y}
    alerts: dict[str, Any] = {"streamproc (streamed)": streaming_alerts(
        stream.alerts, {c: population[c] for c in ids}, horizon_days=horizon,
        churned=churned).to_dict()}
    for name, p in probabilities[HORIZON_LABEL].items():
        alerts[f"{name} at the cutoff"] = cutoff_alerts(
            ids, p, stream.threshold, population, horizon_labels=labels[HORIZON_LABEL],
            churned=churned).to_dict()
    return {
        "customers": len(ids), "missing_from_read_api": len(missing),
        "streamproc_probabilities": sum(p is not None for p in streamed),
        "labels": {name: {"days": days[name], "base_rate": sum(y) / len(y) if y else None}
                   for name, y in labels.items()},
        "scores": scores, "alerts": alerts, "threshold": stream.threshold,
        "value": {"holdout_days": split.holdout_days,
                  "holdout_spend": round(sum(spend), 2), "scores": value},
        "bgnbd_params": bgnbd.params,
    }


def choose_customers(orders: Sequence[cdnow.Order], count: int | None,
                     seed: int) -> list[cdnow.Order]:
    """All orders, or every order of ``count`` customers drawn with ``seed``."""
    if count is None:
        return list(orders)
    ids = sorted({o.customer_id for o in orders})
    keep = set(random.Random(seed).sample(ids, min(count, len(ids))))
    return [o for o in orders if o.customer_id in keep]


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """The whole evaluation; returns the JSON document."""
    split = cdnow.Split()
    path = cdnow.sample_path()
    orders = choose_customers(cdnow.read_orders(path), args.customers, args.seed)
    population = cdnow.customers(orders, split)
    with tempfile.TemporaryDirectory(prefix="streamproc-realdata-") as tmp:
        stream = stream_scores(orders, split, parse_overrides(args.set), Path(tmp), console,
                               args.settle_s)
    doc = {
        "command": " ".join(["python -m load_tests.realdata", *sys.argv[1:]]),
        "when": datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="seconds"),
        "code": _code_state(),
        "dataset": {"file": path.name, "orders": len(orders),
                    "calibration_orders": len(split.calibration(orders)),
                    "customers": len(population), "sample_seed": args.seed,
                    "cutoff": split.cutoff.isoformat(), "holdout_days": split.holdout_days},
        "overrides": parse_overrides(args.set),
        "streamproc": {"model": stream.model, "horizon_days": stream.horizon_days,
                       **stream.run,
                       "alerts": len(stream.alerts)},
        "versions": versions(),
        **evaluate_run(population, split, stream),
    }
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(prog="python -m load_tests.realdata", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="write the JSON document here")
    p.add_argument("--customers", type=int, default=None,
                   help="evaluate a seeded sample of this many customers (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of --customers (default: 0)")
    p.add_argument("--settle-s", type=float, default=SETTLE_S,
                   help="after the replay, wait until the published model version has not "
                   f"changed for this long (default: {SETTLE_S:g})")
    p.add_argument("--set", action="append", default=[], metavar="GROUP.FIELD=VALUE",
                   help="change one worker setting, e.g. models.churn_horizon_days=90")
    args = p.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 132)
    doc = run(args, console)
    print_report(doc, console)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2
                                          | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
