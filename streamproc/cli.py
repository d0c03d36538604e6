"""The ``streamproc`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from streamproc.settings import SettingsError, load_settings

Command = Callable[[argparse.Namespace], int]

CONFIG_HELP = (
    "Configuration comes from STREAMPROC_* environment variables (nested groups use a "
    "double underscore, e.g. STREAMPROC_KAFKA__BOOTSTRAP_SERVERS, STREAMPROC_REDIS__URL, "
    "STREAMPROC_MODELS__SIGNING_KEY) and a .env file in the working directory; unknown "
    "STREAMPROC_* variables are rejected. See README.md for every setting."
)

AS_OF_HELP = ("score as of this event time: ISO-8601, epoch milliseconds or 'now' (default: "
              "now, the current event time: the workers' watermark, the same instant for "
              "every customer)")


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _as_of(text: str) -> object:
    """An ISO-8601 or epoch-millisecond instant, or None for ``now`` (the current event
    time): what the HTTP API's ``as_of`` takes."""
    from streamproc.times import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value

    return parse


def _worker(args: argparse.Namespace) -> int:
    from streamproc.runtime.worker import run_worker

    run_worker(load_settings())
    return 0


def _schemas(args: argparse.Namespace) -> int:
    from streamproc.schema_export import check_schemas, export_schemas

    out = Path(args.out)
    if args.check:
        problems = check_schemas(out)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    for path in export_schemas(out):
        print(path)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from streamproc.commands.demo import DemoOptions, run_demo

    return run_demo(DemoOptions(customers=args.customers, days=args.days, rate=args.rate,
                                seconds=args.seconds, seed=args.seed))


def _replay(args: argparse.Namespace) -> int:
    from streamproc.commands.replay import replay

    return replay(load_settings(), Path(args.file), fmt=args.format, rate=args.rate,
                  topic_map=args.topic_map, as_json=args.json, wait=args.wait,
                  wait_timeout_s=args.wait_timeout)


def _customer(args: argparse.Namespace) -> int:
    from rich.console import Console

    from streamproc.commands import print_json, run
    from streamproc.commands.inspect import fetch_customer, print_customer

    report = run(fetch_customer(load_settings(), args.customer_id, args.as_of))
    if args.json:
        print_json(report.to_dict())
    else:
        print_customer(report, Console())
    return 0


def _segments(args: argparse.Namespace) -> int:
    from rich.console import Console

    from streamproc.commands import CommandError, print_json, run
    from streamproc.commands.inspect import (
        collect_members,
        collect_segments,
        members_csv,
        print_members,
        print_segments,
        render_html,
        segments_csv,
    )

    settings = load_settings()
    if args.members is not None:
        if args.html:
            raise CommandError("--html shows segment summaries, not --members", exit_code=2)
        members = run(collect_members(settings, args.members, args.as_of))
        if args.json:
            print_json(members.to_dict())
        elif args.csv:
            members_csv(members, sys.stdout)
        else:
            print_members(members, Console())
        return 0
    report = run(collect_segments(settings, args.as_of))
    if args.html:
        try:
            Path(args.html).write_text(
                render_html(report.summaries, report.model_version, report.as_of),
                encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {args.html}: {exc.strerror or exc}") from None
    if args.json:
        print_json(report.to_dict())
    elif args.csv:
        segments_csv(report, sys.stdout)
    elif args.html:
        print(f"wrote {args.html} ({sum(s.size for s in report.summaries)} customers, "
              f"{len(report.summaries)} segments)")
    else:
        print_segments(report, Console())
    return 0


def _alerts(args: argparse.Namespace) -> int:
    from streamproc.commands import CommandError, run
    from streamproc.commands.inspect import AlertFilter, print_alerts

    settings = load_settings()
    kind = "churn_alert" if args.min_risk is not None else args.kind
    if args.min_risk is not None and args.kind == "segment_changed":
        raise CommandError("--min-risk keeps churn alerts only; it cannot go with "
                           "--kind segment_changed", exit_code=2)
    which = AlertFilter(kind=kind, min_risk=args.min_risk,
                        customers=frozenset(args.customer or ()))
    try:
        run(print_alerts(settings, follow=args.follow, from_beginning=args.from_beginning,
                         last=args.last, as_json=args.json, which=which))
    except KeyboardInterrupt:  # the normal way to end --follow
        if not args.follow:
            raise
    return 0


def _serve(args: argparse.Namespace) -> int:
    from streamproc.serve import run_server

    settings = load_settings()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        settings = settings.model_copy(
            update={"serve": settings.serve.model_copy(update=overrides)})
    run_server(settings)
    return 0


def _model(args: argparse.Namespace) -> int:
    from streamproc.commands import CommandError, print_json, run
    from streamproc.commands.model import (
        format_list,
        format_status,
        model_list,
        model_reset,
        model_rollback,
        model_status,
    )

    settings = load_settings()
    if args.action == "rollback":
        if args.version is None:
            raise CommandError("model rollback needs a VERSION (see streamproc model list)",
                               exit_code=2)
        run(model_rollback(settings, args.version))
        print(f"current model version is now v{args.version}")
        return 0
    if args.action == "reset":
        if not args.yes:
            raise CommandError("model reset deletes every version and the trainer state; "
                               "add --yes", exit_code=2)
        removed = run(model_reset(settings))
        print(f"removed {removed} model keys; workers score with no model until the trainer "
              "publishes again")
        return 0
    if args.action == "list":
        rows = run(model_list(settings))
        if args.json:
            print_json(rows)
        else:
            print("\n".join(format_list(rows)))
        return 0
    status = run(model_status(settings))
    if args.json:
        print_json(status)
    else:
        print("\n".join(format_status(status)))
    return 0




def _deployment(args: argparse.Namespace) -> int:
    from streamproc.commands import CommandError, print_json, run
    from streamproc.commands.deployment import (
        deployment_accept,
        deployment_status,
        marker_document,
    )

    settings = load_settings()
    prefix = settings.redis.key_prefix
    if args.action == "accept":
        if not args.yes:
            raise CommandError(
                "deployment accept makes this Redis the deployment's state as it is now "
                "(whatever it lost stays lost unless you replay it); add --yes", exit_code=2)
        old, new = run(deployment_accept(settings))
        if args.json:
            print_json({"replaced": marker_document(old, prefix)["marker"],
                        **marker_document(new, prefix)})
        else:
            print(f"{prefix}:deployment is now {new.id} (replaced "
                  f"{old.id if old else 'no marker'}); workers that stopped on a lost Redis "
                  "resume within seconds")
        return 0
    record = run(deployment_status(settings))
    if args.json:
        print_json(marker_document(record, prefix))
    elif record is None:
        print(f"no deployment marker at {prefix}:deployment: no worker has started against "
              "this Redis yet, or Redis lost its data (see README, Operations)")
    else:
        print(f"{prefix}:deployment: {record.id}, created {record.created_at} "
              f"({record.origin.replace('_', ' ')})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = _Parser(
        prog="streamproc",
        description="Real-time customer analytics: live profiles, segments and churn alerts. "
        + CONFIG_HELP,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    worker = sub.add_parser(
        "worker", help="run a stream-processing worker (Faust)",
        description="Run one stream-processing worker: consumes the clickstream and purchases "
        "topics, keeps per-customer profiles in Redis, learns the segment and churn models and "
        "publishes segment_changed and churn_alert records. Start several for more throughput; "
        "partitions are balanced through the consumer group. Stops cleanly on SIGTERM/Ctrl-C. "
        "Required: STREAMPROC_MODELS__SIGNING_KEY (HMAC key of model snapshots). "
        + CONFIG_HELP)
    worker.set_defaults(func=_worker)

    schemas = sub.add_parser("schemas", help="export the JSON Schemas of every contract")
    schemas.add_argument("--out", default="schemas", help="output directory (default: schemas)")
    schemas.add_argument("--check", action="store_true",
                         help="exit 1 if the files differ from the models")
    schemas.set_defaults(func=_schemas)

    demo = sub.add_parser(
        "demo", help="run broker, Redis, a worker and synthetic traffic locally, watched live",
        description="Start an embedded Tansu broker and a private redis-server on free ports, "
        "a worker, and seeded persona traffic replayed at --rate events/s (months of event "
        "time in minutes), with a live view of throughput, segments, churn alerts and model "
        "quality. Needs no Docker and no configuration (STREAMPROC_* variables are ignored); "
        "needs 'streamproc[embedded]' and redis-server. Runs until Ctrl-C or --seconds.")
    demo.add_argument("--customers", type=_positive(int), default=500,
                      help="synthetic customers (default: 500)")
    demo.add_argument("--days", type=_positive(float), default=120.0,
                      help="days of event time to simulate (default: 120)")
    demo.add_argument("--rate", type=_positive(float), default=2000.0,
                      help="events per second sent to the broker (default: 2000)")
    demo.add_argument("--seconds", type=_positive(float), default=None,
                      help="stop after this many seconds (default: run until Ctrl-C)")
    demo.add_argument("--seed", type=int, default=42, help="traffic seed (default: 42)")
    demo.set_defaults(func=_demo)

    replay = sub.add_parser(
        "replay", help="send JSONL or CSV events to the input topics (also for backfills)",
        description="Send events from FILE to the input topics, keyed by customer_id: "
        "events with order_id/type go to purchases, events with event_type to clickstream. "
        "JSONL: one event or batch envelope {\"events\": [...]} per line. CSV: a header of "
        "event fields, one event per row, empty cells omitted, items as a JSON string. Every "
        "line is first validated locally with the worker's decoder; rejected lines are "
        "reported with the reason and NOT sent; exit 1 if every line was rejected. Broker "
        "from STREAMPROC_KAFKA__* (see README).")
    replay.add_argument("file", metavar="FILE", help="events file (.jsonl or .csv)")
    replay.add_argument("--format", choices=["jsonl", "csv"], default=None,
                        help="file format (default: from the extension; .csv else jsonl)")
    replay.add_argument("--rate", type=_positive(float), default=None,
                        help="events per second (default: as fast as the broker takes them)")
    replay.add_argument("--topic-map", action="append", default=[], metavar="KIND=TOPIC",
                        help="override a topic: clickstream=TOPIC or purchases=TOPIC "
                        "(repeatable; default: STREAMPROC_TOPICS__*)")
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")
    replay.add_argument("--wait", action="store_true",
                        help="then wait until the workers have processed every sent event and "
                        "run the idle checks due up to each partition's watermark (its last "
                        "replayed event time minus STREAMPROC_INGEST__ALLOWED_LATENESS_S); "
                        "print what was applied, dead-lettered and alerted")
    replay.add_argument("--wait-timeout", type=_positive(float), default=300.0,
                        metavar="SECONDS", help="with --wait, give up (exit 1) when the workers "
                        "made no progress for this long (default: 300)")
    replay.set_defaults(func=_replay)

    customer = sub.add_parser(
        "customer", help="one customer's profile, segment, RFM tier and churn risk",
        description="Profile, segment, RFM tier and churn probability with its top reasons, "
        "scored with the current model version. Exit 1 if the customer is unknown.")
    customer.add_argument("customer_id", metavar="ID", help="customer id")
    customer.add_argument("--as-of", type=_as_of, default=None, metavar="TIME",
                          help=AS_OF_HELP)
    customer.add_argument("--json", action="store_true", help="print JSON")
    customer.set_defaults(func=_customer)

    segments = sub.add_parser(
        "segments", help="segment sizes and median profiles, or a segment's members",
        description="Sizes and median profiles of every segment over all stored customers; "
        "with --members, the customers of one segment, most at risk first. Tables fit the "
        "terminal (80 columns when piped), leaving out columns by priority; --csv and --json "
        "have every column.")
    segments.add_argument("--as-of", type=_as_of, default=None, metavar="TIME",
                          help=AS_OF_HELP)
    segments.add_argument("--members", default=None, metavar="SEGMENT",
                          help="list the customers of this segment (id or name)")
    form = segments.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print JSON")
    form.add_argument("--csv", action="store_true", help="print CSV (every column)")
    segments.add_argument("--html", default=None, metavar="FILE",
                          help="also write a self-contained HTML report (SVG chart + table)")
    segments.set_defaults(func=_segments)

    alerts = sub.add_parser(
        "alerts", help="tail churn alerts and segment changes",
        description="Read the churn-alerts and segment-changes topics without a consumer "
        "group (nothing is committed), in event-time order across topics and partitions "
        "(with --follow, records arriving within a second of each other are sorted "
        "together). Without --follow, prints what is there and exits.")
    alerts.add_argument("--follow", "-f", action="store_true",
                        help="keep printing new records until Ctrl-C")
    alerts.add_argument("--from-beginning", action="store_true",
                        help="start at the beginning of the topics (default: the last --last)")
    alerts.add_argument("--last", type=int, default=20, metavar="N",
                        help="records per partition to show before the end (default: 20)")
    alerts.add_argument("--json", action="store_true",
                        help="one JSON object per line: {kind, topic, partition, offset, record}")
    alerts.add_argument("--kind", choices=["churn_alert", "segment_changed"], default=None,
                        help="only this kind of record (default: both)")
    alerts.add_argument("--min-risk", choices=["medium", "high", "critical"], default=None,
                        help="only churn alerts at this risk level or above")
    alerts.add_argument("--customer", action="append", default=None, metavar="ID",
                        help="only records of this customer (repeatable)")
    alerts.set_defaults(func=_alerts)

    serve = sub.add_parser(
        "serve", help="serve profiles, segments and churn risk over HTTP (read-only)",
        description="The HTTP read API: a customer's profile, segment, RFM tier, churn "
        "probability and reasons as of now or ?as_of=; segment summaries; members of a "
        "segment or risk level, paged. OpenAPI at /openapi.json, interactive docs at /docs. "
        "Only reads Redis (give it a read-only Redis user, see README). Optional bearer "
        "token: STREAMPROC_SERVE__TOKEN. " + CONFIG_HELP)
    serve.add_argument("--host", default=None,
                       help="interface to listen on (default: STREAMPROC_SERVE__HOST)")
    serve.add_argument("--port", type=int, default=None,
                       help="port (default: STREAMPROC_SERVE__PORT)")
    serve.set_defaults(func=_serve)

    model = sub.add_parser(
        "model", help="show, roll back or reset the published model version",
        description="status: the current version, its age, alert threshold, quality on "
        "delayed labels (ROC AUC, precision and recall at the threshold), the churn base rate "
        "and the stored versions; list: every stored version with its age and quality; "
        "rollback VERSION: point every worker at an older stored version (the last 20 are "
        "kept); reset --yes: delete all versions and the trainer state.")
    model.add_argument("action", choices=["status", "list", "rollback", "reset"], nargs="?",
                       default="status")
    model.add_argument("version", type=int, nargs="?", help="version for rollback")
    model.add_argument("--yes", action="store_true", help="confirm reset")
    model.add_argument("--json", action="store_true", help="status or list as JSON")
    model.set_defaults(func=_model)

    deployment = sub.add_parser(
        "deployment", help="show the Redis deployment marker, or accept a Redis that lost it",
        description="Workers write only to the Redis holding the deployment marker they "
        "started with (<prefix>:deployment) and stop consuming when it is gone or changed "
        "(Redis flushed, restarted without its data, or replaced). status: the marker; "
        "accept --yes: write a new marker, making this Redis the deployment's state as it "
        "is: stopped workers resume within seconds. Restore a backup or replay the input "
        "topics to get back what was lost (README, Operations).")
    deployment.add_argument("action", choices=["status", "accept"], nargs="?",
                            default="status")
    deployment.add_argument("--yes", action="store_true", help="confirm accept")
    deployment.add_argument("--json", action="store_true", help="print JSON")
    deployment.set_defaults(func=_deployment)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; errors are one line on stderr and a non-zero exit code."""
    from streamproc.commands import CommandError

    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except CommandError as exc:
        print(f"streamproc: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except SettingsError as exc:
        print(f"streamproc: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line for operators; tracebacks go to DEBUG logs
        print(f"streamproc: error: {type(exc).__name__}: {_one_line(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
