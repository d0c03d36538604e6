"""Properties of the bounded dedupe and session rings (``streamproc.core.seen``).

The guarantee that replaces per-event dedupe keys: whatever the arrival order,
duplicates and ring size, no event id is ever applied twice; a first arrival is
only refused (as late) when it is older than everything the ring remembers; and
with a ring large enough for the stream nothing is refused at all.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.core import seen
from streamproc.core.features import FeatureConfig, InMemoryProfiles, ProfileView
from tests.unit.test_features import lane_of, ops_of, streams, with_duplicates

FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# Event times: a few distinct milliseconds so ties happen, spread so order matters.
times = st.integers(0, 40).map(lambda n: 1_767_225_600.0 + n * 0.25)
arrivals = st.lists(st.tuples(st.integers(0, 25), times), min_size=1, max_size=80)


def _run(events: list[tuple[int, float]], capacity: int) -> list[int]:
    ring, floor, out = b"", None, []
    known: dict[int, float] = {}
    for ident, ts in events:
        ts = known.setdefault(ident, ts)  # a duplicate carries its original's event time
        status, ring, floor = seen.admit_event(ring, floor, seen.digest(f"e-{ident}"), ts,
                                               capacity)
        out.append(status)
        assert len(ring) <= capacity * seen.ID_RECORD
        assert len(ring) % seen.ID_RECORD == 0
    return out


@FAST
@given(arrivals, st.integers(1, 8))
def test_no_event_is_ever_applied_twice(events: list[tuple[int, float]], capacity: int) -> None:
    statuses = _run(events, capacity)
    applied = Counter(ident for (ident, _), s in zip(events, statuses, strict=True)
                      if s == seen.APPLIED)
    assert all(n == 1 for n in applied.values()), applied


@FAST
@given(arrivals, st.integers(1, 8))
def test_a_first_arrival_is_never_called_a_duplicate(events: list[tuple[int, float]],
                                                    capacity: int) -> None:
    statuses = _run(events, capacity)
    first: set[int] = set()
    for (ident, _), status in zip(events, statuses, strict=True):
        if ident not in first:
            assert status != seen.DUPLICATE
        first.add(ident)


@FAST
@given(arrivals)
def test_a_ring_as_large_as_the_stream_refuses_nothing(events: list[tuple[int, float]]) -> None:
    statuses = _run(events, capacity=len(events))
    firsts = len({ident for ident, _ in events})
    assert statuses.count(seen.APPLIED) == firsts
    assert seen.LATE not in statuses


@FAST
@given(st.lists(times, min_size=1, max_size=80, unique=True), st.integers(1, 8))
def test_in_order_arrivals_are_never_late(stamps: list[float], capacity: int) -> None:
    events = list(enumerate(sorted(stamps)))
    assert set(_run(events, capacity)) == {seen.APPLIED}


def test_late_means_older_than_every_remembered_id() -> None:
    ring, floor = b"", None
    for n in range(3):
        _, ring, floor = seen.admit_event(ring, floor, seen.digest(f"e{n}"), 100.0 + n, 2)
    assert floor == 100_000  # e0 (t=100 s) was evicted
    assert seen.admit_event(ring, floor, seen.digest("new"), 100.0, 2)[0] == seen.LATE
    assert seen.admit_event(ring, floor, seen.digest("e0"), 100.0, 2)[0] == seen.LATE
    assert seen.admit_event(ring, floor, seen.digest("e2"), 102.0, 2)[0] == seen.DUPLICATE
    assert seen.admit_event(ring, floor, seen.digest("new"), 100.001, 2)[0] == seen.APPLIED


def test_sessions_ring_keeps_the_most_recently_touched() -> None:
    ring = b""
    a, b, c = (seen.digest(s) for s in "abc")
    before, ring = seen.touch_session(ring, a, seen.SESSION_SEEN, 2)
    assert before == 0
    _, ring = seen.touch_session(ring, b, seen.SESSION_SEEN, 2)
    before, ring = seen.touch_session(ring, a, seen.SESSION_CART, 2)  # a is the newest now
    assert before == seen.SESSION_SEEN
    _, ring = seen.touch_session(ring, c, seen.SESSION_SEEN, 2)  # evicts b, not a
    assert seen.find_record(ring, b, seen.SESSION_RECORD) < 0
    before, _ = seen.touch_session(ring, a, seen.SESSION_ORDER, 2)
    assert before == seen.SESSION_SEEN | seen.SESSION_CART


def test_record_lookup_respects_record_boundaries() -> None:
    # A key that appears straddling two records must not count as present.
    ring = b"\x01" * 7 + b"\x02" + b"\x00" * 6 + b"\x03" * 14
    assert seen.find_record(ring, b"\x02" + b"\x00" * 6 + b"\x03", seen.ID_RECORD) == -1
    assert seen.find_record(ring, b"\x03" * 8, seen.ID_RECORD) == 14


@FAST
@given(st.data(), st.integers(1, 6), st.integers(1, 4))
def test_small_rings_never_overcount_a_profile(data: st.DataObject, capacity: int,
                                               sessions: int) -> None:
    # Whatever the rings forget, counters never exceed those of the deduplicated stream.
    stream = data.draw(streams())
    noisy = data.draw(st.permutations(data.draw(with_duplicates(stream))))
    small = InMemoryProfiles.empty(FeatureConfig(dedupe_events=capacity,
                                                 dedupe_purchases=capacity, sessions=sessions))
    exact = InMemoryProfiles.empty(FeatureConfig(dedupe_events=1000, dedupe_purchases=1000,
                                                 sessions=1000))
    for value in noisy:
        ops, ts = ops_of(value)
        small.apply(value["customer_id"], value["event_id"], ops, ts, lane_of(value))
        exact.apply(value["customer_id"], value["event_id"], ops, ts, lane_of(value))
    for cid, state in small.states.items():
        ref = exact.states[cid]
        for code in ("ev", "o", "it", "rf", "pv", "vv", "sr", "ac", "rc"):
            assert state.get(code, 0.0) <= ref.get(code, 0.0), code
        view = ProfileView(cid, 0.0, state)
        assert view.get("ev") <= len({v["event_id"] for v in noisy if v["customer_id"] == cid})
