"""Delayed churn labels: pure transitions over a customer's pending snapshots.

A snapshot taken at event time ``t`` under the horizon ``H`` in use then (``horizon_s``)
is labelled at ``t + H``, never earlier:

- 0 (stayed) if qualifying activity came in ``(t, t + H]``, else 1 (churned);
- with it goes ``spend_after``, the order totals in ``(t, t + H]`` (the value target).

Activity inside the horizon only marks the snapshot (:func:`on_activity`); the label is
emitted when the watermark passes ``t + H`` (:func:`on_watermark`). Emitting a comeback
at once would bias the labels towards "stayed" while the horizon is open: the churned
snapshots of the same week are only known at ``t + H`` (the churn study measured a mean
probability of 0.55 for a base rate of 0.80 that way). Activity at ``t' <= t`` never
marks a snapshot: it was already inside the features. The features are frozen when the
snapshot is taken, so nothing after ``t`` leaks into a training example. The watermark
is the runtime's promise that no activity before it is still to come.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the model saw about a customer at scoring time ``scored_at`` (event time)."""

    customer_id: str
    scored_at: float
    features: dict[str, float]
    model_version: int
    #: The churn horizon in use when it was taken: it is labelled against that one.
    horizon_s: float
    #: Qualifying activity came in (scored_at, scored_at + horizon_s].
    came_back: bool = False
    #: Order totals in (scored_at, scored_at + horizon_s].
    spend_after: float = 0.0


@dataclass(frozen=True, slots=True)
class LabelledExample:
    """A snapshot with its churn label (1 = churned) and the event time the label was known."""

    snapshot: Snapshot
    label: int
    labelled_at: float


def add_snapshot(
    pending: tuple[Snapshot, ...], snap: Snapshot, *, max_pending: int
) -> tuple[tuple[Snapshot, ...], int]:
    """Add ``snap``, keeping at most ``max_pending`` (oldest dropped first); returns the
    pending snapshots and how many were dropped."""
    if max_pending < 1:
        raise ValueError("max_pending must be >= 1")
    out = sorted((*pending, snap), key=lambda s: s.scored_at)
    return tuple(out[-max_pending:]), max(0, len(out) - max_pending)


def on_activity(
    pending: tuple[Snapshot, ...], activity_at: float, amount: float = 0.0
) -> tuple[Snapshot, ...]:
    """Mark the snapshots whose horizon qualifying activity at ``activity_at`` falls in,
    adding ``amount`` (an order's total; 0 for other activity) to their spend."""
    out = tuple(
        replace(s, came_back=True, spend_after=s.spend_after + amount)
        if s.scored_at < activity_at <= s.scored_at + s.horizon_s else s
        for s in pending)
    return out if out != pending else pending


def on_watermark(
    pending: tuple[Snapshot, ...], watermark: float
) -> tuple[tuple[Snapshot, ...], list[LabelledExample]]:
    """Label the snapshots whose horizon ended at or before ``watermark``."""
    keep: list[Snapshot] = []
    out: list[LabelledExample] = []
    for snap in pending:
        end = snap.scored_at + snap.horizon_s
        if end <= watermark:
            out.append(LabelledExample(snap, 0 if snap.came_back else 1, end))
        else:
            keep.append(snap)
    return (pending if not out else tuple(keep)), out


def next_census(anchor: float, after: float, *, check_interval_s: float) -> float:
    """The next census check strictly after ``after``: ``anchor + n * check_interval_s``.

    Every known customer is re-scored on their own weekly schedule whatever they did, so
    each gives one example a week: frequent buyers do not outvote the rest, and a lapsing
    customer is seen lapsing. The phase (``anchor``, the customer's first scoring) differs
    per customer, so the labels of a week do not all land at one event time.
    """
    if check_interval_s <= 0:
        raise ValueError("check_interval_s must be > 0")
    n = max(1, math.floor((after - anchor) / check_interval_s) + 1)
    return anchor + n * check_interval_s
