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
from streamproc.core.labels import (
    Snapshot,
    add_snapshot,
    next_idle_check,
    on_activity,
    on_watermark,
)

H = 21 * DAY


def snap(t: float, cid: str = "c1") -> Snapshot:
    return Snapshot(cid, t, {"recency_days": 0.0}, 1)


def test_activity_inside_horizon_labels_zero() -> None:
    pending, out = on_activity((snap(100.0),), 100.0 + DAY, H)
    assert pending == ()
    assert [(e.label, e.labelled_at) for e in out] == [(0, 100.0 + DAY)]


def test_activity_at_or_before_scoring_time_never_labels() -> None:
    p = (snap(100.0),)
    for t in (50.0, 100.0):
        pending, out = on_activity(p, t, H)
        assert pending == p
        assert out == []


def test_activity_after_horizon_labels_churned_at_horizon_end() -> None:
    pending, out = on_activity((snap(0.0),), H, H)
    assert pending == ()
    assert [(e.label, e.labelled_at) for e in out] == [(1, H)]


def test_watermark_labels_churned_only_once_horizon_passed() -> None:
    p = (snap(0.0), snap(2 * DAY))
    pending, out = on_watermark(p, H - 1.0, H)
    assert pending == p
    assert out == []
    pending, out = on_watermark(p, H + DAY, H)
    assert pending == (snap(2 * DAY),)
    assert [(e.snapshot.scored_at, e.label, e.labelled_at) for e in out] == [(0.0, 1, H)]


def test_add_snapshot_respects_min_gap_and_bound() -> None:
    pending: tuple[Snapshot, ...] = ()
    pending, added = add_snapshot(pending, snap(0.0), max_pending=2, min_gap_s=DAY)
    assert added
    pending, added = add_snapshot(pending, snap(DAY / 2), max_pending=2, min_gap_s=DAY)
    assert not added
    assert len(pending) == 1
    pending, _ = add_snapshot(pending, snap(DAY), max_pending=2, min_gap_s=DAY)
    pending, added = add_snapshot(pending, snap(2 * DAY), max_pending=2, min_gap_s=DAY)
    assert added
    assert [s.scored_at for s in pending] == [DAY, 2 * DAY]  # oldest dropped


def test_idle_checks_follow_last_activity_and_stop() -> None:
    assert next_idle_check(0.0, 0.0, check_interval_s=7 * DAY, horizon_s=H) == 7 * DAY
    assert next_idle_check(0.0, 7 * DAY, check_interval_s=7 * DAY, horizon_s=H) == 14 * DAY
    assert next_idle_check(0.0, 63 * DAY, check_interval_s=7 * DAY, horizon_s=H) is None


@given(
    scored=st.lists(st.floats(0, 100 * DAY), min_size=1, max_size=8),
    activity=st.floats(0, 200 * DAY),
)
def test_labels_use_only_the_future(scored: list[float], activity: float) -> None:
    pending = tuple(snap(t) for t in scored)
    left, out = on_activity(pending, activity, H)
    assert len(left) + len(out) == len(pending)
    for e in out:
        t = e.snapshot.scored_at
        assert activity > t  # nothing at or before scoring time labels
        assert e.labelled_at >= t
        assert e.label == (0 if activity < t + H else 1)
    for s in left:
        assert activity <= s.scored_at


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
    s = Snapshot("c1", t, features, 1)
    pending: tuple[Snapshot, ...] = (s,)
    # A late event at exactly t (or before) must not label the snapshot as "stayed".
    for j, late in enumerate((t, t - DAY)):
        store.apply("c1", f"late{j}", event_ops(_click(f"late{j}"), late), late)
        pending, out = on_activity(pending, late, H)
        assert out == []
    # Activity after t labels 0; the snapshot's features never saw it.
    later = t + 3 * DAY
    store.apply("c1", "e9", event_ops(_click("e9"), later), later)
    pending, out = on_activity(pending, later, H)
    assert [e.label for e in out] == [0]
    assert out[0].snapshot.features == frozen
    assert model_features(ProfileView("c1", t, store.states["c1"])) != frozen  # the store moved on
