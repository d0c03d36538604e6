"""Properties of the bounded dedupe and session rings (``streamproc.core.seen``).

The guarantee that replaces per-event dedupe keys: whatever the arrival order,
duplicates and ring size, no event id is ever applied twice; a first arrival is
only refused (as late) when it is older than everything the ring remembers; and
with a ring large enough for the stream nothing is refused at all. Rings of
earlier versions (8-byte digests, 14-byte records) convert without forgetting
anything, also when an older worker wrote to an already converted profile.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.core import seen
from streamproc.core.features import (
    LANE_CLICKSTREAM,
    LANE_PURCHASES,
    FeatureConfig,
    InMemoryProfiles,
    ProfileView,
    upgrade_lanes,
)
from tests.unit.test_features import (
    lane_of,
    old_admit,
    ops_of,
    streams,
    to_legacy,
    with_duplicates,
)

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
        status, ring, floor = seen.admit_event(ring, floor, seen.event_digest(f"e-{ident}"),
                                               ts, capacity)
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
        _, ring, floor = seen.admit_event(ring, floor, seen.event_digest(f"e{n}"), 100.0 + n,
                                          2)
    assert floor == 100_000  # e0 (t=100 s) was evicted
    assert len(ring) == 2 * 12
    assert seen.admit_event(ring, floor, seen.event_digest("new"), 100.0, 2)[0] == seen.LATE
    assert seen.admit_event(ring, floor, seen.event_digest("e0"), 100.0, 2)[0] == seen.LATE
    assert seen.admit_event(ring, floor, seen.event_digest("e2"), 102.0, 2)[0] == seen.DUPLICATE
    assert seen.admit_event(ring, floor, seen.event_digest("new"), 100.001, 2)[0] == seen.APPLIED


def test_an_event_digest_is_the_first_six_bytes_of_the_digest() -> None:
    for text in ("e-1", "", "spörts", "\ud800"):  # a lone surrogate too, as digest allows
        assert seen.event_digest(text) == seen.digest(text)[:6]
        assert len(seen.event_digest(text)) == seen.ID_DIGEST == 6
    assert seen.ID_RECORD == 12


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
    ring = b"\x01" * 5 + b"\x02" + b"\x00" * 6 + b"\x03" * 12
    assert seen.find_record(ring, b"\x02" + b"\x00" * 4 + b"\x03", seen.ID_RECORD) == -1
    assert seen.find_record(ring, b"\x00" * 5 + b"\x03", seen.ID_RECORD) == -1
    assert seen.find_record(ring, b"\x03" * 6, seen.ID_RECORD) == 12


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


# ------------------------------------------------------------ old rings


def _old_run(events: list[tuple[int, float]], capacity: int
             ) -> tuple[list[int], bytes, int | None, dict[int, float]]:
    ring, floor, out = b"", None, []
    known: dict[int, float] = {}
    for ident, ts in events:
        ts = known.setdefault(ident, ts)
        status, ring, floor = old_admit(ring, floor, f"e-{ident}", ts, capacity)
        out.append(status)
    return out, ring, floor, known


@FAST
@given(arrivals, st.integers(1, 8), st.integers(0, 80))
def test_an_old_ring_converts_exactly_and_decides_as_before(
        events: list[tuple[int, float]], capacity: int, cut: int) -> None:
    # Up to `cut` an earlier version decides; then the ring is converted and the new code
    # decides the rest: every decision is the one a never-converted ring would make.
    statuses, old, old_floor, known = _old_run(events[:cut], capacity)
    ring, floor = seen.upgrade_id_ring(old, old_floor, b"", None, capacity)
    assert ring == b"".join(old[at:at + 6] + old[at + 8:at + 14]
                            for at in range(0, len(old), 14))
    assert floor == old_floor
    for ident, ts in events[cut:]:
        ts = known.setdefault(ident, ts)
        status, ring, floor = seen.admit_event(ring, floor, seen.event_digest(f"e-{ident}"),
                                               ts, capacity)
        statuses.append(status)
    assert statuses == _run(events, capacity)


@FAST
@given(arrivals, st.lists(st.booleans(), min_size=1, max_size=8), st.integers(1, 8))
def test_a_rolling_upgrade_never_lets_the_new_code_count_an_event_twice(
        events: list[tuple[int, float]], turns: list[bool], capacity: int) -> None:
    # Older and newer workers take turns on one customer. An older worker sees only the
    # old ring (a newer one removed it: it starts afresh), so it may count again what a
    # newer one counted: the stated limit of a rolling upgrade. A newer worker folds the
    # old ring in before deciding, so it never counts an event counted before by either.
    state: dict[str, Any] = {}
    lane, config = LANE_CLICKSTREAM, FeatureConfig(dedupe_events=capacity)
    counted: set[int] = set()
    known: dict[int, float] = {}
    step = max(1, len(events) // len(turns))
    for n, (ident, ts) in enumerate(events):
        ts = known.setdefault(ident, ts)
        if turns[min(n // step, len(turns) - 1)]:
            status, state["ic"], floor = old_admit(state.get("ic", b""), state.get("icf"),
                                                   f"e-{ident}", ts, capacity)
            if floor is not None:
                state["icf"] = floor
        else:
            upgrade_lanes(state, config)
            assert not {"ic", "icf"} & state.keys()
            status, state[lane], floor = seen.admit_event(
                state.get(lane, b""), state.get(lane + "f"), seen.event_digest(f"e-{ident}"),
                ts, capacity)
            if floor is not None:
                state[lane + "f"] = floor
            assert status != seen.APPLIED or ident not in counted, ident
        if status == seen.APPLIED:
            counted.add(ident)
        assert len(state.get(lane, b"")) <= capacity * seen.ID_RECORD


def test_the_twin_converts_old_rings_on_any_update() -> None:
    config = FeatureConfig(dedupe_events=3, dedupe_purchases=2)
    clicks = [(f"c-{n}", 100.0 + n) for n in range(5)]
    orders = [(f"o-{n}", 100.5 + n) for n in range(3)]
    applied = [("c-1", eid, ts, LANE_CLICKSTREAM) for eid, ts in clicks]
    applied += [("c-1", eid, ts, LANE_PURCHASES) for eid, ts in orders]
    [old] = to_legacy({"c-1": {"ev": 8.0}}, applied, config).values()
    assert set(old) == {"ev", "ic", "icf", "ip", "ipf"}
    assert (len(old["ic"]), len(old["ip"])) == (3 * 14, 2 * 14)
    assert (old["icf"], old["ipf"]) == (101_000, 100_500)
    profiles = InMemoryProfiles.empty(config)
    profiles.states["c-1"] = dict(old)
    # A duplicate changes no counter, yet the profile is converted.
    assert profiles.apply("c-1", "c-4", [], 104.0) == seen.DUPLICATE
    state = profiles.states["c-1"]
    assert set(state) == {"ev", LANE_CLICKSTREAM, "jcf", LANE_PURCHASES, "jpf"}
    assert state[LANE_CLICKSTREAM] == b"".join(
        seen.event_digest(eid) + seen.record_ms(ts).to_bytes(6, "big") for eid, ts in clicks[2:])
    assert (state["jcf"], state["jpf"]) == (old["icf"], old["ipf"])
    assert profiles.apply("c-1", "o-2", [], 102.5, LANE_PURCHASES) == seen.DUPLICATE
    assert profiles.apply("c-1", "c-1", [], 101.0) == seen.LATE  # at the carried floor
    assert profiles.apply("c-1", "c-9", [], 101.001) == seen.APPLIED
    assert not upgrade_lanes(profiles.states["c-1"], config)  # nothing left to convert
