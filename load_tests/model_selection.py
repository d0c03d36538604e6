"""Measure segmentation choices on generator traffic.

Replays seeded synthetic traffic once through the worker's scoring step on the in-memory
store (``core/replay.py``, with the settings' defaults: features, snapshots, delayed
labels, a model version every SNAPSHOT_EVERY_EXAMPLES), records the profile stream the
trainer learns from, then runs every clusterer over it: adjusted Rand index vs planted
persona (every customer's profile at the end of the period), learn rows/s, pickle size.
The churn model is chosen on real purchases, not here (``load_tests/realdata.py``).

Run: ``python load_tests/model_selection.py [--customers 1000] [--days 120] [--seed 7]``
"""

from __future__ import annotations

import argparse
import math
import pickle
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from river import preprocessing

from streamproc.core.features import model_features
from streamproc.core.generator import TrafficGenerator, batch_envelopes
from streamproc.core.modelset import Trainer
from streamproc.core.replay import Replay
from streamproc.core.segments import (
    FrozenCentres,
    adjusted_rand_index,
    clusterer_centres,
    feature_matrix,
    make_clusterer,
    segment_features,
)
from streamproc.core.training import ProfileExample
from streamproc.settings import IngestSettings, ModelSettings

CLUSTERERS = ("kmeans", "kmeans-h0.2", "kmeans-h0.01", "streamkmeans", "clustream", "dbstream")


def record(customers: int, days: float, seed: int) -> tuple[Replay, TrafficGenerator, float]:
    """Replay the traffic once with the default trainer, recording both streams."""
    gen = TrafficGenerator(
        customers=customers, seed=seed, start=datetime(2024, 1, 1, tzinfo=UTC), days=days
    )
    models = ModelSettings()
    trainer = Trainer(n_segments=models.segments, seed=seed,
                      churn_threshold=models.churn_threshold,
                      min_labels=models.min_labels_before_alerts)
    replay = Replay(trainer, models.step_config(), models.snapshot_every_examples,
                    lateness_s=IngestSettings().allowed_lateness_s, record=True)
    messages = list(batch_envelopes(gen.events(), 20, max_lag=300))
    n = sum(len(m["events"]) if "events" in m else 1 for _, _, m in messages)
    t0 = time.perf_counter()
    replay.feed_messages(messages)
    replay.advance(gen.end.timestamp())
    elapsed = time.perf_counter() - t0
    print(
        f"replayed {n} events of {customers} customers over {days:g} days in {elapsed:.1f} s "
        f"({n / elapsed:,.0f} events/s): {replay.snapshots} snapshots, "
        f"{len(replay.label_stream)} labels "
        f"({sum(e.label for e in replay.label_stream)} churned), "
        f"{len(replay.alerts)} alerts"
    )
    return replay, gen, elapsed


def eval_clusterer(
    kind: str,
    stream: list[ProfileExample],
    final: list[dict[str, float]],
    personas: list[str],
    k: int,
    seed: int,
) -> dict[str, Any]:
    """ARI on end-of-period profiles, learn speed and size of one clusterer."""
    scaler = preprocessing.StandardScaler()
    model = make_clusterer(kind, k, seed)
    rows = [segment_features(e.features) for e in stream]
    t0 = time.perf_counter()
    for x in rows:
        scaler.learn_one(x)
        model.learn_one(scaler.transform_one(x))
    rate = len(rows) / (time.perf_counter() - t0)
    centres = clusterer_centres(model, k)
    frozen = FrozenCentres.build(scaler.means, scaler.vars, centres, k)
    assigned = np.argmin(frozen.distances(feature_matrix([segment_features(f) for f in final])), 1)
    return {
        "model": kind,
        "clusters": len(centres),
        "used": len(set(assigned.tolist())),
        "ari": adjusted_rand_index(personas, assigned.tolist()),
        "rows_s": rate,
        "kb": len(pickle.dumps(model)) / 1024,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A plain fixed-width table."""
    cols = list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    cells = [[fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--days", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--segments", type=int, default=5)
    args = parser.parse_args()

    replay, gen, _ = record(args.customers, args.days, args.seed)
    end = gen.end.timestamp()
    truths = gen.truths()
    views = replay.views(end)
    final = [model_features(v) for v in views]
    personas = [truths[v.customer_id].persona for v in views]

    print("\n# segmentation: ARI vs planted persona on end-of-period profiles")
    print(
        table(
            [
                eval_clusterer(
                    kind, replay.profile_stream, final, personas, args.segments, args.seed
                )
                for kind in CLUSTERERS
            ]
        )
    )

    bundle = replay.trainer.bundle()
    t0 = time.perf_counter()
    scores = bundle.score_many(views)
    batch_rate = len(views) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for v in views[:2000]:
        bundle.score(v)
    one_rate = min(2000, len(views)) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(20):
        replay.trainer.bundle()
    bundle_ms = (time.perf_counter() - t0) / 20 * 1000
    print("\n# chosen bundle (Trainer defaults)")
    print(
        f"ARI {adjusted_rand_index(personas, [s.segment_id for s in scores]):.3f}; "
        f"segments: {', '.join(s.name for s in bundle.segments.values())}"
    )
    print(
        f"quality (last {bundle.quality['window']:.0f} labels): "
        + ", ".join(f"{k}={v:.3f}" for k, v in bundle.quality.items() if k not in {"window"})
    )
    print(
        f"score_many {batch_rate:,.0f} profiles/s; score (one at a time) {one_rate:,.0f}/s; "
        f"bundle() {bundle_ms:.1f} ms; bundle pickle {len(pickle.dumps(bundle)) / 1024:.1f} KB; "
        f"trainer state {len(pickle.dumps(replay.trainer)) / 1024:.1f} KB"
    )


if __name__ == "__main__":
    main()
