"""What happens to one customer when activity or event time arrives: one pure step.

``step(state, input, bundle, config) -> (state, output)``, in the shape of Bytewax's
``stateful_map``. In order, for one customer:

1. each new qualifying activity marks the pending snapshots whose horizon it falls in
   ("came back", plus an order's total as the spend that followed) and, after a gap of a
   day or more since the previous one, emits the gap for the trainer's purchase rhythm;
2. fresh activity is scored as of ``score_at`` (a segment decision with hysteresis; an
   alert decision); the first scoring starts the customer's census schedule;
3. every census check due at or before the watermark fires, oldest first: a snapshot
   under the horizon in use and a scoring as of its own event time. Every known customer
   is checked every ``check_interval_s`` whatever they did, so each gives one training
   example per interval and a lapsing customer is seen lapsing;
4. the watermark labels every snapshot whose horizon it passed (at ``t + H`` only);
5. the next event time something is due for the customer (a horizon end or a census
   check) is returned for the schedule.

The worker (``runtime/scoring.py``) and the in-memory replay (``core/replay.py``) are
two thin drivers of this step: they differ only in where state lives and when they
call it. Model scoring is vectorised over every customer of a call (:func:`step_many`);
a score depends only on features and bundle, so that changes no decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from streamproc.core import features as _features
from streamproc.core.churn_definition import ChurnDefinition
from streamproc.core.labels import Snapshot, add_snapshot, on_activity, on_watermark
from streamproc.core.lifecycle import (
    LifecycleStage,
    StageChange,
    StageState,
    ValueTier,
    decide_stage,
    lifecycle_stage,
    too_new_to_judge,
)
from streamproc.core.outputs import (
    AlertValue,
    ChurnAlert,
    LifecycleChanged,
    Reason,
    SegmentChanged,
    SegmentInfo,
    alert_priority,
)
from streamproc.core.policies import (
    AlertDecision,
    AlertInput,
    AlertPolicy,
    AlertState,
    SegmentChange,
    SegmentState,
    decide_alert,
    decide_segment,
)
from streamproc.core.rhythm import FALLBACK_HORIZON_DAYS
from streamproc.core.training import GapExample, ProfileExample, TrainingExample

if TYPE_CHECKING:  # the step only calls a bundle; importing River here slows the settings
    from streamproc.core.modelset import ModelBundle, Score

#: Most event time one catch-up batch may span: a census check that falls inside a batch
#: fires after the batch's activity is in the profile, so it is skipped when the customer
#: was active after it (see :func:`_census`); short batches keep those skips rare.
MAX_BATCH_SPAN_S: Final = _features.DAY


@dataclass(frozen=True, slots=True)
class StepConfig:
    """Every value that changes what the step decides (``ModelSettings.step_config``)."""

    #: The operator's churn horizon; None: the bundle's (learned from the purchase rhythm).
    horizon_days: float | None
    check_interval_s: float
    #: Most snapshots awaiting their label per customer (the oldest is dropped beyond).
    max_pending: int
    hysteresis: float
    alert_policy: AlertPolicy
    #: Which events keep a customer from churning (the drivers pass only those as activity).
    churn_definition: ChurnDefinition = "activity"
    #: Scorings whose event time is older than this behind the wall clock (``StepInput.now``)
    #: are history: they update state but publish nothing. None: everything is news.
    history_lag_s: float | None = None

    def horizon_s(self, bundle: ModelBundle | None) -> float:
        """The horizon in use: the bundle's, else the operator's, else the fallback."""
        if bundle is not None:
            return bundle.horizon_s
        return (self.horizon_days or FALLBACK_HORIZON_DAYS) * _features.DAY


@dataclass(frozen=True, slots=True)
class ScoringState:
    """One customer's scoring state, stored after its profile."""

    segment: SegmentState | None = None
    alert: AlertState | None = None
    stage: StageState | None = None
    pending: tuple[Snapshot, ...] = ()
    last_activity: float | None = None
    #: Event time of the last census check (or of the first scoring: the schedule's phase).
    last_snapshot: float | None = None
    #: The snapshot the next census check takes unless activity comes before it, frozen
    #: when the customer was last stepped (see :func:`_census`).
    ahead: Snapshot | None = None
    #: (event time, order total) of qualifying activity after the last census check: a
    #: check that fires after that activity was stepped still learns that it came back.
    recent: tuple[tuple[float, float], ...] = ()
    #: Partition whose census schedule holds the customer (set by the worker).
    owner: int | None = None
    #: The customer's events arrived on more than one partition (counted once).
    spread: bool = False


@dataclass(frozen=True, slots=True)
class StepInput:
    """What arrived for one customer since its last step."""

    customer_id: str
    #: The stored profile (None: unknown or expired; nothing is scored then).
    profile: Mapping[str, Any] | None
    #: (event time, order total or 0) of qualifying activity applied since the last step,
    #: ascending.
    activity: tuple[tuple[float, float], ...] = ()
    #: Score the profile as of this event time (fresh activity); None: nothing fresh.
    score_at: float | None = None
    #: No activity before it is still to come: labels and census checks may fire up to it.
    watermark: float = -math.inf
    #: Wall-clock time of the step (epoch s; None: no clock, nothing is history).
    now: float | None = None


@dataclass(frozen=True, slots=True)
class SegmentDecision:
    """A segment change to publish, with what the record needs besides the bundle."""

    customer_id: str
    change: SegmentChange
    rfm_tier: str
    model_version: int
    value_tier: ValueTier
    lifecycle_stage: LifecycleStage


@dataclass(frozen=True, slots=True)
class AlertOutcome:
    """A churn alert to publish, with what the record needs besides the bundle."""

    decision: AlertDecision
    customer_value: float
    segment_id: int
    reasons: tuple[tuple[str, float, str], ...]
    value_tier: ValueTier
    lifecycle_stage: LifecycleStage


@dataclass(frozen=True, slots=True)
class StageDecision:
    """A lifecycle-stage change to publish."""

    customer_id: str
    change: StageChange
    value_tier: ValueTier
    expected_value: float
    churn_probability: float
    segment_id: int
    model_version: int


@dataclass(frozen=True, slots=True)
class StepOutput:
    """Everything one step decided, in event-time order within each kind."""

    examples: tuple[TrainingExample, ...] = ()
    segment_changes: tuple[SegmentDecision, ...] = ()
    alerts: tuple[AlertOutcome, ...] = ()
    stage_changes: tuple[StageDecision, ...] = ()
    #: Segment changes, stage changes and alerts not published: their event time is history.
    history_suppressed: int = 0
    #: Churn probability of every scoring (for the metrics).
    probabilities: tuple[float, ...] = ()
    idle_checks: int = 0
    #: Pending snapshots dropped by ``max_pending``.
    dropped_snapshots: int = 0
    #: When the customer next needs a step with no activity (None: never).
    next_due: float | None = None


@dataclass(slots=True)
class _Point:
    at: float
    features: dict[str, float]
    customer_value: float
    currency: str | None


@dataclass(slots=True)
class _Plan:
    """The part of a step that needs no score: labels, snapshots and what to score."""

    state: ScoringState
    examples: list[TrainingExample] = field(default_factory=list)
    points: list[_Point] = field(default_factory=list)
    idle_checks: int = 0
    dropped: int = 0


def _features_of(view: _features.ProfileView, bundle: ModelBundle | None,
                 horizon_s: float) -> dict[str, float]:
    if bundle is not None:
        return bundle.features(view)
    return _features.model_features(view, horizon_days=horizon_s / _features.DAY)


def _point(plan: _Plan, view: _features.ProfileView, feats: dict[str, float]) -> None:
    plan.points.append(_Point(view.as_of, feats, round(view.net_spend, 2), view.currency))


def _census_snapshot(view: _features.ProfileView, bundle: ModelBundle | None,
                     config: StepConfig) -> Snapshot:
    horizon = config.horizon_s(bundle)
    return Snapshot(view.customer_id, view.as_of, _features_of(view, bundle, horizon),
                    bundle.version if bundle is not None else 0, horizon)


def _census(plan: _Plan, view: _features.ProfileView, bundle: ModelBundle | None,
            config: StepConfig) -> None:
    """One census check at ``view.as_of``: a snapshot under the horizon in use, scored.

    The profile is read after whatever its batch applied, and the watermark that lets a
    check fire may lag the applied events: a customer active after the check's time
    would be seen with that future activity. Then the snapshot frozen ahead of time
    (:func:`_freeze_ahead`, from the profile before that activity) is taken instead;
    without one the check is passed over. Passing over them is not neutral: the
    customers active right after a check are the ones who stayed.
    """
    st = plan.state
    at = view.as_of
    plan.idle_checks += 1
    plan.state = replace(st, last_snapshot=at, ahead=None,
                         recent=tuple(r for r in st.recent if r[0] > at))
    if float(view.raw.get("lq", -math.inf)) <= at:
        snap = _census_snapshot(view, bundle, config)
    elif st.ahead is not None and st.ahead.scored_at == at:
        snap = st.ahead
    else:
        return
    marked: tuple[Snapshot, ...] = (snap,)
    for t, amount in plan.state.recent:
        marked = on_activity(marked, t, amount)
    snap = marked[0]
    pending, dropped = add_snapshot(st.pending, snap, max_pending=config.max_pending)
    plan.dropped += dropped
    plan.examples.append(ProfileExample(view.customer_id, at, snap.features))
    plan.state = replace(plan.state, pending=pending)
    plan.points.append(_Point(at, snap.features, round(view.net_spend, 2), view.currency))


def _freeze_ahead(plan: _Plan, cid: str, profile: Mapping[str, Any],
                  bundle: ModelBundle | None, config: StepConfig) -> None:
    """Freeze the next census check's snapshot from the profile as it is now, while no
    activity after that check can be in it."""
    st = plan.state
    if st.last_snapshot is None:
        return
    due = st.last_snapshot + config.check_interval_s
    if float(profile.get("lq", -math.inf)) <= due:  # else the one frozen earlier stands
        view = _features.ProfileView(cid, due, profile)
        plan.state = replace(st, ahead=_census_snapshot(view, bundle, config))


def _on_activity(plan: _Plan, cid: str, activity: tuple[tuple[float, float], ...]) -> None:
    st = plan.state
    pending, last, recent = st.pending, st.last_activity, list(st.recent)
    since = st.last_snapshot if st.last_snapshot is not None else -math.inf
    for t, amount in activity:
        pending = on_activity(pending, t, amount)
        if t > since:
            recent.append((t, amount))
        if last is not None and t - last >= _features.DAY:
            plan.examples.append(GapExample(cid, t, (t - last) / _features.DAY))
        last = t if last is None else max(last, t)
    plan.state = replace(st, pending=pending, last_activity=last, recent=tuple(recent))


def _plan(state: ScoringState | None, inp: StepInput, bundle: ModelBundle | None,
          config: StepConfig) -> _Plan:
    plan = _Plan(state or ScoringState())
    cid, profile = inp.customer_id, inp.profile
    _on_activity(plan, cid, inp.activity)
    if profile is not None and inp.score_at is not None:
        view = _features.ProfileView(cid, inp.score_at, profile)
        _point(plan, view, _features_of(view, bundle, config.horizon_s(bundle)))
        if plan.state.last_snapshot is None:  # the census schedule's phase
            plan.state = replace(plan.state, last_snapshot=inp.score_at)
    while profile is not None and plan.state.last_snapshot is not None:
        due = plan.state.last_snapshot + config.check_interval_s
        if due > inp.watermark:
            break
        pending, labelled = on_watermark(plan.state.pending, due)
        plan.examples += labelled
        plan.state = replace(plan.state, pending=pending)
        _census(plan, _features.ProfileView(cid, due, profile), bundle, config)
    pending, labelled = on_watermark(plan.state.pending, inp.watermark)
    plan.examples += labelled
    plan.state = replace(plan.state, pending=pending)
    if profile is not None:
        _freeze_ahead(plan, cid, profile, bundle, config)
    return plan


def next_due(state: ScoringState, config: StepConfig) -> float | None:
    """The next event time the customer needs a step without activity: a horizon's end or
    a census check (None: neither)."""
    candidates = [s.scored_at + s.horizon_s for s in state.pending]
    if state.last_snapshot is not None:
        candidates.append(state.last_snapshot + config.check_interval_s)
    return min(candidates) if candidates else None


@dataclass(slots=True)
class _Decisions:
    segment_changes: list[SegmentDecision] = field(default_factory=list)
    alerts: list[AlertOutcome] = field(default_factory=list)
    stage_changes: list[StageDecision] = field(default_factory=list)
    suppressed: int = 0


def is_history(event_time: float, now: float | None, config: StepConfig) -> bool:
    """Whether a scoring at ``event_time`` is history (older than the lag behind ``now``)."""
    lag = config.history_lag_s
    return lag is not None and now is not None and event_time < now - lag


def _decide(plan: _Plan, inp: StepInput, scores: Sequence[Score], bundle: ModelBundle,
            config: StepConfig) -> _Decisions:
    out = _Decisions()
    cid, st, policy = inp.customer_id, plan.state, config.alert_policy
    segment, alert, stage = st.segment, st.alert, st.stage
    ready_labels = bundle.labels_seen if bundle.churn_ready else 0
    horizon_s = config.horizon_s(bundle)
    for point, score in zip(plan.points, scores, strict=True):
        # History still moves every state, so that news that follows it is judged on it.
        news = not is_history(point.at, inp.now, config)
        tier = bundle.value_tier(score.expected_value)
        at_risk = score.churn_probability >= policy.threshold and ready_labels >= policy.min_labels
        stage, stage_change = decide_stage(stage, lifecycle_stage(
            stage, at=point.at, last_activity=st.last_activity, features=point.features,
            at_risk=at_risk, horizon_s=horizon_s), point.at)
        segment, change = decide_segment(segment, score.distances, point.at,
                                         hysteresis=config.hysteresis)
        alert, decision = decide_alert(alert, AlertInput(
            cid, point.at, score.churn_probability, bundle.version, ready_labels,
            expected_value=score.expected_value, last_activity=st.last_activity,
            too_new=too_new_to_judge(point.features, horizon_s)), policy)
        if not news:
            out.suppressed += sum(x is not None for x in (stage_change, change, decision))
            continue
        if stage_change is not None:
            out.stage_changes.append(StageDecision(
                cid, stage_change, tier, score.expected_value, score.churn_probability,
                segment.segment_id, bundle.version))
        if change is not None:
            out.segment_changes.append(SegmentDecision(cid, change, score.rfm_tier,
                                                       bundle.version, tier, stage.stage))
        if decision is not None:
            out.alerts.append(AlertOutcome(decision, point.customer_value, segment.segment_id,
                                           tuple(score.reasons), tier, stage.stage))
    plan.state = replace(st, segment=segment, alert=alert, stage=stage)
    return out


def step_many(items: Sequence[tuple[ScoringState | None, StepInput]],
              bundle: ModelBundle | None,
              config: StepConfig) -> list[tuple[ScoringState, StepOutput]]:
    """:func:`step` for many customers, with one vectorised scoring call for all of them."""
    plans = [_plan(state, inp, bundle, config) for state, inp in items]
    points = [p for plan in plans for p in plan.points]
    scores = (bundle.score_features_many([p.features for p in points],
                                         [p.currency for p in points])
              if bundle is not None and points else [])
    out: list[tuple[ScoringState, StepOutput]] = []
    at = 0
    for plan, (_, inp) in zip(plans, items, strict=True):
        n = len(plan.points)
        decided = _Decisions()
        if bundle is not None:
            decided = _decide(plan, inp, scores[at:at + n], bundle, config)
        probabilities = tuple(s.churn_probability for s in scores[at:at + n])
        at += n
        out.append((plan.state, StepOutput(
            examples=tuple(plan.examples), segment_changes=tuple(decided.segment_changes),
            alerts=tuple(decided.alerts), stage_changes=tuple(decided.stage_changes),
            history_suppressed=decided.suppressed, probabilities=probabilities,
            idle_checks=plan.idle_checks,
            dropped_snapshots=plan.dropped, next_due=next_due(plan.state, config))))
    return out


def step(state: ScoringState | None, inp: StepInput, bundle: ModelBundle | None,
         config: StepConfig) -> tuple[ScoringState, StepOutput]:
    """One customer's step: ``(state, input) -> (state, output)`` (see the module docstring)."""
    return step_many([(state, inp)], bundle, config)[0]


# ---------------------------------------------------------------- published records


def segment_info(bundle: ModelBundle, segment_id: int) -> SegmentInfo:
    """A segment as the bundle names it (a placeholder for an id it no longer has)."""
    seg = bundle.segments.get(segment_id)
    return seg if seg is not None else SegmentInfo(segment_id=segment_id,
                                                    name=f"segment {segment_id}", profile={})


def segment_changed(decision: SegmentDecision, bundle: ModelBundle,
                    emitted_at: datetime) -> SegmentChanged:
    """The ``segment_changed`` record of a decision."""
    change = decision.change
    previous = (None if change.previous_segment_id is None
                else segment_info(bundle, change.previous_segment_id))
    return SegmentChanged.build(
        customer_id=decision.customer_id, previous=previous,
        current=segment_info(bundle, change.segment_id), rfm_tier=decision.rfm_tier,
        value_tier=decision.value_tier, lifecycle_stage=decision.lifecycle_stage,
        model_version=decision.model_version,
        event_time=datetime.fromtimestamp(change.changed_at, emitted_at.tzinfo),
        emitted_at=emitted_at)


def churn_alert(outcome: AlertOutcome, bundle: ModelBundle, threshold: float,
                emitted_at: datetime) -> ChurnAlert:
    """The ``churn_alert`` record of an alert decision (its id is the decision's)."""
    d = outcome.decision
    value = AlertValue(expected_value=d.expected_value, horizon_days=bundle.horizon_days,
                       value_at_risk=d.value_at_risk, value_tier=outcome.value_tier,
                       lifecycle_stage=outcome.lifecycle_stage,
                       priority=alert_priority(outcome.value_tier), trigger=d.trigger)
    return ChurnAlert(
        alert_id=d.alert_id, customer_id=d.customer_id, churn_probability=d.churn_probability,
        threshold=threshold, risk_level=d.risk_level, customer_value=outcome.customer_value,
        value=value,
        segment=segment_info(bundle, outcome.segment_id),
        reasons=[Reason(feature=f, contribution=c, text=t) for f, c, t in outcome.reasons],
        model_version=d.model_version,
        event_time=datetime.fromtimestamp(d.event_time, emitted_at.tzinfo),
        emitted_at=emitted_at)


def lifecycle_changed(decision: StageDecision, bundle: ModelBundle,
                      emitted_at: datetime) -> LifecycleChanged:
    """The ``lifecycle_changed`` record of a stage change."""
    change = decision.change
    return LifecycleChanged.build(
        customer_id=decision.customer_id, previous_stage=change.previous, stage=change.stage,
        value_tier=decision.value_tier, expected_value=decision.expected_value,
        churn_probability=decision.churn_probability,
        segment=segment_info(bundle, decision.segment_id), model_version=decision.model_version,
        event_time=datetime.fromtimestamp(change.changed_at, emitted_at.tzinfo),
        emitted_at=emitted_at)
