"""EXPERIMENT, not production: the real worker with the ingest agent's take and process overlapped.

    STREAMPROC_...=... python -m load_tests.overlap_worker

Faust's ``noack_take`` stops filling its buffer while the agent body runs (it awaits
``buffer_consuming``), so today a batch cycle is "collect for up to batch_within_s"
*then* "process", one after the other. This variant hands each batch to one
processing task through a queue of depth 1 and goes straight back to collecting,
so collection of batch n+1 overlaps processing of batch n. Batches are still
processed one at a time, in order, and acked only after ``process`` returned.

It builds the worker with ``create_worker`` and swaps the ingest agent's function
before the app starts, so everything else (pipeline, scoring, trainer, metrics)
is the code under test. Used by ``python -m load_tests.ab`` to measure the gain of
the change proposed in load_tests/README.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from streamproc.runtime.app import _raw_messages, create_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import load_settings


def main() -> int:
    """Run the worker with the overlapped ingest agent until terminated."""
    settings = load_settings()
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(ensure_topics(settings))
    worker = create_worker(settings)
    pipeline, state, ingest = worker.pipeline, worker.state, settings.ingest

    async def ingest_overlapped(stream: Any) -> None:
        queue: asyncio.Queue[list[Any]] = asyncio.Queue(maxsize=1)

        async def drain() -> None:
            while True:
                events = await queue.get()
                await pipeline.process(_raw_messages(events))
                for event in events:
                    await stream.ack(event)
                state.batches += 1

        processor = asyncio.ensure_future(drain())
        try:
            async for events in stream.noack_take(ingest.batch_max_messages,
                                                  ingest.batch_within_s):
                if processor.done():
                    processor.result()  # re-raise a processing failure in the agent
                await queue.put(events)
        finally:
            processor.cancel()

    agent = next(a for name, a in worker.app.agents.items() if name.endswith("ingest"))
    agent.fun = ingest_overlapped
    faust.Worker(worker.app, loglevel=settings.log_level.lower(), quiet=True,
                 redirect_stdouts=False).execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
