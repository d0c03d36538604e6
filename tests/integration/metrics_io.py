"""Read a running worker's Prometheus page in tests: what it has done, as its operators see it."""

from __future__ import annotations

import urllib.request


def scrape(port: int, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples on the worker's ``/metrics`` whose labels include ``labels``.

    Raises ``OSError`` while the page is not up yet.
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        family, _, rest = sample.partition("{")
        if family == name and all(w in rest for w in wanted):
            total += float(value)
    return total
