"""Property tests of the pure feature update (event -> ops -> ``apply_ops``).

Events are small generated dicts (every clickstream type, orders and refunds) for
a few customers, sessions and categories over ~60 days; ops are built with
``clickstream_ops``/``purchase_ops`` on ``event_namespace(...)`` and applied with
``InMemoryProfiles``. The strategies here are reused by the Redis conformance test.

Order-dependent fields, by design (not checked by the order-insensitivity property):

* ``ls``/``ls@`` (last session): ``ls@`` is a max and commutes, but ``ls`` is the
  session id at that max time, so two session events with the same timestamp and
  different session ids are resolved by arrival order.
* Orders without a session id are attributed to the last session *as seen at
  arrival*, so ``os``/``cc`` depend on order unless every order carries its
  session id (the order-insensitivity streams give every order one).
* Session and cart/order counts (``se``, ``cs``, ``os``, ``cc``) with bounded rings:
  they are exact for any interleaving of the two topics as long as each topic
  arrives in event-time order per customer and a session lasts less than the link
  window (checked below); under an arbitrary shuffle only with unbounded rings.
* Category weights ``k`` once more than ``max_categories`` categories are seen:
  the space-saving top-k eviction depends on arrival order.
* ``rv``/``ra`` and the decayed counters are float sums: they commute
  mathematically but not bit-for-bit, so they are compared with ``math.isclose``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamproc.core import seen
from streamproc.core.features import (
    DECAY_TAUS,
    LANE_CLICKSTREAM,
    LANE_PURCHASES,
    LEGACY_LANES,
    FeatureConfig,
    InMemoryProfiles,
    Op,
    ProfileView,
    clickstream_ops,
    purchase_ops,
    upgrade_lanes,
)
from streamproc.core.replay import event_namespace, event_time

CUSTOMERS = ("c-1", "c-2", "c-3")
SESSIONS = ("s-1", "s-2", "s-3", "s-4", "s-5")
# Mixed case and non-ASCII on purpose: the top-k tie-break must order names byte-wise in
# Lua as Python does, whatever the Redis server's locale (strcoll would not).
CATEGORIES = ("books", "Books", "fashion", "garden", "home", "Home", "sports", "spörts")
CLICK_TYPES = (
    "session_start",
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "session_end",
)
START = datetime(2026, 1, 1, tzinfo=UTC)
SPAN_MS = 60 * 86_400_000

#: Counters and min/max times: exact under any order.
EXACT_FIELDS = ("ev", "o", "it", "rf", "fo", "lo", "fs", "la", "lq", "se", "pv", "vv",
                "sr", "ac", "rc", "cs", "os", "cc", "dt", "ls@")
#: Float sums: equal up to rounding under reordering.
SUM_FIELDS = ("rv", "ra", *DECAY_TAUS)

FAST = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def _stamp(offset_ms: int) -> str:
    return (START + timedelta(milliseconds=offset_ms)).isoformat(timespec="milliseconds")


@st.composite
def click_events(draw: st.DrawFn) -> dict[str, Any]:
    """A clickstream event dict (no event id yet)."""
    kind = draw(st.sampled_from(CLICK_TYPES))
    value: dict[str, Any] = {
        "customer_id": draw(st.sampled_from(CUSTOMERS)),
        "event_type": kind,
        "timestamp": _stamp(draw(st.integers(0, SPAN_MS))),
    }
    sid = draw(st.none() | st.sampled_from(SESSIONS))
    if sid is not None:
        value["session_id"] = sid
    if kind in ("product_view", "add_to_cart", "remove_from_cart", "page_view"):
        cat = draw(st.none() | st.sampled_from(CATEGORIES))
        if cat is not None:
            value["category"] = cat
    if kind in ("add_to_cart", "remove_from_cart"):
        value["quantity"] = draw(st.integers(1, 3))
    return value


@st.composite
def purchase_events(draw: st.DrawFn, order_sid_required: bool = False) -> dict[str, Any]:
    """An order or refund dict (no event id yet)."""
    kind = draw(st.sampled_from(("order", "order", "refund")))
    items = draw(st.lists(
        st.fixed_dictionaries(
            {"product_id": st.sampled_from(("p-1", "p-2", "p-3")),
             "quantity": st.integers(1, 3),
             "unit_price": st.integers(1, 20_000).map(lambda c: c / 100)},
            optional={"category": st.sampled_from(CATEGORIES)},
        ),
        min_size=1, max_size=3,
    ))
    total = round(sum(i["quantity"] * i["unit_price"] for i in items), 2)
    value: dict[str, Any] = {
        "customer_id": draw(st.sampled_from(CUSTOMERS)),
        "order_id": "o-" + str(draw(st.integers(1, 5))),
        "type": kind,
        "timestamp": _stamp(draw(st.integers(0, SPAN_MS))),
        "items": items,
        "total": total,
        "currency": "EUR",
    }
    needs_sid = order_sid_required and kind == "order"
    sid = draw(st.sampled_from(SESSIONS) if needs_sid else st.none() | st.sampled_from(SESSIONS))
    if sid is not None:
        value["session_id"] = sid
    return value


def streams(order_sid_required: bool = False, max_size: int = 40) -> st.SearchStrategy[
        list[dict[str, Any]]]:
    """Lists of distinct events, each with a unique ``event_id``."""
    one = click_events() | purchase_events(order_sid_required)
    return st.lists(one, min_size=1, max_size=max_size).map(
        lambda evs: [{"event_id": f"e-{i}", **ev} for i, ev in enumerate(evs)])


@st.composite
def with_duplicates(draw: st.DrawFn, stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``stream`` with extra deep copies of some events inserted at arbitrary later places."""
    out = [copy.deepcopy(ev) for ev in stream]
    for _ in range(draw(st.integers(0, len(stream)))):
        src = draw(st.integers(0, len(out) - 1))
        dst = draw(st.integers(src + 1, len(out)))
        out.insert(dst, copy.deepcopy(out[src]))
    return out


def ops_of(value: dict[str, Any]) -> tuple[list[Op], float]:
    """The ops and event time of an event dict."""
    ts = event_time(value)
    event = event_namespace(value)
    if "order_id" in value:
        return purchase_ops(event, ts), ts
    return clickstream_ops(event, ts), ts


def lane_of(value: dict[str, Any]) -> str:
    """The dedupe lane (input topic) of an event dict."""
    return LANE_PURCHASES if "order_id" in value else LANE_CLICKSTREAM


def prepared(stream: Sequence[dict[str, Any]]) -> Iterator[tuple[str, str, list[Op], float, str]]:
    """``(customer, event_id, ops, ts, lane)`` for each event."""
    for value in stream:
        ops, ts = ops_of(value)
        yield value["customer_id"], value["event_id"], ops, ts, lane_of(value)


def run(stream: Sequence[dict[str, Any]], config: FeatureConfig | None = None) -> InMemoryProfiles:
    """Apply a stream to a fresh in-memory twin."""
    profiles = InMemoryProfiles.empty(config)
    for cid, eid, ops, ts, lane in prepared(stream):
        profiles.apply(cid, eid, ops, ts, lane)
    return profiles


def dedupe(stream: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """First occurrence of each (customer, event_id), in order."""
    seen: set[tuple[str, str]] = set()
    out = []
    for ev in stream:
        key = (ev["customer_id"], ev["event_id"])
        if key not in seen:
            seen.add(key)
            out.append(ev)
    return out


# ----------------------------------------------------- earlier versions


def old_admit(ring: bytes, floor: int | None, event_id: str, ts: float,
              capacity: int) -> tuple[int, bytes, int | None]:
    """``seen.admit_event`` as earlier versions ran it: 8-byte digests, 14-byte records."""
    size, key = seen.OLD_ID_RECORD, seen.digest(event_id)
    if seen.find_record(ring, key, size) >= 0:
        return seen.DUPLICATE, ring, floor
    ms = seen.record_ms(ts)
    if floor is not None and ms <= floor:
        return seen.LATE, ring, floor
    at = len(ring)
    while at > 0 and int.from_bytes(ring[at - 6:at], "big") > ms:
        at -= size
    ring = ring[:at] + key + ms.to_bytes(6, "big") + ring[at:]
    if len(ring) > capacity * size:
        evicted = int.from_bytes(ring[8:size], "big")
        floor = evicted if floor is None else max(floor, evicted)
        ring = ring[size:]
    return seen.APPLIED, ring, floor


def to_legacy(states: dict[str, dict[str, Any]],
              applied: Sequence[tuple[str, str, float, str]],
              config: FeatureConfig) -> dict[str, dict[str, Any]]:
    """``states`` as an earlier version would have stored them after the same events.

    ``applied`` is every ``(customer, event_id, ts, lane)`` the twin was given, in order.
    The old rings are rebuilt with :func:`old_admit` (which decides exactly as the new
    rings while no two ids share a 6-byte digest), replacing the current lanes.
    """
    old_of = {lane: old for old, lane in LEGACY_LANES.items()}
    current = {*old_of, *(lane + "f" for lane in old_of)}
    out = {cid: {k: v for k, v in state.items() if k not in current}
           for cid, state in states.items()}
    for cid, event_id, ts, lane in applied:
        state, old = out[cid], old_of[lane]
        _, ring, floor = old_admit(state.get(old, b""), state.get(old + "f"), event_id, ts,
                                   config.capacity(lane))
        state[old] = ring
        if floor is not None:
            state[old + "f"] = floor
    return out


# ------------------------------------------------------------------ purity


@FAST
@given(streams())
def test_ops_are_a_pure_function_and_apply_mutates_no_input(stream: list[dict[str, Any]]) -> None:
    before = copy.deepcopy(stream)
    profiles = InMemoryProfiles.empty()
    for value in stream:
        ops, ts = ops_of(value)
        again, ts_again = ops_of(value)
        assert (ops, ts) == (again, ts_again)
        frozen = copy.deepcopy(ops)
        profiles.apply(value["customer_id"], value["event_id"], ops, ts, lane_of(value))
        assert ops == frozen
    assert stream == before


# ------------------------------------------------------------ idempotence


@FAST
@given(st.data())
def test_duplicates_change_nothing(data: st.DataObject) -> None:
    stream = data.draw(streams())
    noisy = data.draw(with_duplicates(stream))
    assert dedupe(noisy) == stream
    clean, dirty = run(stream), run(noisy)
    assert dirty.states == clean.states


@FAST
@given(st.data(), st.sampled_from([
    FeatureConfig(), FeatureConfig(dedupe_events=2, dedupe_purchases=1, sessions=2)]))
def test_profiles_of_earlier_versions_convert_without_changing_an_outcome(
        data: st.DataObject, config: FeatureConfig) -> None:
    # An earlier version applies the stream up to `cut`; the rest goes to this one.
    stream = data.draw(st.permutations(data.draw(with_duplicates(data.draw(streams())))))
    cut = data.draw(st.integers(0, len(stream)))
    events = list(prepared(stream))
    straight = InMemoryProfiles.empty(config, clock=lambda: 1_800_000_000)
    upgraded = InMemoryProfiles.empty(config, clock=lambda: 1_800_000_000)
    want = [straight.apply(cid, eid, ops, ts, lane) for cid, eid, ops, ts, lane in events]
    got = [upgraded.apply(cid, eid, ops, ts, lane) for cid, eid, ops, ts, lane in events[:cut]]
    upgraded.states = to_legacy(upgraded.states,
                                [(cid, eid, ts, lane) for cid, eid, _, ts, lane in events[:cut]],
                                config)
    got += [upgraded.apply(cid, eid, ops, ts, lane) for cid, eid, ops, ts, lane in events[cut:]]
    assert got == want
    later = {cid for cid, *_ in events[cut:]}
    for cid, state in upgraded.states.items():
        if cid in later:
            assert not LEGACY_LANES.keys() & state.keys()
        else:  # not updated since: still as the earlier version left it
            assert upgrade_lanes(state, config) == (LANE_CLICKSTREAM in straight.states[cid]
                                                    or LANE_PURCHASES in straight.states[cid])
        assert state == straight.states[cid]


# -------------------------------------------------------- order-insensitivity


def _last_session_is_unambiguous(stream: Sequence[dict[str, Any]], cid: str) -> bool:
    """True if the latest session-bearing click of ``cid`` has a unique (ts, session)."""
    sessions = [(event_time(e), e["session_id"]) for e in stream
                if e["customer_id"] == cid and "event_type" in e and e.get("session_id")]
    if not sessions:
        return True
    latest = max(t for t, _ in sessions)
    return len({s for t, s in sessions if t == latest}) == 1


#: Rings so large nothing is ever evicted or settled: the set semantics every bounded
#: configuration is measured against.
UNBOUNDED = FeatureConfig(dedupe_events=10_000, dedupe_purchases=10_000, sessions=10_000,
                          links=10_000, link_window_s=10**9)


def time_local_sessions(stream: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``stream`` with each session id scoped to a UTC day (real sessions last minutes)."""
    out = []
    for ev in stream:
        if ev.get("session_id"):
            ev = {**ev, "session_id": f"{ev['session_id']}@{ev['timestamp'][:10]}"}
        out.append(ev)
    return out


@st.composite
def interleavings(draw: st.DrawFn, stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each topic of ``stream`` in event-time order, the two merged in an arbitrary way."""
    clicks = sorted((e for e in stream if "order_id" not in e), key=event_time)
    orders = sorted((e for e in stream if "order_id" in e), key=event_time)
    out = []
    while clicks and orders:
        out.append((clicks if draw(st.booleans()) else orders).pop(0))
    return out + clicks + orders


@FAST
@given(st.data())
def test_order_independent_features_do_not_depend_on_arrival_order(data: st.DataObject) -> None:
    # Every order carries its session id, and fewer categories than the cap exist.
    stream = data.draw(with_duplicates(data.draw(streams(order_sid_required=True))))
    shuffled = data.draw(st.permutations(stream))
    config = UNBOUNDED
    assert len(CATEGORIES) < config.max_categories
    a, b = run(stream, config).states, run(shuffled, config).states
    assert a.keys() == b.keys()
    for cid, left in a.items():
        right = b[cid]
        assert left.keys() == right.keys()
        for code in EXACT_FIELDS:
            assert left.get(code) == right.get(code), code
        for code in SUM_FIELDS:
            if code in left:
                assert math.isclose(left[code], right[code], rel_tol=1e-9, abs_tol=1e-12), code
        assert left.get("k") == right.get("k")  # integer weights: exact
        if _last_session_is_unambiguous(stream, cid):
            assert left.get("ls") == right.get("ls")


@FAST
@given(st.data())
def test_session_counts_are_exact_for_any_interleaving_of_the_topics(
        data: st.DataObject) -> None:
    # As during a catch-up, when one topic runs days ahead of the other.
    stream = time_local_sessions(data.draw(with_duplicates(
        data.draw(streams(order_sid_required=True)))))
    merged = data.draw(interleavings(stream))
    bounded = FeatureConfig(sessions=len(SESSIONS), links=64)
    got, want = run(merged, bounded).states, run(stream, UNBOUNDED).states
    assert got.keys() == want.keys()
    for cid, state in got.items():
        for code in ("se", "cs", "os", "cc", "ev", "o"):
            assert state.get(code) == want[cid].get(code), (cid, code)


def test_links_are_forgotten_once_both_topics_moved_on() -> None:
    day = 86_400_000
    stream = []
    for n in range(30):
        at = n * day + 3_600_000
        stream.append({"event_id": f"c-{n}", "customer_id": "c-1", "event_type": "add_to_cart",
                       "session_id": f"s-{n}", "timestamp": _stamp(at), "quantity": 1})
        stream.append({"event_id": f"o-{n}", "customer_id": "c-1", "order_id": f"o-{n}",
                       "type": "order", "session_id": f"s-{n}", "timestamp": _stamp(at + 60_000),
                       "items": [{"product_id": "p", "quantity": 1, "unit_price": 5.0}],
                       "total": 5.0, "currency": "EUR"})
    state = run(stream).states["c-1"]
    assert (state["cs"], state["os"], state["cc"]) == (30.0, 30.0, 30.0)
    # Only sessions within a day of the latest event time are still linked.
    assert len(state["lk"]) <= 2 * seen.LINK_RECORD


def test_a_link_expires_on_the_wall_clock_when_the_other_topic_never_comes() -> None:
    wall = [1_800_000_000.0]
    profiles = InMemoryProfiles.empty(FeatureConfig(link_ttl_s=3_600), clock=lambda: wall[0])
    for n, hours in enumerate((0, 2)):
        value = {"event_id": f"c-{n}", "customer_id": "c-1", "event_type": "add_to_cart",
                 "session_id": f"s-{n}", "timestamp": _stamp(n * 60_000), "quantity": 1}
        ops, ts = ops_of(value)
        wall[0] += hours * 3_600
        profiles.apply("c-1", value["event_id"], ops, ts, lane_of(value))
    # The first cart's link went when the second cart came two wall-clock hours later.
    assert len(profiles.states["c-1"]["lk"]) == seen.LINK_RECORD


# ---------------------------------------------------------------- derived


@FAST
@given(streams(), st.integers(0, 90 * 86_400), st.integers(1, 30 * 86_400))
def test_derived_values_stay_in_range(stream: list[dict[str, Any]], offset: int,
                                      step: int) -> None:
    profiles = run(stream)
    as_of = START.timestamp() + offset
    for cid, state in profiles.states.items():
        view = ProfileView(cid, as_of, state)
        later = ProfileView(cid, as_of + step, state)
        for rate in (view.conversion_rate, view.cart_abandonment_rate, view.refund_rate,
                     view.top_category[1]):
            assert 0.0 <= rate <= 1.0
        assert view.recency_days >= 0.0
        assert view.tenure_days >= 0.0
        last_order = view.days_since_last_order
        assert last_order is None or last_order >= 0.0
        gap = view.mean_days_between_orders
        assert gap is None or gap >= 0.0
        assert view.average_order_value >= 0.0
        assert later.recency_days >= view.recency_days
        for code in DECAY_TAUS:
            now, then = view.decayed(code), later.decayed(code)
            assert 0.0 <= then <= now, code
        out = view.to_dict()
        assert out["distinct_categories"] <= FeatureConfig().max_categories
