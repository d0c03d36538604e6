"""A/B: the real worker versus an experimental variant, alternating on the same topics.

    AB_TREE=/tmp/old python -m load_tests.ab --variant load_tests.tree_worker [--repeats 3]

Both arms read the same pre-produced topic (fresh consumer group and Redis prefix per
run) and alternate A, B, A, B... so drift on a shared machine hits both alike.
Prints and writes per-run rates, medians and the median of per-pair ratios B/A.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from load_tests.bench import (
    Bench,
    console,
    customers_for,
    pipeline_run,
    produce_all,
    used_memory,
)
from load_tests.stats import Measured, median, ratio
from load_tests.traffic import prepare_messages
from streamproc.runtime.embedded import start_redis, start_tansu


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate the two arms per shape; return the result document."""
    workdir = Path(tempfile.mkdtemp(prefix="streamproc-ab-"))
    broker, redis_svc = start_tansu(), start_redis()
    out: dict[str, Any] = {"variant": args.variant, "repeats": args.repeats, "shapes": {}}
    try:
        bench = Bench(broker, redis_svc, workdir, None)
        if not args.cold_models:
            bench.warm_up(args.seed)
        for shape, n in zip(args.shapes, args.events, strict=True):
            tag = f"ab{shape}-{uuid.uuid4().hex[:6]}"
            base = bench.settings(tag)
            records = prepare_messages(customers_for(shape, n), n, shape, args.seed,
                                       {"clickstream": base.topics.clickstream,
                                        "purchases": base.topics.purchases})
            await produce_all(bench, base, records)
            arms = {"baseline": Measured(), "variant": Measured()}
            cpu: dict[str, list[dict[str, float]]] = {"baseline": [], "variant": []}
            for rep in range(args.repeats):
                for arm in ("baseline", "variant"):
                    bench.worker_module = None if arm == "baseline" else args.variant
                    await used_memory(bench.redis_url)  # flush between runs
                    result = await pipeline_run(bench, [bench.settings(tag)], n,
                                                f"{arm}-b{shape}-r{rep}", limit_s=args.limit_s)
                    arms[arm].add(result.rate(n))
                    cpu[arm].append(result.cpu)
                    console.print(f"shape {shape} rep {rep} {arm}: {arms[arm].runs[-1]} ev/s "
                                  f"cpu {result.cpu}")
            pairs = [ratio(b, a) for a, b in zip(arms["baseline"].runs, arms["variant"].runs,
                                                 strict=True)]
            out["shapes"][str(shape)] = {
                "events": n, "messages": len(records),
                "baseline_events_per_s": arms["baseline"].to_dict(),
                "variant_events_per_s": arms["variant"].to_dict(),
                "ratio_per_pair": pairs, "ratio_median": median(pairs), "cpu": cpu,
            }
    finally:
        redis_svc.stop()
        broker.stop()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m load_tests.ab")
    p.add_argument("--variant", required=True,
                   help="module run as the variant's worker, e.g. load_tests.tree_worker")
    p.add_argument("--shapes", type=int, nargs="+", default=[1, 50])
    p.add_argument("--events", type=int, nargs="+", default=[30_000, 300_000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--limit-s", type=float, default=120.0, help="give up on a run after this")
    p.add_argument("--out", default="load_tests/results/ab.json")
    p.add_argument("--cold-models", action="store_true",
                   help="start every worker without a model (default: a warm, trained one)")
    args = p.parse_args(argv)
    doc = asyncio.run(run(args))
    Path(args.out).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    for shape, e in doc["shapes"].items():
        console.print(f"shape {shape}: baseline {e['baseline_events_per_s']['median']} ev/s, "
                      f"variant {e['variant_events_per_s']['median']} ev/s, "
                      f"median pair ratio x{e['ratio_median']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
