"""Run a worker process: create topics, build the app, hand it to Faust's Worker."""

from __future__ import annotations

import asyncio
import logging

import faust

from streamproc.runtime.app import create_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings


class ConfigurationError(RuntimeError):
    """The worker cannot run with these settings."""


def run_worker(settings: Settings) -> None:
    """Block running one worker until SIGTERM/SIGINT (then finish the batch and commit)."""
    if settings.models.signing_key is None:
        raise ConfigurationError(
            "STREAMPROC_MODELS__SIGNING_KEY is required: workers refuse unsigned models")
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(ensure_topics(settings))
    worker = create_worker(settings)
    faust.Worker(worker.app, loglevel=settings.log_level.lower(), quiet=True,
                 redirect_stdouts=False).execute_from_commandline()
