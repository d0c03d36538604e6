"""The ``streamproc`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from streamproc.settings import SettingsError, load_settings

Command = Callable[[argparse.Namespace], int]


def _worker(args: argparse.Namespace) -> int:
    from streamproc.runtime.worker import run_worker

    run_worker(load_settings())
    return 0


def _schemas(args: argparse.Namespace) -> int:
    from pathlib import Path

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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="streamproc",
        description="Real-time customer analytics: live profiles, segments and churn alerts. "
        "Configuration comes from STREAMPROC_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run a stream-processing worker (Faust)")
    worker.set_defaults(func=_worker)

    schemas = sub.add_parser("schemas", help="export the JSON Schemas of every contract")
    schemas.add_argument("--out", default="schemas", help="output directory (default: schemas)")
    schemas.add_argument("--check", action="store_true",
                         help="exit 1 if the files differ from the models")
    schemas.set_defaults(func=_schemas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; errors are one line on stderr and a non-zero exit code."""
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except SettingsError as exc:
        print(f"streamproc: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line for operators; tracebacks go to DEBUG logs
        print(f"streamproc: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
