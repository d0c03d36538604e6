"""Pure helpers of the load tools: percentiles, pacing, rates, profiles and the result shape."""

from __future__ import annotations

import math

import orjson
import pytest

from load_tests.flame import categorize, parse, summarize
from load_tests.stats import (
    RESULT_SCHEMA,
    Measured,
    Pacer,
    cpu_seconds,
    first_to_last_rate,
    last_change,
    latency_summary,
    metric_sums,
    next_poll_s,
    percentile,
    ratio,
    steady_rate,
    target_row,
    validate_result,
)
from load_tests.traffic import prepare_messages, probe_record


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- percentiles ------------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy_linear() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 25) == pytest.approx(1.75)
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)


def test_percentile_is_order_independent_and_single_value() -> None:
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("q", [-1.0, 100.5])
def test_percentile_rejects_bad_q(q: float) -> None:
    with pytest.raises(ValueError, match="q must"):
        percentile([1.0], q)


def test_percentile_of_nothing_fails() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_latency_summary_in_ms() -> None:
    s = latency_summary([0.010, 0.020, 0.030, 0.040, 0.100])
    assert s["count"] == 5
    assert s["p50_ms"] == 30.0
    assert s["max_ms"] == 100.0
    assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert latency_summary([]) == {"count": 0}


# -- pacing -----------------------------------------------------------------------------------


def test_pacer_flat_out_never_waits() -> None:
    pacer = Pacer(None, FakeClock())
    assert [pacer.delay(10) for _ in range(5)] == [0.0] * 5
    assert pacer.sent == 50


def test_pacer_spaces_events_by_rate() -> None:
    clock = FakeClock()
    pacer = Pacer(100.0, clock)  # one event per 10 ms
    assert pacer.delay(1) == 0.0  # first event is due at the start
    assert pacer.delay(1) == pytest.approx(0.01)  # sender did not sleep: 10 ms early
    clock.t += 0.01
    assert pacer.delay(1) == pytest.approx(0.01)  # event 3 due at +20 ms, now is +10 ms
    clock.t += 0.01
    assert pacer.delay(5) == pytest.approx(0.01)  # a 5-event envelope due at +30 ms
    clock.t += 0.01
    # The envelope counted 5 events: the next is due at +80 ms.
    assert pacer.delay(1) == pytest.approx(0.05)


def test_pacer_makes_up_short_oversleeps_without_drift() -> None:
    clock = FakeClock()
    pacer = Pacer(1000.0, clock)
    for _ in range(1000):
        wait = pacer.delay(1)
        clock.t += wait + 0.0002  # every sleep overshoots by 0.2 ms
    # 1000 events at 1000/s take ~1 s, not 1.2 s: overshoot is made up, not accumulated.
    assert clock.t - 100.0 == pytest.approx(1.0, abs=0.01)


def test_pacer_drops_backlog_after_a_long_stall() -> None:
    clock = FakeClock()
    pacer = Pacer(100.0, clock, max_backlog_s=1.0)
    pacer.delay(1)
    clock.t += 5.0  # producer stalled 5 s: 500 events behind
    assert pacer.delay(1) == 0.0
    # Schedule restarted at now, so the next event waits its normal 10 ms, no 500-event burst.
    assert pacer.delay(1) == pytest.approx(0.01)


def test_pacer_rejects_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="rate"):
        Pacer(0.0, FakeClock())


# -- rates from counter samples -----------------------------------------------------------------


def test_first_to_last_rate_ignores_work_before_first_sample() -> None:
    samples = [(10.0, 300.0), (11.0, 1300.0), (12.0, 2300.0), (12.1, 2300.0)]
    # 2000 events between t=10 and t=12 (the 300 before the first sample are not timed).
    assert first_to_last_rate(samples) == pytest.approx(1000.0)


def test_first_to_last_rate_needs_two_samples() -> None:
    assert first_to_last_rate([(1.0, 5.0)]) is None
    assert first_to_last_rate([]) is None


def test_steady_rate_cuts_ramp_and_tail() -> None:
    # Slow 1 s ramp (100 events), then 1000 events/s, then a slow tail.
    samples = [(0.0, 0.0), (1.0, 100.0), (2.0, 1100.0), (3.0, 2100.0), (5.0, 2200.0)]
    assert steady_rate(samples) == pytest.approx(1000.0)
    assert steady_rate([(0.0, 0.0)]) is None


def test_last_change_finds_when_a_counter_stopped_moving() -> None:
    assert last_change([(1.0, 5.0), (2.0, 9.0), (3.0, 9.0), (4.0, 9.0)]) == 2.0
    assert last_change([(1.0, 5.0), (2.0, 5.0)]) == 1.0  # never moved: since the first sample
    assert last_change([(1.0, 5.0)]) == 1.0


def test_ratio_and_measured() -> None:
    assert ratio(3.0, 4.0) == 0.75
    assert ratio(None, 4.0) is None
    assert ratio(3.0, 0.0) is None
    m = Measured()
    for v in (3.0, None, 1.0, 2.0):
        m.add(v)
    assert m.to_dict() == {"runs": [3.0, None, 1.0, 2.0], "median": 2.0}


# -- parsing what the processes report ------------------------------------------------------


def test_metric_sums_adds_every_labelled_sample() -> None:
    text = "\n".join([
        "# HELP streamproc_events_total Input events",
        "# TYPE streamproc_events_total counter",
        'streamproc_events_total{topic="c",event_type="page_view",outcome="applied"} 10.0',
        'streamproc_events_total{topic="c",event_type="search",outcome="duplicate"} 2.0',
        "streamproc_events_created 1.7e9",
        "streamproc_model_version 3.0",
    ])
    sums = metric_sums(text, ["streamproc_events_total", "streamproc_model_version", "nope"])
    assert sums == {"streamproc_events_total": 12.0, "streamproc_model_version": 3.0,
                    "nope": 0.0}


def test_cpu_seconds_handles_spaces_in_command_name() -> None:
    stat = "1234 (python -m x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100"
    assert cpu_seconds(stat, 100.0) == pytest.approx(3.0)


def test_flame_categorizes_by_leaf_most_frame() -> None:
    lines = [
        "main (a.py:1);IngestPipeline.process (streamproc/runtime/pipeline.py:190);"
        "BaseModel.model_validate (pydantic/main.py:792) 3",
        "main (a.py:1);IngestPipeline._count (streamproc/runtime/pipeline.py:239);"
        "MetricWrapperBase.labels (prometheus_client/metrics.py:203) 1",
        "main (a.py:1);EpollSelector.select (selectors.py:468) 1",
        "not a sample line",
    ]
    stacks = parse(lines)
    assert len(stacks) == 3
    assert categorize(stacks[0][0]) == "pydantic validation"
    cats, incl, total = summarize(stacks)
    assert total == 5
    assert cats["pydantic validation"] == pytest.approx(0.6)
    assert cats["prometheus metrics (.labels/.inc/.observe)"] == pytest.approx(0.2)
    assert incl["IngestPipeline.process"] == pytest.approx(0.6)
    assert incl["metric .labels()"] == pytest.approx(0.2)


# -- traffic shapes -----------------------------------------------------------------------------


def test_prepare_messages_counts_events_and_keys_by_customer() -> None:
    single = prepare_messages(20, 300, 1, seed=3, topics={"clickstream": "cs"})
    assert sum(n for *_, n in single) == 300
    assert all(n == 1 for *_, n in single)
    for topic, key, value, _ in single:
        doc = orjson.loads(value)
        assert key.decode() == doc["customer_id"]
        assert topic in ("cs", "purchases")
    batched = prepare_messages(20, 300, 10, seed=3)
    assert sum(n for *_, n in batched) == 300
    assert max(n for *_, n in batched) <= 10
    assert len(batched) < len(single)
    assert prepare_messages(20, 300, 10, seed=3) == batched  # seeded: same bytes


def test_probe_records_are_invalid_or_new_customer_events() -> None:
    topic, key, value, n = probe_record("cs", "probe-x-0")
    doc = orjson.loads(value)
    assert (topic, key, n) == ("cs", b"c-probe", 1)
    assert doc["event_type"] == "latency_probe"
    _, key, value, _ = probe_record("cs", "probe-x-1", "c-probe-x-1", valid=True)
    doc = orjson.loads(value)
    assert key == b"c-probe-x-1"
    assert doc["event_type"] == "page_view"
    assert doc["customer_id"] == "c-probe-x-1"


# -- result document ------------------------------------------------------------------------------


def _doc() -> dict:
    return {
        "schema": RESULT_SCHEMA, "name": "t", "mode": "quick", "started_at": "x",
        "host": {}, "config": {},
        "throughput": {"1": {"events": 10, "messages": 10,
                             "pipeline_events_per_s": {"runs": [1.0], "median": 1.0},
                             "raw_events_per_s": {"runs": [2.0], "median": 2.0}}},
        "latency": {"levels": [{"target_events_per_s": 500, "achieved_events_per_s": 499.0,
                                "probes": 10}]},
        "memory": {}, "scaling": {},
        "targets": [target_row("x", ">= 1", 2.0, True)],
    }


def test_validate_result_accepts_a_well_formed_document() -> None:
    doc = _doc()
    assert validate_result(doc) == []
    assert orjson.loads(orjson.dumps(doc)) == doc  # JSON round trip


def test_validate_result_names_what_is_missing() -> None:
    doc = _doc()
    del doc["memory"]
    del doc["throughput"]["1"]["raw_events_per_s"]
    doc["targets"].append({"target": "y"})
    doc["schema"] = "other"
    problems = validate_result(doc)
    assert any("memory" in p for p in problems)
    assert any("raw_events_per_s" in p for p in problems)
    assert any("target row" in p for p in problems)
    assert any("schema" in p for p in problems)


def test_target_row_without_a_measurement_is_not_met_or_failed() -> None:
    assert target_row("x", "<= 1", None, False)["met"] is None
    assert math.isclose(target_row("x", "<= 1", 0.5, True)["measured"], 0.5)


def test_polling_slows_down_while_the_end_is_far_and_speeds_up_near_it() -> None:
    assert next_poll_s([], 1000, fast=0.1, slow=1.0) == 0.1
    # 100 events/s with 900 to go: wait the slow interval.
    assert next_poll_s([(0.0, 0.0), (1.0, 100.0)], 1000, fast=0.1, slow=1.0) == 1.0
    # 100 events to go at 900/s: half the remaining time, never below the fast interval.
    assert math.isclose(next_poll_s([(0.0, 0.0), (1.0, 900.0)], 1000, fast=0.01, slow=1.0),
                        100 / 900 / 2)
    assert next_poll_s([(0.0, 0.0), (1.0, 999.0)], 1000, fast=0.1, slow=1.0) == 0.1
    # No progress since the last sample (a stall or a rebalance): keep looking closely.
    assert next_poll_s([(0.0, 5.0), (1.0, 5.0)], 1000, fast=0.1, slow=1.0) == 0.1
