"""Properties of the bounded dedupe and session rings (``streamproc.core.seen``).

The guarantee that replaces per-event dedupe keys: whatever the arrival order,
duplicates and ring size, no event id is ever applied twice; a first arrival is
only refused (as late) when it is older than everything the ring remembers; and
with a ring large enough for the stream nothing is refused at all. The link ring drops
only links no count depends on, or, when full, costs a conversion and says so.
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


# ------------------------------------------------------------ links

CART, ORDER = seen.SESSION_CART, seen.SESSION_ORDER
DAY = 86_400


def _touch(ring: bytes, session: str, flag: int, ts: float, *, clicks: float | None,
           orders: float | None, capacity: int = 2) -> tuple[int | None, bytes, int]:
    # Topic positions in seconds, as the id rings' newest records give them (ms).
    return seen.touch_link(ring, seen.digest(session), flag, ts, now=0, ttl=10**9,
                           clicks_ms=None if clicks is None else int(clicks * 1000),
                           orders_ms=None if orders is None else int(orders * 1000),
                           window=DAY, capacity=capacity)


def _sessions(ring: bytes) -> list[tuple[bytes, int]]:
    return [(ring[at:at + 8], ring[at + 8]) for at in range(0, len(ring), seen.LINK_RECORD)]


def test_a_full_ring_of_orders_drops_the_older_cart_not_an_order() -> None:
    # The purchases ran ahead: two orders wait for their carts; an older cart comes.
    ring = b""
    for n, ts in enumerate((1000.0, 2000.0)):
        before, ring, dropped = _touch(ring, f"s-{n + 1}", ORDER, ts, clicks=None, orders=ts)
        assert (before, dropped) == (0, 0)
    before, ring, dropped = _touch(ring, "s-0", CART, 500.0, clicks=500.0, orders=2000.0)
    # Not linked (its order was given up before), and the orders still wait.
    assert (before, dropped) == (None, 1)
    assert [flags for _, flags in _sessions(ring)] == [ORDER, ORDER]
    before, ring, _ = _touch(ring, "s-1", CART, 1100.0, clicks=1100.0, orders=2000.0)
    assert before == ORDER  # converted: the caller counts it
    assert _sessions(ring)[0] == (seen.digest("s-1"), ORDER | CART)


def test_a_full_ring_refuses_an_order_rather_than_forget_a_recent_one() -> None:
    ring = b""
    for n in range(2):
        _, ring, _ = _touch(ring, f"s-{n}", ORDER, 1000.0 + n, clicks=None, orders=1000.0 + n)
    # Both orders are within a day: their sessions may order again, so neither can go.
    before, ring2, dropped = _touch(ring, "s-2", ORDER, 1002.0, clicks=None, orders=1002.0)
    assert (before, ring2, dropped) == (None, ring, 1)
    # A day later the oldest order's session cannot order again: it makes room.
    later = 1000.0 + DAY + 1
    before, ring, dropped = _touch(ring, "s-3", ORDER, later, clicks=None, orders=later)
    assert (before, dropped) == (0, 1)
    assert [key for key, _ in _sessions(ring)] == [seen.digest("s-1"), seen.digest("s-3")]


def test_links_go_as_soon_as_no_count_depends_on_them() -> None:
    ring = b""
    _, ring, _ = _touch(ring, "cart", CART, 1000.0, clicks=1000.0, orders=None, capacity=8)
    _, ring, _ = _touch(ring, "order", ORDER, 1000.0, clicks=1000.0, orders=1000.0, capacity=8)
    _, ring, _ = _touch(ring, "both", CART, 1000.0, clicks=1000.0, orders=1000.0, capacity=8)
    _, ring, _ = _touch(ring, "both", ORDER, 1000.0, clicks=1000.0, orders=1000.0, capacity=8)
    assert len(_sessions(ring)) == 3
    past = 1000.0 + DAY + 1
    # The clickstream moved a day on: the order-only link's cart cannot come, but its
    # session may still order; the others wait for the purchases.
    _, ring, _ = _touch(ring, "x", CART, past, clicks=past, orders=1000.0, capacity=8)
    assert len(_sessions(ring)) == 4
    # The purchases moved a day on: no order can follow, every old link goes.
    _, ring, _ = _touch(ring, "y", ORDER, past, clicks=past, orders=past, capacity=8)
    assert [key for key, _ in _sessions(ring)] == [seen.digest("x"), seen.digest("y")]
