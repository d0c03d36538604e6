"""A Faust agent that only counts: the ceiling the real ingest agent is compared with.

    STREAMPROC_...=... python -m load_tests.noop_agent --mode take --expect 10000 --out r.json

Built with the worker's own app factory, so broker, fetch and session settings are
identical and the ratio pipeline/no-op measures only the agent's work. ``take``
consumes exactly like the ingest agent (``noack_take`` + ack every event);
``iterate`` is plain ``async for`` with Faust's automatic acks. It writes the time
of the first message and of the ``expect``-th one to ``--out`` and keeps running
until it is terminated.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import faust

from streamproc.runtime.app import _app  # the worker's exact Faust configuration
from streamproc.settings import load_settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the counting agent until terminated."""
    p = argparse.ArgumentParser(prog="python -m load_tests.noop_agent")
    p.add_argument("--mode", choices=["take", "iterate"], default="take")
    p.add_argument("--expect", type=int, required=True, help="messages to wait for")
    p.add_argument("--out", required=True, help="where to write the timing JSON")
    args = p.parse_args(argv)

    settings = load_settings()
    app = _app(settings)
    topic = app.topic(settings.topics.clickstream, settings.topics.purchases,
                      key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw")
    ingest = settings.ingest
    seen = {"n": 0, "first": 0.0}

    def count(n: int) -> None:
        if seen["n"] == 0:
            seen["first"] = time.time()
        seen["n"] += n
        if seen["n"] >= args.expect and "last" not in seen:
            seen["last"] = time.time()
            tmp = args.out + ".tmp"
            with open(tmp, "w") as fh:
                json.dump({"first": seen["first"], "last": seen["last"], "messages": seen["n"],
                           "mode": args.mode, "pid": os.getpid()}, fh)
            os.replace(tmp, args.out)

    if args.mode == "take":
        @app.agent(topic, name="noop")
        async def noop_take(stream: Any) -> None:
            async for events in stream.noack_take(ingest.batch_max_messages,
                                                  ingest.batch_within_s):
                count(len(events))
                for event in events:
                    await stream.ack(event)
    else:
        @app.agent(topic, name="noop")
        async def noop_iterate(stream: Any) -> None:
            async for _value in stream:
                count(1)

    faust.Worker(app, loglevel="warning", quiet=True,
                 redirect_stdouts=False).execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
