"""Pure helpers of the load tools: percentiles, pacing, rates and the result document.

No I/O here, so everything is unit-tested with plain data and a fake clock
(tests/unit/test_load_tools.py).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Clock = Callable[[], float]

RESULT_SCHEMA = "streamproc-bench/1"
RESULT_SECTIONS = ("throughput", "latency", "memory", "scaling", "targets")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks (numpy default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError("q must be within [0, 100]")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return float(ordered[lo])
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int]:
    """Count, p50/p95/p99 and max of latencies, in milliseconds."""
    if not seconds:
        return {"count": 0}
    ms = [s * 1000.0 for s in seconds]
    return {
        "count": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
    }


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None (None when there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator rounded to 3 places; None when either is missing or zero."""
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


class Pacer:
    """Paces a producer to ``rate`` events per second against an injectable clock.

    Schedule-based, not sleep-based: the n-th event is due at ``start + n / rate``,
    so sleeps that overshoot are made up by the next sends instead of drifting.
    A producer that falls more than ``max_backlog_s`` behind gives up the backlog
    (no unbounded catch-up burst after a stall). ``rate=None`` means flat out.
    """

    def __init__(self, rate: float | None, clock: Clock, *, max_backlog_s: float = 1.0) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0 (or None for flat out)")
        self.rate = rate
        self.clock = clock
        self.max_backlog_s = max_backlog_s
        self._start: float | None = None
        self._sent = 0.0  # events accounted for so far

    def delay(self, events: int = 1) -> float:
        """Seconds to wait before sending the next ``events``; accounts for them as sent."""
        now = self.clock()
        if self._start is None:
            self._start = now
        if self.rate is None:
            self._sent += events
            return 0.0
        due = self._start + self._sent / self.rate
        if now - due > self.max_backlog_s:
            # Far behind: restart the schedule at now instead of bursting to catch up.
            self._start = now - self._sent / self.rate
            due = now
        self._sent += events
        return max(0.0, due - now)

    @property
    def sent(self) -> float:
        """Events accounted for so far."""
        return self._sent


def steady_rate(samples: Sequence[tuple[float, float]], lo: float = 0.1,
                hi: float = 0.9) -> float | None:
    """Rate between the moments a cumulative counter crossed ``lo`` and ``hi`` of its final value.

    ``samples`` are (time, cumulative count) in time order. Leaves out the start-up
    ramp and the tail, which a first-to-last figure includes.
    """
    if len(samples) < 2:
        return None
    total = samples[-1][1]
    if total <= 0:
        return None
    t_lo = _crossing(samples, lo * total)
    t_hi = _crossing(samples, hi * total)
    if t_lo is None or t_hi is None or t_hi <= t_lo:
        return None
    return (hi - lo) * total / (t_hi - t_lo)


def _crossing(samples: Sequence[tuple[float, float]], level: float) -> float | None:
    """Time the counter reached ``level``, linearly interpolated between samples."""
    prev_t, prev_c = samples[0]
    if prev_c >= level:
        return prev_t
    for t, c in samples[1:]:
        if c >= level:
            if c == prev_c:
                return t
            return prev_t + (t - prev_t) * (level - prev_c) / (c - prev_c)
        prev_t, prev_c = t, c
    return None


def first_to_last_rate(samples: Sequence[tuple[float, float]]) -> float | None:
    """Rate from the first sample that saw work to the first sample that saw all of it.

    Counts only the work done after the first non-zero sample, so the unknown start
    inside the first poll interval does not bias the figure.
    """
    started = [(t, c) for t, c in samples if c > 0]
    if len(started) < 2:
        return None
    total = samples[-1][1]
    t0, c0 = started[0]
    t1 = next(t for t, c in started if c >= total)
    if t1 <= t0:
        return None
    return (total - c0) / (t1 - t0)


def next_poll_s(samples: Sequence[tuple[float, float]], expect: float, *, fast: float,
                slow: float) -> float:
    """How long to wait before sampling a worker's counter again.

    Each scrape renders the worker's whole /metrics page, which costs the worker CPU
    it would otherwise spend on events (4 % of its samples at 10 Hz, 1 event/message).
    Poll slowly while the end is far and fast when it is near, so the end time stays
    within ``fast`` seconds and the measured worker pays for a few scrapes only.
    """
    if len(samples) < 2:
        return fast
    (t0, c0), (t1, c1) = samples[-2], samples[-1]
    if t1 <= t0 or c1 <= c0:
        return fast
    remaining = (expect - c1) / ((c1 - c0) / (t1 - t0))
    return min(slow, max(fast, remaining / 2))


def last_change(samples: Sequence[tuple[float, float]]) -> float:
    """Time of the last sample whose count differed from the one before (else the first)."""
    for i in range(len(samples) - 1, 0, -1):
        if samples[i][1] != samples[i - 1][1]:
            return samples[i][0]
    return samples[0][0]


@dataclass
class Measured:
    """One repeated measurement: every run's value and their median."""

    runs: list[float | None] = field(default_factory=list)

    def add(self, value: float | None) -> None:
        """Record one run."""
        self.runs.append(None if value is None else round(value, 1))

    def to_dict(self) -> dict[str, Any]:
        """JSON form: runs and median."""
        m = median(self.runs)
        return {"runs": self.runs, "median": None if m is None else round(m, 1)}


def metric_sums(text: str, names: Iterable[str]) -> dict[str, float]:
    """Sum of every sample of each named family in Prometheus text exposition format."""
    wanted = set(names)
    out = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def cpu_seconds(proc_stat: str, ticks_per_s: float) -> float:
    """utime + stime of a process from the text of ``/proc/<pid>/stat``."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = proc_stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_s


def target_row(name: str, goal: str, value: float | None, ok: bool | None) -> dict[str, Any]:
    """One row of the targets table."""
    return {"target": name, "goal": goal, "measured": value,
            "met": ok if value is not None else None}


def validate_result(doc: Mapping[str, Any]) -> list[str]:
    """Problems with a result document's shape (empty when it is well formed)."""
    problems = []
    if doc.get("schema") != RESULT_SCHEMA:
        problems.append(f"schema must be {RESULT_SCHEMA!r}")
    for key in ("name", "mode", "started_at", "host", "config"):
        if key not in doc:
            problems.append(f"missing {key!r}")
    for section in RESULT_SECTIONS:
        if section not in doc:
            problems.append(f"missing section {section!r}")
    for shape, entry in (doc.get("throughput") or {}).items():
        for key in ("events", "messages", "pipeline_events_per_s", "raw_events_per_s"):
            if key not in entry:
                problems.append(f"throughput[{shape}] missing {key!r}")
    for row in doc.get("latency", {}).get("levels", []):
        for key in ("target_events_per_s", "achieved_events_per_s", "probes"):
            if key not in row:
                problems.append(f"latency level missing {key!r}")
    for row in doc.get("targets", []):
        if set(row) != {"target", "goal", "measured", "met"}:
            problems.append(f"target row has keys {sorted(row)}")
    return problems
