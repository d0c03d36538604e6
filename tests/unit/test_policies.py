"""Segment hysteresis and the churn-alert policy as pure transitions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from streamproc.core.features import DAY
from streamproc.core.outputs import alert_id
from streamproc.core.policies import (
    AlertInput,
    AlertPolicy,
    AlertState,
    SegmentState,
    decide_alert,
    decide_segment,
)


def test_first_assignment_is_immediate() -> None:
    state, change = decide_segment(None, {0: 2.0, 1: 1.0}, 5.0)
    assert state == SegmentState(1, 5.0)
    assert change is not None
    assert change.previous_segment_id is None
    assert change.segment_id == 1


def test_moves_only_when_clearly_closer() -> None:
    state = SegmentState(0, 0.0)
    same, change = decide_segment(state, {0: 1.0, 1: 0.9}, 1.0, hysteresis=0.15)
    assert same == state
    assert change is None
    moved, change = decide_segment(state, {0: 1.0, 1: 0.8}, 2.0, hysteresis=0.15)
    assert moved == SegmentState(1, 2.0)
    assert change is not None
    assert (change.previous_segment_id, change.segment_id, change.previous_since) == (0, 1, 0.0)


def test_boundary_oscillation_does_not_flap() -> None:
    state, _ = decide_segment(None, {0: 1.0, 1: 1.02}, 0.0)
    changes = 0
    for i in range(200):
        wobble = 0.05 if i % 2 else -0.05
        state, change = decide_segment(state, {0: 1.0 + wobble, 1: 1.0 - wobble}, float(i))
        changes += change is not None
    assert changes == 0
    assert state.segment_id == 0


def test_vanished_segment_moves_immediately() -> None:
    state, change = decide_segment(SegmentState(7, 0.0), {0: 5.0, 1: 4.0}, 1.0)
    assert state.segment_id == 1
    assert change is not None


POLICY = AlertPolicy(threshold=0.7, cooldown_s=7 * DAY, min_labels=10)


def inp(t: float, p: float, labels: int = 100, version: int = 3, value: float = 100.0,
        active: float | None = None, new: bool = False) -> AlertInput:
    return AlertInput("c1", t, p, version, labels, expected_value=value, last_activity=active,
                      too_new=new)


def test_alert_needs_threshold_and_ready_model() -> None:
    _, d = decide_alert(None, inp(0.0, 0.69), POLICY)
    assert d is None
    _, d = decide_alert(None, inp(0.0, 0.95, labels=9), POLICY)
    assert d is None
    state, d = decide_alert(None, inp(0.0, 0.95), POLICY)
    assert d is not None
    assert d.risk_level == "critical"
    assert state == AlertState(0.0, 0.95, 95.0)
    assert (d.expected_value, d.value_at_risk, d.trigger) == (100.0, 95.0, "entered_risk")
    _, d = decide_alert(None, inp(0.0, 0.95, new=True), POLICY)
    assert d is None  # too new to judge


def test_cooldown_suppresses_repeats_and_late_events() -> None:
    state, first = decide_alert(None, inp(10 * DAY, 0.8), POLICY)
    assert first is not None
    for t in (10 * DAY + 1, 16 * DAY, 3 * DAY):
        state2, d = decide_alert(state, inp(t, 0.9), POLICY)
        assert d is None
        assert state2.last_alert_at == 10 * DAY
        assert state2.last_probability == 0.9
    # Past the cooldown, still the same episode: the customer has not come back.
    _, same = decide_alert(state, inp(17 * DAY, 0.9, active=9 * DAY), POLICY)
    assert same is None
    # They came back (an order after the alert) and drifted away again: a new episode.
    _, again = decide_alert(state, inp(17 * DAY, 0.9, active=12 * DAY), POLICY)
    assert again is not None
    assert again.alert_id != first.alert_id
    assert again.previous_probability == 0.8
    assert again.trigger == "entered_risk"


def test_one_alert_per_episode_unless_value_at_risk_grew_by_the_factor() -> None:
    state, first = decide_alert(None, inp(0.0, 0.8, value=100.0), POLICY)
    assert first is not None
    assert first.value_at_risk == 80.0
    t = 0.0
    for p, value in ((0.9, 120.0), (0.95, 160.0), (0.75, 50.0)):
        t += 10 * DAY
        state, d = decide_alert(state, inp(t, p, value=value), POLICY)
        assert d is None, "value at risk below 2 x 80: the episode's one alert stands"
    assert state.episode_value_at_risk == 80.0
    _, grown = decide_alert(state, inp(t + 10 * DAY, 0.8, value=200.0), POLICY)
    assert grown is not None
    assert (grown.value_at_risk, grown.trigger) == (160.0, "value_at_risk_grew")
    # The cooldown stays a floor even when the value at risk grew.
    _, early = decide_alert(state, inp(t + DAY, 0.8, value=1000.0), replace(
        POLICY, cooldown_s=60 * DAY))
    assert early is None


def test_alert_id_is_stable_on_reprocessing_and_names_one_alert() -> None:
    _, a = decide_alert(None, inp(5 * DAY, 0.8), POLICY)
    _, b = decide_alert(None, inp(5 * DAY, 0.8), POLICY)
    assert a is not None
    assert b is not None
    assert a.alert_id == b.alert_id
    assert a.alert_id == alert_id("c1", 5 * DAY, 3)
    assert alert_id("c2", 5 * DAY, 3) != a.alert_id
    # Another moment, or the same moment re-decided under another model version (another
    # probability), is another alert: never the same id with other content.
    _, later = decide_alert(None, inp(5 * DAY + 1, 0.8), POLICY)
    _, other_model = decide_alert(None, inp(5 * DAY, 0.9, version=4), POLICY)
    assert later is not None
    assert other_model is not None
    assert len({a.alert_id, later.alert_id, other_model.alert_id}) == 3


@pytest.mark.parametrize(
    ("p", "level"), [(0.7, "medium"), (0.79, "medium"), (0.81, "high"), (0.9, "critical")]
)
def test_risk_bands(p: float, level: str) -> None:
    assert POLICY.risk_level(p) == level


def test_invalid_policy_rejected() -> None:
    with pytest.raises(ValueError, match="threshold"):
        AlertPolicy(threshold=1.0, cooldown_s=DAY, min_labels=0)
