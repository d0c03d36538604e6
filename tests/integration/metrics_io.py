"""Read a running worker's Prometheus page in tests: what it has done, as its operators see it."""

from __future__ import annotations

import urllib.request


def metric_value(body: str, name: str, **labels: str) -> float | None:
    """The sum of ``name``'s samples in a Prometheus text page whose labels include ``labels``.

    None when the page has no such sample (the worker has not reported it yet).
    """
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total: float | None = None
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        family, _, rest = sample.partition("{")
        if family == name and all(w in rest for w in wanted):
            total = (total or 0.0) + float(value)
    return total


def scrape(port: int, name: str, **labels: str) -> float:
    """:func:`metric_value` of the worker's ``/metrics`` on ``port``, 0 when absent.

    Raises ``OSError`` while the page is not up yet.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    return metric_value(body, name, **labels) or 0.0
