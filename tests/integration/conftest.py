"""Fixtures shared by the integration tests that drive the command line."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamproc.runtime.embedded import spawn_worker
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings, to_env


@pytest.fixture
def cli_env(make_settings: Callable[..., Settings],
            monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for this test, exported as STREAMPROC_* variables the CLI reads."""
    settings = make_settings()
    for name, value in to_env(settings).items():
        monkeypatch.setenv(name, value)
    asyncio.run(ensure_topics(settings))
    return settings


@pytest.fixture
def worker(cli_env: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process on ``cli_env``, stopped with SIGTERM after the test."""
    proc = spawn_worker(to_env(cli_env), log_path=tmp_path / "worker.log")
    yield proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
