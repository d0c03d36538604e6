"""Segment-change hysteresis and churn-alert policy as pure state transitions.

Both have the shape ``(state | None, input) -> (new_state, output | None)`` so the
runtime can keep the state next to the profile and tests can drive them with plain
data and a fake clock. Time is event time (epoch seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from streamproc.core.outputs import AlertTrigger, RiskLevel, alert_id

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
    """When a churn probability becomes an alert (built from settings: ``ModelSettings``).

    One alert per at-risk episode: a customer is alerted when they enter risk (probability
    at or above ``threshold``), and again only after they came back (a qualifying activity
    after the alert) and drifted into risk again, or when their value at risk has grown by
    ``rearm_factor`` since the episode's last alert. ``cooldown_s`` stays a floor between
    two alerts of one customer whatever happens.
    """

    threshold: float
    cooldown_s: float
    #: The model must have learned from this many labels before it may alert.
    min_labels: int
    #: Value at risk must reach this multiple of the episode's last alerted one to re-alert.
    rearm_factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if self.cooldown_s <= 0:
            raise ValueError("cooldown_s must be > 0")
        if self.rearm_factor <= 1.0:
            raise ValueError("rearm_factor must be > 1")

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
    """Event time of the last alert (None if never), the last probability seen, and the
    open at-risk episode: the value at risk of its last alert (None: no open episode)."""

    last_alert_at: float | None
    last_probability: float
    episode_value_at_risk: float | None = None


@dataclass(frozen=True, slots=True)
class AlertInput:
    """One scoring of one customer."""

    customer_id: str
    event_time: float
    churn_probability: float
    model_version: int
    labels_seen: int
    #: Expected spend over the horizon (value at risk = probability x expected value).
    expected_value: float = 0.0
    #: Event time of the customer's last qualifying activity (None: none yet).
    last_activity: float | None = None
    #: Too new to judge (see :func:`streamproc.core.lifecycle.too_new_to_judge`): no alert.
    too_new: bool = False

    @property
    def value_at_risk(self) -> float:
        """Churn probability x expected value: the spend expected to be lost."""
        return round(self.churn_probability * self.expected_value, 2)


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
    expected_value: float = 0.0
    value_at_risk: float = 0.0
    #: Why it fired: entering risk, or value at risk grown within an open episode.
    trigger: AlertTrigger = "entered_risk"


def _episode(state: AlertState | None, inp: AlertInput) -> float | None:
    """The open episode's alerted value at risk, or None when there is none: never alerted,
    or the customer came back (qualifying activity after the last alert)."""
    if state is None or state.last_alert_at is None:
        return None
    if inp.last_activity is not None and inp.last_activity > state.last_alert_at:
        return None
    return state.episode_value_at_risk


def decide_alert(
    state: AlertState | None, inp: AlertInput, policy: AlertPolicy
) -> tuple[AlertState, AlertDecision | None]:
    """Alert once per at-risk episode (see :class:`AlertPolicy`), once the model is ready."""
    previous = None if state is None else state.last_probability
    last_at = None if state is None else state.last_alert_at
    episode = _episode(state, inp)
    var = inp.value_at_risk
    at_risk = inp.churn_probability >= policy.threshold
    trigger: AlertTrigger = "entered_risk" if episode is None else "value_at_risk_grew"
    fire = (
        at_risk
        and not inp.too_new
        and inp.labels_seen >= policy.min_labels
        and (last_at is None or inp.event_time >= last_at + policy.cooldown_s)
        and (episode is None or var >= policy.rearm_factor * max(episode, 0.01))
    )
    if not fire:
        return AlertState(last_at, inp.churn_probability, episode), None
    decision = AlertDecision(
        alert_id=alert_id(inp.customer_id, inp.event_time, inp.model_version),
        customer_id=inp.customer_id,
        event_time=inp.event_time,
        churn_probability=inp.churn_probability,
        previous_probability=previous,
        risk_level=policy.risk_level(inp.churn_probability),
        model_version=inp.model_version,
        expected_value=inp.expected_value,
        value_at_risk=var,
        trigger=trigger,
    )
    return AlertState(inp.event_time, inp.churn_probability, var), decision
