"""The per-customer scoring step, driven with plain data and event times chosen by the test."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from streamproc.core.features import DAY, InMemoryProfiles, ProfileView, event_ops, model_features
from streamproc.core.labels import LabelledExample
from streamproc.core.modelset import ModelBundle, Score
from streamproc.core.outputs import SegmentInfo
from streamproc.core.replay import event_namespace
from streamproc.core.step import ScoringState, StepInput, StepOutput, step, step_many
from streamproc.core.training import GapExample, ProfileExample
from streamproc.settings import ModelSettings

T0 = 1_770_000_000.0
CONFIG = ModelSettings(min_labels_before_alerts=0).step_config()  # the settings' defaults
CHECK = CONFIG.check_interval_s
H = CONFIG.horizon_s(None)  # no model yet, no horizon set: the fallback


def profile(*days: float, cid: str = "c") -> dict[str, Any]:
    """The stored profile of a customer with a page view on each of ``days`` (after T0)."""
    store = InMemoryProfiles.empty(clock=lambda: T0)
    for n, d in enumerate(days):
        ts = T0 + d * DAY
        value = {"event_id": f"e{n}", "customer_id": cid, "event_type": "page_view",
                 "session_id": f"s{n}"}
        store.apply(cid, f"e{n}", event_ops(event_namespace(value), ts), ts)
    return copy.deepcopy(store.states[cid])


def act(*days: float, amount: float = 0.0) -> tuple[tuple[float, float], ...]:
    """Qualifying activity on ``days`` after T0."""
    return tuple((T0 + d * DAY, amount) for d in days)


def features(cid: str, at: float, prof: Mapping[str, Any]) -> dict[str, float]:
    return model_features(ProfileView(cid, at, prof), horizon_days=H / DAY)


def labels(out: StepOutput) -> list[LabelledExample]:
    return [e for e in out.examples if isinstance(e, LabelledExample)]


def snapshots(out: StepOutput) -> list[ProfileExample]:
    return [e for e in out.examples if isinstance(e, ProfileExample)]


@dataclass(frozen=True)
class ScriptedBundle:
    """A model whose scores are a plain function of recency (the step only calls it)."""

    version: int = 7
    labels_seen: int = 1000
    churn_ready: bool = True
    horizon_days: float = 30.0
    churn: Callable[[float], float] = lambda days: min(0.99, days / 30.0)
    #: Expected value over the horizon as a function of recency.
    value: Callable[[float], float] = lambda days: 100.0
    segments: Mapping[int, SegmentInfo] = field(default_factory=lambda: {
        0: SegmentInfo(segment_id=0, name="regulars"),
        1: SegmentInfo(segment_id=1, name="lapsing")})

    @property
    def horizon_s(self) -> float:
        return self.horizon_days * DAY

    def features(self, view: ProfileView) -> dict[str, float]:
        return model_features(view, horizon_days=self.horizon_days)

    def score_features_many(self, rows: Sequence[Mapping[str, float]],
                            currencies: Sequence[str | None]) -> list[Score]:
        out = []
        for row, currency in zip(rows, currencies, strict=True):
            days = row["recency_days"]
            # Segment 0 near recency 0, segment 1 near 20 days.
            distances = {0: abs(days) + 1.0, 1: abs(days - 20.0) + 1.0}
            out.append(Score(0, "s", {}, distances, "tier", (1, 1, 1), self.churn(days),
                             [("recency_days", 0.5, f"{days:.0f} days {currency}")],
                             expected_value=self.value(days), horizon_days=self.horizon_days))
        return out

    def value_tier(self, expected_value: float) -> str:
        return "high" if expected_value >= 100.0 else "low"


def bundle(**kwargs: Any) -> ModelBundle:
    return cast(ModelBundle, ScriptedBundle(**kwargs))


def test_activity_is_scored_and_starts_the_census_without_a_snapshot() -> None:
    p0 = profile(0)
    st, out = step(None, StepInput("c", p0, act(0), score_at=T0), None, CONFIG)
    assert st.pending == ()
    assert (st.last_activity, st.last_snapshot) == (T0, T0)
    assert out.examples == ()  # no gap before the first activity, no snapshot yet
    assert out.next_due == T0 + CHECK  # the first census check


def test_gaps_of_a_day_or_more_between_activity_go_to_the_rhythm() -> None:
    st, _ = step(None, StepInput("c", profile(0), act(0), score_at=T0), None, CONFIG)
    st, out = step(st, StepInput("c", profile(0, 0.5, 3), act(0.5, 3)), None, CONFIG)
    # 0 -> 0.5 days is the same visit; 0.5 -> 3 days is a gap of 2.5 days.
    assert out.examples == (GapExample("c", T0 + 3 * DAY, 2.5),)
    assert st.last_activity == T0 + 3 * DAY


def test_census_checks_fire_in_order_and_labels_come_at_the_horizon_end() -> None:
    p0 = profile(0)
    st, _ = step(None, StepInput("c", p0, act(0), score_at=T0), None, CONFIG)
    st, out = step(st, StepInput("c", p0, watermark=T0 + 40 * DAY), None, CONFIG)
    days = [7, 14, 21, 28, 35]
    assert out.idle_checks == 5
    assert [e.at for e in snapshots(out)] == [T0 + d * DAY for d in days]
    # Each snapshot sees the recency of its own event time, under the horizon in use.
    assert [e.features["recency_days"] for e in snapshots(out)] == [float(d) for d in days]
    assert {s.horizon_s for s in st.pending} | {e.snapshot.horizon_s for e in labels(out)} == {H}
    done = [(e.snapshot.scored_at, e.label, e.labelled_at) for e in labels(out)]
    assert done == [(T0 + 7 * DAY, 1, T0 + 7 * DAY + H)]
    assert [s.scored_at for s in st.pending] == [T0 + d * DAY for d in (14, 21, 28, 35)]
    assert out.next_due == T0 + 42 * DAY  # the next census check comes before 14 + 30 days
    # The census never stops while the profile lives: a check every week.
    st, out = step(st, StepInput("c", p0, watermark=T0 + 400 * DAY), None, CONFIG)
    assert out.idle_checks == len(range(42, 400, 7))
    assert all(e.label == 1 for e in labels(out))


def test_a_comeback_is_learned_as_stayed_at_the_horizon_end_with_its_spend() -> None:
    st, _ = step(None, StepInput("c", profile(0), act(0), score_at=T0), None, CONFIG)
    st, _ = step(st, StepInput("c", profile(0), watermark=T0 + 8 * DAY), None, CONFIG)
    [snap] = st.pending
    p1 = profile(0, 10)
    st, out = step(st, StepInput("c", p1, act(10, amount=25.0), score_at=T0 + 10 * DAY),
                   None, CONFIG)
    assert labels(out) == []  # known now, learned at t + H only
    st, out = step(st, StepInput("c", p1, watermark=T0 + 7 * DAY + H), None, CONFIG)
    [ex] = [e for e in labels(out) if e.snapshot.scored_at == snap.scored_at]
    assert (ex.label, ex.labelled_at, ex.snapshot.spend_after) == (0, T0 + 7 * DAY + H, 25.0)


def test_a_check_the_profile_has_moved_past_takes_the_snapshot_frozen_ahead() -> None:
    p0 = profile(0)
    st, _ = step(None, StepInput("c", p0, act(0), score_at=T0), None, CONFIG)
    assert st.ahead is not None
    assert st.ahead.scored_at == T0 + 7 * DAY
    # The check of day 7 fires only once activity of day 8 is already in the profile:
    # it takes what was frozen before, not a profile that knows the future.
    p1 = profile(0, 8)
    st, out = step(st, StepInput("c", p1, act(8), watermark=T0 + 9 * DAY), None, CONFIG)
    assert out.idle_checks == 1
    [snap] = snapshots(out)
    assert snap.features == features("c", T0 + 7 * DAY, p0)
    assert snap.features != features("c", T0 + 7 * DAY, p1)
    [pending] = st.pending
    assert pending.came_back  # day 8 falls in its horizon
    # Without a frozen snapshot the check is passed over rather than leak.
    bare = replace(st, last_snapshot=T0 + 7 * DAY, ahead=None, pending=())
    p2 = profile(0, 8, 15)
    st, out = step(bare, StepInput("c", p2, act(15), watermark=T0 + 16 * DAY), None, CONFIG)
    assert (out.idle_checks, snapshots(out), st.pending) == (1, [], ())


def test_the_horizon_in_use_is_the_bundles() -> None:
    model = bundle(horizon_days=90.0)
    st, _ = step(None, StepInput("c", profile(0), act(0), score_at=T0), model, CONFIG)
    st, out = step(st, StepInput("c", profile(0), watermark=T0 + 8 * DAY), model, CONFIG)
    assert [s.horizon_s for s in st.pending] == [90 * DAY]
    assert snapshots(out)[0].features["log_horizon_days"] == math.log(90.0)
    assert out.next_due == T0 + 14 * DAY


def test_the_pending_cap_drops_the_oldest_and_counts_it() -> None:
    config = replace(CONFIG, max_pending=2)
    p0 = profile(0)
    st, _ = step(None, StepInput("c", p0, act(0), score_at=T0), None, config)
    st, out = step(st, StepInput("c", p0, watermark=T0 + 29 * DAY), None, config)
    assert out.dropped_snapshots == 2  # days 7 and 14 made room for days 21 and 28
    assert [s.scored_at for s in st.pending] == [T0 + 21 * DAY, T0 + 28 * DAY]


def test_segments_move_with_hysteresis_and_one_alert_per_at_risk_episode() -> None:
    p0 = profile(-40, 0)  # a customer for 40 days: old enough to judge
    model = bundle()
    st, out = step(None, StepInput("c", p0, act(0), score_at=T0), model, CONFIG)
    [first] = out.segment_changes
    assert (first.change.previous_segment_id, first.change.segment_id) == (None, 0)
    assert (first.model_version, first.rfm_tier) == (7, "tier")
    assert out.alerts == ()
    st, out = step(st, StepInput("c", p0, watermark=T0 + 30 * DAY), model, CONFIG)
    # Recency 7: distances 8 and 14, stays. Recency 14: 7 < 0.85 * 15, moves.
    [moved] = out.segment_changes
    assert (moved.change.previous_segment_id, moved.change.segment_id) == (0, 1)
    assert moved.change.changed_at == T0 + 14 * DAY
    # Probability 21/30 = 0.7 alerts at day 21; day 28 is inside the 14-day cooldown.
    [alert] = out.alerts
    assert alert.decision.event_time == T0 + 21 * DAY
    assert alert.decision.churn_probability == 0.7
    assert (alert.segment_id, alert.customer_value) == (1, 0.0)
    assert alert.reasons == (("recency_days", 0.5, "21 days None"),)
    assert out.probabilities == tuple(d / 30.0 for d in (7, 14, 21, 28))
    assert (alert.value_tier, alert.lifecycle_stage) == ("high", "at_risk")
    assert alert.decision.value_at_risk == 70.0  # probability x expected value
    st, out = step(st, StepInput("c", p0, watermark=T0 + 36 * DAY), model, CONFIG)
    assert out.alerts == ()  # day 35: past the cooldown, but the same at-risk episode
    # The customer comes back on day 36, then drifts away again: a new episode.
    p1 = profile(-40, 0, 36)
    st, out = step(st, StepInput("c", p1, ((T0 + 36 * DAY, 0.0),), score_at=T0 + 36 * DAY),
                   model, CONFIG)
    assert out.alerts == ()
    st, out = step(st, StepInput("c", p1, watermark=T0 + 64 * DAY), model, CONFIG)
    # Census checks stay on the customer's weekly schedule (days 42, 49, 56, 63): recency
    # 20 on day 56 (p 0.67) is under the threshold, 27 on day 63 is over it.
    [again] = out.alerts
    assert again.decision.event_time == T0 + 63 * DAY
    assert again.decision.alert_id != alert.decision.alert_id
    assert again.decision.trigger == "entered_risk"


def test_no_alert_before_the_model_is_ready_and_no_decision_without_one() -> None:
    p0 = profile(0)
    config = replace(CONFIG, alert_policy=replace(CONFIG.alert_policy, min_labels=1))
    st, _ = step(None, StepInput("c", p0, act(0), score_at=T0), None, config)
    _, out = step(st, StepInput("c", p0, watermark=T0 + 30 * DAY),
                  bundle(churn_ready=False), config)
    assert out.alerts == ()
    assert len(out.segment_changes) == 2  # scoring goes on: first assignment, then a move
    _, cold = step(st, StepInput("c", p0, watermark=T0 + 30 * DAY), None, config)
    assert (cold.alerts, cold.segment_changes, cold.probabilities) == ((), (), ())
    assert cold.idle_checks == 4  # snapshots and labels do not wait for a model
    assert len(snapshots(cold)) == 4


def test_no_profile_means_labels_only() -> None:
    st, _ = step(None, StepInput("c", profile(0), act(0), score_at=T0), None, CONFIG)
    st, _ = step(st, StepInput("c", profile(0), watermark=T0 + 8 * DAY), None, CONFIG)
    st2, out = step(st, StepInput("c", None, watermark=T0 + 38 * DAY), bundle(), CONFIG)
    assert [e.label for e in labels(out)] == [1]
    assert (out.idle_checks, out.probabilities, st2.pending) == (0, (), ())


def test_the_step_is_value_like() -> None:
    p0 = profile(0, 2)
    frozen = copy.deepcopy(p0)
    st, _ = step(None, StepInput("c", profile(0), act(0), score_at=T0), bundle(), CONFIG)
    inp = StepInput("c", p0, act(2), score_at=T0 + 2 * DAY, watermark=T0 + 9 * DAY)
    first = step(st, inp, bundle(), CONFIG)
    assert step(st, inp, bundle(), CONFIG) == first  # same input, same output
    assert p0 == frozen  # the profile is not touched
    assert st == step(None, StepInput("c", profile(0), act(0), score_at=T0), bundle(),
                      CONFIG)[0]


def test_many_customers_at_once_decide_as_one_at_a_time() -> None:
    items = [(None, StepInput(f"c{i}", profile(0, i, cid=f"c{i}"), act(i),
                              score_at=T0 + i * DAY, watermark=T0 + 60 * DAY))
             for i in range(5)]
    together = step_many(items, bundle(), CONFIG)
    apart = [step(state, inp, bundle(), CONFIG) for state, inp in items]
    assert together == apart


def test_an_owner_and_the_spread_flag_pass_through() -> None:
    state = ScoringState(owner=3, spread=True)
    st, _ = step(state, StepInput("c", profile(0), act(0), score_at=T0), None, CONFIG)
    assert (st.owner, st.spread) == (3, True)
    assert math.isinf(StepInput("c", None).watermark)


def test_history_updates_state_but_publishes_nothing() -> None:
    """With a fake wall clock: scorings older than the lag are history, newer ones news."""
    config = replace(CONFIG, history_lag_s=2 * DAY)
    p0 = profile(-40, 0)
    now = T0 + 100 * DAY  # the whole replayed month is long past
    st, out = step(None, StepInput("c", p0, ((T0, 0.0),), score_at=T0, now=now), bundle(), config)
    st, out2 = step(st, StepInput("c", p0, watermark=T0 + 30 * DAY, now=now), bundle(), config)
    assert (out.segment_changes, out.stage_changes, out.alerts) == ((), (), ())
    assert (out2.segment_changes, out2.stage_changes, out2.alerts) == ((), (), ())
    # Two first assignments (segment, stage), then a move, a stage change and an alert.
    assert out.history_suppressed + out2.history_suppressed >= 5
    assert len(labels(out2)) + len(out2.examples) > 0  # the models still learn from it
    assert st.alert is not None
    assert st.alert.last_alert_at == T0 + 21 * DAY  # as if alerted: no stale alert later
    # The same steps without a clock (the in-memory replay) publish all of it.
    _, live = step(None, StepInput("c", p0, ((T0, 0.0),), score_at=T0), bundle(), config)
    assert len(live.segment_changes) == 1
    assert live.history_suppressed == 0
    # News (within the lag of the clock) is published.
    _, recent = step(None, StepInput("c", p0, ((T0, 0.0),), score_at=T0, now=T0 + DAY), bundle(),
                     config)
    assert len(recent.segment_changes) == 1
    assert [c.change.stage for c in recent.stage_changes] == ["active"]


def test_lifecycle_stages_follow_the_customer() -> None:
    p0 = profile(-40, 0)
    st, out = step(None, StepInput("c", p0, ((T0, 0.0),), score_at=T0), bundle(), CONFIG)
    assert [c.change.stage for c in out.stage_changes] == ["active"]
    st, out = step(st, StepInput("c", p0, watermark=T0 + 45 * DAY), bundle(), CONFIG)
    # At risk from day 21 (p = 0.7), lapsed once a horizon (30 days) passed with no activity.
    assert [(c.change.previous, c.change.stage, c.change.changed_at) for c in out.stage_changes
            ] == [("active", "at_risk", T0 + 21 * DAY), ("at_risk", "lapsed", T0 + 35 * DAY)]
    p1 = profile(-40, 0, 50)
    st, out = step(st, StepInput("c", p1, ((T0 + 50 * DAY, 0.0),), score_at=T0 + 50 * DAY),
                   bundle(), CONFIG)
    assert [c.change.stage for c in out.stage_changes] == ["won_back"]
    assert out.stage_changes[0].value_tier == "high"
    # Won back lasts one horizon from the comeback; an order after it makes them active.
    p2 = profile(-40, 0, 50, 70, 82)
    calm = bundle(churn=lambda days: 0.1)
    st, out = step(st, StepInput("c", p2, ((T0 + 70 * DAY, 0.0),), score_at=T0 + 70 * DAY), calm,
                   CONFIG)
    assert out.stage_changes == ()
    _, out = step(st, StepInput("c", p2, ((T0 + 82 * DAY, 0.0),), score_at=T0 + 82 * DAY), calm,
                  CONFIG)
    assert [(c.change.previous, c.change.stage) for c in out.stage_changes] == [
        ("won_back", "active")]


def test_a_customer_too_new_to_judge_is_new_and_never_alerted() -> None:
    p0 = profile(0)  # first seen now, no order
    st, out = step(None, StepInput("c", p0, ((T0, 0.0),), score_at=T0), bundle(), CONFIG)
    assert [c.change.stage for c in out.stage_changes] == ["new"]
    _, out = step(st, StepInput("c", p0, watermark=T0 + 28 * DAY), bundle(), CONFIG)
    assert out.alerts == ()
    assert max(out.probabilities) >= 0.9
