"""Delayed churn labels: pure transitions over a customer's pending snapshots.

A snapshot taken at event time ``t`` is labelled once the future has spoken:

- 0 (stayed) as soon as qualifying activity at ``t'`` with ``t < t' < t + H`` is seen;
- 1 (churned) when the watermark reaches ``t + H`` with no such activity, or when the
  next activity arrives at ``t' >= t + H``.

Activity at ``t' <= t`` never labels a snapshot: it was already inside the features.
The features are frozen in the snapshot when it is taken, so nothing after ``t``
leaks into a training example. The watermark is the runtime's promise that no
activity before it is still to come: pass ``max event time - allowed lateness``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the model saw about a customer at scoring time ``scored_at`` (event time)."""

    customer_id: str
    scored_at: float
    features: dict[str, float]
    model_version: int


@dataclass(frozen=True, slots=True)
class LabelledExample:
    """A snapshot with its churn label (1 = churned) and the event time the label was known."""

    snapshot: Snapshot
    label: int
    labelled_at: float


def add_snapshot(
    pending: tuple[Snapshot, ...],
    snap: Snapshot,
    *,
    max_pending: int,
    min_gap_s: float,
) -> tuple[tuple[Snapshot, ...], bool]:
    """Add ``snap`` unless a pending one is newer than ``snap.scored_at - min_gap_s``.

    Keeps at most ``max_pending`` snapshots, oldest dropped first; the caller counts
    drops as ``len(pending) + added - len(result)``.
    """
    if max_pending < 1:
        raise ValueError("max_pending must be >= 1")
    cutoff = snap.scored_at - min_gap_s
    if any(p.scored_at > cutoff for p in pending):
        return pending, False
    out = sorted((*pending, snap), key=lambda s: s.scored_at)
    return tuple(out[-max_pending:]), True


def on_activity(
    pending: tuple[Snapshot, ...], activity_at: float, horizon_s: float
) -> tuple[tuple[Snapshot, ...], list[LabelledExample]]:
    """Label the snapshots that qualifying activity at ``activity_at`` resolves."""
    keep: list[Snapshot] = []
    out: list[LabelledExample] = []
    for snap in pending:
        if activity_at <= snap.scored_at:
            keep.append(snap)  # already in (or before) the features: says nothing about the future
        elif activity_at < snap.scored_at + horizon_s:
            out.append(LabelledExample(snap, 0, activity_at))
        else:
            out.append(LabelledExample(snap, 1, snap.scored_at + horizon_s))
    return (pending if len(keep) == len(pending) else tuple(keep)), out


def on_watermark(
    pending: tuple[Snapshot, ...], watermark: float, horizon_s: float
) -> tuple[tuple[Snapshot, ...], list[LabelledExample]]:
    """Label as churned the snapshots whose horizon ended at or before ``watermark``."""
    keep: list[Snapshot] = []
    out: list[LabelledExample] = []
    for snap in pending:
        end = snap.scored_at + horizon_s
        if end <= watermark:
            out.append(LabelledExample(snap, 1, end))
        else:
            keep.append(snap)
    return (pending if not out else tuple(keep)), out


def next_idle_check(
    last_activity_at: float,
    after: float,
    *,
    check_interval_s: float,
    horizon_s: float,
    max_idle_horizons: float = 3.0,
) -> float | None:
    """The next scheduled idle snapshot strictly after ``after``, or None when checks end.

    Idle checks fall at ``last_activity_at + n * check_interval_s`` (n >= 1) while the
    recency stays within ``max_idle_horizons * horizon_s``: without them every training
    snapshot would have recency 0 and the model would never see a lapsing customer.
    """
    if check_interval_s <= 0:
        raise ValueError("check_interval_s must be > 0")
    n = max(1, math.floor((after - last_activity_at) / check_interval_s) + 1)
    due = last_activity_at + n * check_interval_s
    if due - last_activity_at > max_idle_horizons * horizon_s:
        return None
    return due

