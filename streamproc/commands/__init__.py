"""Implementations of the ``streamproc`` sub-commands; ``streamproc.cli`` only parses arguments."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

T = TypeVar("T")

__all__ = ["CommandError", "print_json", "run", "utc_now"]


class CommandError(Exception):
    """A failure the user can act on: printed as one line, exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def utc_now() -> datetime:
    """Wall-clock time for adapters (validation of future timestamps, default ``as_of``)."""
    return datetime.fromtimestamp(time.time(), UTC)


def print_json(value: Any) -> None:
    """One JSON document on stdout (for scripts)."""
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on a fresh event loop."""
    return asyncio.run(coro)
