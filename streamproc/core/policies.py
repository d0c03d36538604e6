"""Segment-change hysteresis and churn-alert policy as pure state transitions.

Both have the shape ``(state | None, input) -> (new_state, output | None)`` so the
runtime can keep the state next to the profile and tests can drive them with plain
data and a fake clock. Time is event time (epoch seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from streamproc.core.outputs import RiskLevel, alert_id

# ---------------------------------------------------------------- segments


@dataclass(frozen=True, slots=True)
class SegmentState:
    """The segment a customer was last published in, and since when (event time)."""

    segment_id: int
    since: float


@dataclass(frozen=True, slots=True)
class SegmentChange:
    """A customer moved segment (``previous_segment_id`` None on first assignment)."""

    previous_segment_id: int | None
    segment_id: int
    changed_at: float
    #: Event time the customer had been in the previous segment since (None on first assignment).
    previous_since: float | None


def decide_segment(
    state: SegmentState | None,
    distances: Mapping[int, float],
    event_time: float,
    *,
    hysteresis: float = 0.15,
) -> tuple[SegmentState, SegmentChange | None]:
    """Stay in the current segment unless the nearest centre is clearly nearer.

    Move when ``d_best < (1 - hysteresis) * d_current``. The first assignment is
    immediate, as is a move away from a segment the model no longer has.
    """
    if not distances:
        raise ValueError("distances must not be empty")
    if not 0.0 <= hysteresis < 1.0:
        raise ValueError("hysteresis must be in [0, 1)")
    best = min(distances, key=lambda s: (distances[s], s))
    if state is None:
        new = SegmentState(best, event_time)
        return new, SegmentChange(None, best, event_time, None)
    current = distances.get(state.segment_id)
    if best == state.segment_id:
        return state, None
    if current is not None and not distances[best] < (1.0 - hysteresis) * current:
        return state, None
    return SegmentState(best, event_time), SegmentChange(
        state.segment_id, best, event_time, state.since
    )


# ---------------------------------------------------------------- alerts

@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """When a churn probability becomes an alert (built from settings: ``ModelSettings``)."""

    threshold: float
    cooldown_s: float
    #: The model must have learned from this many labels before it may alert.
    min_labels: int

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if self.cooldown_s <= 0:
            raise ValueError("cooldown_s must be > 0")

    def risk_level(self, probability: float) -> RiskLevel:
        """Thirds of the band above the threshold: medium, high, critical."""
        return alert_risk_level(probability, self.threshold)


def alert_risk_level(probability: float, threshold: float) -> RiskLevel:
    """An alert's level: thirds of the band above ``threshold``: medium, high, critical."""
    step = (1.0 - threshold) / 3.0
    if probability >= threshold + 2 * step:
        return "critical"
    if probability >= threshold + step:
        return "high"
    return "medium"


@dataclass(frozen=True, slots=True)
class AlertState:
    """Event time of the last alert (None if never) and the last probability seen."""

    last_alert_at: float | None
    last_probability: float


@dataclass(frozen=True, slots=True)
class AlertInput:
    """One scoring of one customer."""

    customer_id: str
    event_time: float
    churn_probability: float
    model_version: int
    labels_seen: int


@dataclass(frozen=True, slots=True)
class AlertDecision:
    """An alert to publish; ``alert_id`` (:func:`~streamproc.core.outputs.alert_id`) names it."""

    alert_id: str
    customer_id: str
    event_time: float
    churn_probability: float
    previous_probability: float | None
    risk_level: RiskLevel
    model_version: int


def decide_alert(
    state: AlertState | None, inp: AlertInput, policy: AlertPolicy
) -> tuple[AlertState, AlertDecision | None]:
    """Alert when over threshold, the model is ready, and the cooldown has passed."""
    previous = None if state is None else state.last_probability
    last_at = None if state is None else state.last_alert_at
    fire = (
        inp.churn_probability >= policy.threshold
        and inp.labels_seen >= policy.min_labels
        and (last_at is None or inp.event_time >= last_at + policy.cooldown_s)
    )
    if not fire:
        return AlertState(last_at, inp.churn_probability), None
    decision = AlertDecision(
        alert_id=alert_id(inp.customer_id, inp.event_time, inp.model_version),
        customer_id=inp.customer_id,
        event_time=inp.event_time,
        churn_probability=inp.churn_probability,
        previous_probability=previous,
        risk_level=policy.risk_level(inp.churn_probability),
        model_version=inp.model_version,
    )
    return AlertState(inp.event_time, inp.churn_probability), decision
