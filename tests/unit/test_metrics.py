"""observe_many writes exactly what one observe() per value writes."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from streamproc.metrics import EVENT_AGE_BUCKETS, observe_many


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    one, many = CollectorRegistry(), CollectorRegistry()
    return (one, Histogram("age", "a", buckets=EVENT_AGE_BUCKETS, registry=one),
            many, Histogram("age", "a", buckets=EVENT_AGE_BUCKETS, registry=many))


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value
            for metric in registry.collect() for s in metric.samples
            if not s.name.endswith("_created")}


@given(st.lists(st.one_of(st.floats(min_value=-10, max_value=1e6, allow_nan=False),
                          st.sampled_from([*EVENT_AGE_BUCKETS, 0.0, math.inf])),
                max_size=200))
def test_observe_many_equals_one_observe_per_value(values: list[float]) -> None:
    reg_one, one, reg_many, many = _pair()
    for v in values:
        one.observe(v)
    observe_many(many, values)
    a, b = _samples(reg_one), _samples(reg_many)
    assert a.keys() == b.keys()
    for key in a:
        assert math.isclose(a[key], b[key], rel_tol=1e-9, abs_tol=1e-9), key


def test_nan_lands_in_no_bucket_as_with_observe() -> None:
    reg_one, one, reg_many, many = _pair()
    one.observe(math.nan)
    one.observe(0.07)
    observe_many(many, [math.nan, 0.07])
    a, b = _samples(reg_one), _samples(reg_many)
    assert {k: v for k, v in a.items() if k[0] != "age_sum"} == \
        {k: v for k, v in b.items() if k[0] != "age_sum"}
    assert a[("age_count", "")] == 1.0


def test_nothing_observed_leaves_the_histogram_untouched() -> None:
    reg_one, _, reg_many, many = _pair()
    observe_many(many, [])
    assert _samples(reg_one) == _samples(reg_many)
