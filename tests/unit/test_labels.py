"""Delayed churn labels: semantics, bounds and the no-leakage rule."""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from streamproc.core.features import (
    DAY,
    InMemoryProfiles,
    ProfileView,
    event_ops,
    model_features,
)
from streamproc.core.labels import Snapshot, add_snapshot, on_activity, on_watermark

H = 21 * DAY


def snap(t: float, cid: str = "c1", horizon: float = H) -> Snapshot:
    return Snapshot(cid, t, {"recency_days": 0.0}, 1, horizon)


def test_activity_inside_the_horizon_marks_the_snapshot_and_labels_nothing() -> None:
    pending = on_activity((snap(100.0),), 100.0 + DAY, 42.5)
    [s] = pending
    assert s.came_back
    assert s.spend_after == 42.5
    pending = on_activity(pending, 100.0 + 2 * DAY, 10.0)
    assert pending[0].spend_after == 52.5


def test_the_label_is_known_at_the_horizon_end_only() -> None:
    pending = on_activity((snap(0.0), snap(2 * DAY)), DAY, 5.0)
    left, out = on_watermark(pending, H - 1.0)
    assert left == pending
    assert out == []
    left, out = on_watermark(pending, H)
    assert [(e.label, e.labelled_at, e.snapshot.spend_after) for e in out] == [(0, H, 5.0)]
    assert [s.scored_at for s in left] == [2 * DAY]
    # The second snapshot saw no activity after its own time: churned at its horizon end.
    _, out = on_watermark(left, 2 * DAY + H)
    assert [(e.label, e.labelled_at, e.snapshot.spend_after) for e in out] == [
        (1, 2 * DAY + H, 0.0)]


def test_each_snapshot_is_labelled_against_its_own_horizon() -> None:
    short, long = snap(0.0, horizon=30 * DAY), snap(0.0, horizon=90 * DAY)
    pending = on_activity((short, long), 60 * DAY, 1.0)  # after 30 days, within 90
    _, out = on_watermark(pending, 90 * DAY)
    assert sorted((e.snapshot.horizon_s / DAY, e.label) for e in out) == [(30, 1), (90, 0)]


def test_activity_at_or_before_scoring_time_never_marks() -> None:
    p = (snap(100.0),)
    for t in (50.0, 100.0):
        assert on_activity(p, t, 9.0) == p


def test_add_snapshot_keeps_the_newest_within_the_bound() -> None:
    pending: tuple[Snapshot, ...] = ()
    for t in (0.0, DAY, 2 * DAY):
        pending, dropped = add_snapshot(pending, snap(t), max_pending=2)
    assert dropped == 1
    assert [s.scored_at for s in pending] == [DAY, 2 * DAY]  # oldest dropped


@given(
    scored=st.lists(st.floats(0, 100 * DAY), min_size=1, max_size=8),
    activity=st.floats(0, 200 * DAY),
    watermark=st.floats(0, 300 * DAY),
)
def test_labels_use_only_the_future(scored: list[float], activity: float,
                                    watermark: float) -> None:
    pending = on_activity(tuple(snap(t) for t in scored), activity, 1.0)
    left, out = on_watermark(pending, watermark)
    assert len(left) + len(out) == len(scored)
    for e in out:
        t = e.snapshot.scored_at
        assert e.labelled_at == t + H <= watermark
        assert e.label == (0 if t < activity <= t + H else 1)
    for s in left:
        assert s.scored_at + H > watermark


def _click(event_id: str, event_type: str = "page_view") -> SimpleNamespace:
    return SimpleNamespace(
        event_id=event_id, event_type=event_type, session_id="s1", category=None, quantity=None
    )


def test_no_leakage_features_frozen_at_scoring_time() -> None:
    """Features come from events up to t only; later events change neither them nor t's label."""
    store = InMemoryProfiles.empty()
    t = 10 * DAY
    for i, ts in enumerate((1 * DAY, 5 * DAY, t)):
        store.apply("c1", f"e{i}", event_ops(_click(f"e{i}"), ts), ts)
    features = model_features(ProfileView("c1", t, store.states["c1"]))
    frozen = dict(features)
    pending: tuple[Snapshot, ...] = (Snapshot("c1", t, features, 1, H),)
    # A late event at exactly t (or before) must not mark the snapshot as "came back".
    for j, late in enumerate((t, t - DAY)):
        store.apply("c1", f"late{j}", event_ops(_click(f"late{j}"), late), late)
        pending = on_activity(pending, late)
    assert not pending[0].came_back
    # Activity after t labels 0 at t + H; the snapshot's features never saw it.
    later = t + 3 * DAY
    store.apply("c1", "e9", event_ops(_click("e9"), later), later)
    pending = on_activity(pending, later)
    _, out = on_watermark(pending, t + H)
    assert [e.label for e in out] == [0]
    assert out[0].snapshot.features == frozen
    assert model_features(ProfileView("c1", t, store.states["c1"])) != frozen  # the store moved on
