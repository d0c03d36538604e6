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


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(','.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.strip().split(","))


def test_core_adapters_and_the_read_api_never_import_the_runtime() -> None:
    import streamproc.adapters

    modules = ["streamproc.api"]
    for package in (streamproc.core, streamproc.adapters):
        modules += [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
    runtime = sorted(n for n in _loaded_after_import(modules) if n.startswith("streamproc.runtime"))
    assert runtime == [], f"core, adapters or the read API import the runtime: {runtime}"
