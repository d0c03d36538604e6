"""The pure core stays pure: no Kafka, Redis, Faust or Prometheus imports."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import streamproc.core

FORBIDDEN = ("faust", "mode", "redis", "aiokafka", "kafka", "prometheus_client",
             "streamproc.settings", "streamproc.runtime", "streamproc.adapters")


def test_core_modules_import_no_io_libraries() -> None:
    modules = [f"streamproc.core.{m.name}" for m in pkgutil.iter_modules(streamproc.core.__path__)]
    assert len(modules) >= 8
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r} "
        f"or any(n.startswith(f) for f in {FORBIDDEN!r} if '.' in f))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"pure core imports I/O modules: {out.stdout.strip()}"
