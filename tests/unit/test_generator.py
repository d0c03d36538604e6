"""The synthetic traffic generator: determinism, event contracts, planted personas, faults."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.core.generator import (
    PERSONAS,
    CustomerTruth,
    GeneratedEvent,
    TrafficGenerator,
    batch_envelopes,
    inject_faults,
)

START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 60.0
END = START + timedelta(days=DAYS)
CART_TYPES = {"add_to_cart", "remove_from_cart"}
PRODUCT_TYPES = {"product_view", "add_to_cart", "remove_from_cart"}


@pytest.fixture(scope="module")
def generator() -> TrafficGenerator:
    return TrafficGenerator(customers=400, seed=7, start=START, days=DAYS)


@pytest.fixture(scope="module")
def events(generator: TrafficGenerator) -> list[GeneratedEvent]:
    return list(generator.events())


@pytest.fixture(scope="module")
def truths(generator: TrafficGenerator) -> dict[str, CustomerTruth]:
    return generator.truths()


def small(seed: int, customers: int = 30, days: float = 20.0) -> list[GeneratedEvent]:
    return list(TrafficGenerator(customers=customers, seed=seed, start=START, days=days).events())


def by_customer(events: list[GeneratedEvent]) -> dict[str, list[GeneratedEvent]]:
    grouped: dict[str, list[GeneratedEvent]] = defaultdict(list)
    for event in events:
        grouped[event.key].append(event)
    return grouped


def sessions_of(events: list[GeneratedEvent]) -> dict[str, list[GeneratedEvent]]:
    """Clickstream and order events per session id (refunds excluded), in stream order."""
    grouped: dict[str, list[GeneratedEvent]] = defaultdict(list)
    for event in events:
        if event.value.get("type") != "refund":
            grouped[event.value["session_id"]].append(event)
    return grouped


def persona_of(truths: dict[str, CustomerTruth], persona: str) -> set[str]:
    return {cid for cid, truth in truths.items() if truth.persona == persona}


def order_totals(events: list[GeneratedEvent], customers: set[str]) -> list[float]:
    return [
        e.value["total"] for e in events if e.key in customers and e.value.get("type") == "order"
    ]


def conversion(events: list[GeneratedEvent], customers: set[str]) -> float:
    sessions = [s for s in sessions_of(events).values() if s[0].key in customers]
    converted = sum(any(e.value.get("type") == "order" for e in s) for s in sessions)
    return converted / len(sessions)


# -- determinism --------------------------------------------------------------------------


def test_same_seed_gives_identical_events_and_truths() -> None:
    assert small(3) == small(3)
    first = TrafficGenerator(customers=30, seed=3, start=START, days=20)
    second = TrafficGenerator(customers=30, seed=3, start=START, days=20)
    assert first.truths() == second.truths()


def test_different_seeds_give_different_traffic() -> None:
    a, b = small(1), small(2)
    assert [e.value for e in a] != [e.value for e in b]
    assert {e.value["event_id"] for e in a}.isdisjoint(e.value["event_id"] for e in b)


def test_truths_do_not_depend_on_reading_events_first() -> None:
    generator = TrafficGenerator(customers=20, seed=5, start=START, days=20)
    before = generator.truths()
    list(generator.events())
    assert generator.truths() == before


# -- event contracts ----------------------------------------------------------------------


def test_events_are_time_ordered_and_inside_the_period(events: list[GeneratedEvent]) -> None:
    assert len(events) > 10_000
    times = [e.timestamp for e in events]
    assert times == sorted(times)
    assert times[0] >= START
    assert times[-1] < END


def test_timestamps_are_utc_iso_with_milliseconds(events: list[GeneratedEvent]) -> None:
    for event in events[:5000]:
        text = event.value["timestamp"]
        assert text.endswith("+00:00")
        assert len(text) == len("2024-03-01T00:00:00.000+00:00")
        assert datetime.fromisoformat(text) == event.timestamp


def test_event_ids_are_unique(events: list[GeneratedEvent]) -> None:
    ids = [e.value["event_id"] for e in events]
    assert len(ids) == len(set(ids))


def test_keys_are_customer_ids(events: list[GeneratedEvent]) -> None:
    for event in events:
        assert event.key == event.value["customer_id"]
        assert event.key.startswith("c-")
        assert event.invalid_reason is None


def test_clickstream_events_carry_the_fields_of_their_type(events: list[GeneratedEvent]) -> None:
    seen: Counter[str] = Counter()
    for event in events:
        if event.topic != "clickstream":
            continue
        value = event.value
        kind = value["event_type"]
        seen[kind] += 1
        assert {"event_id", "customer_id", "event_type", "timestamp", "session_id"} <= set(value)
        if kind in PRODUCT_TYPES:
            assert value["price"] == round(value["price"], 2)
            assert value["price"] > 0
            assert value["product_id"].startswith("p-")
            assert isinstance(value["category"], str)
        if kind in CART_TYPES:
            assert isinstance(value["quantity"], int)
            assert value["quantity"] >= 1
        if kind == "search":
            assert value["query"]
        if kind == "page_view":
            assert value["url"].startswith("/")
        if kind == "session_start":
            assert value["channel"] in {"web", "app", "email"}
            assert value["device"] in {"desktop", "mobile", "tablet"}
    expected = {"session_start", "page_view", "product_view", "search"}
    assert set(seen) == expected | CART_TYPES | {"session_end"}


def test_order_totals_equal_the_rounded_item_sum(events: list[GeneratedEvent]) -> None:
    orders = [e.value for e in events if e.value.get("type") == "order"]
    assert len(orders) > 100
    for order in orders:
        assert order["currency"] == "EUR"
        assert order["items"]
        expected = round(sum(i["quantity"] * i["unit_price"] for i in order["items"]), 2)
        assert order["total"] == expected
        assert all(i["quantity"] >= 1 and i["unit_price"] > 0 for i in order["items"])


def test_refunds_follow_their_order_and_refund_at_most_its_total(
    events: list[GeneratedEvent],
) -> None:
    orders = {e.value["order_id"]: e for e in events if e.value.get("type") == "order"}
    refunds = [e for e in events if e.value.get("type") == "refund"]
    assert refunds
    for refund in refunds:
        order = orders[refund.value["order_id"]]
        assert refund.key == order.key
        assert refund.value["session_id"] == order.value["session_id"]
        assert refund.timestamp >= order.timestamp + timedelta(days=1)
        assert 0 < refund.value["total"] <= order.value["total"]


def test_sessions_are_well_formed(events: list[GeneratedEvent]) -> None:
    for session in sessions_of(events).values():
        kinds = [e.value.get("event_type", "purchase") for e in session]
        assert kinds[0] == "session_start"
        assert kinds[-1] == "session_end"
        assert kinds.count("page_view") + kinds.count("product_view") + kinds.count("search") >= 1
        assert len({e.key for e in session}) == 1
        stamps = [e.timestamp for e in session]
        assert stamps == sorted(stamps)
        assert stamps[-1] - stamps[0] < timedelta(hours=2)
        if "purchase" in kinds:
            # The order is placed seconds after the last cart event, then the session ends.
            assert kinds[-2] == "purchase"
            last_cart = max(i for i, k in enumerate(kinds) if k in CART_TYPES)
            gap = stamps[-2] - stamps[last_cart]
            assert timedelta(seconds=1) <= gap <= timedelta(seconds=10)


def test_orders_contain_what_is_left_in_the_cart(events: list[GeneratedEvent]) -> None:
    for session in sessions_of(events).values():
        if session[-2].topic != "purchases":
            continue
        cart: Counter[str] = Counter()
        for event in session:
            if event.value.get("event_type") == "add_to_cart":
                cart[event.value["product_id"]] += event.value["quantity"]
            elif event.value.get("event_type") == "remove_from_cart":
                cart[event.value["product_id"]] -= event.value["quantity"]
        ordered = Counter({i["product_id"]: i["quantity"] for i in session[-2].value["items"]})
        assert +cart == ordered


# -- personas -----------------------------------------------------------------------------


def test_every_customer_has_one_persona_in_the_default_mix(
    truths: dict[str, CustomerTruth],
) -> None:
    counts = Counter(t.persona for t in truths.values())
    assert set(counts) == set(PERSONAS)
    assert counts == {
        "loyal_high_value": 60,
        "bargain_hunter": 100,
        "browser": 120,
        "new_customer": 40,
        "churner": 80,
    }


def test_persona_mix_is_configurable() -> None:
    generator = TrafficGenerator(
        customers=10, seed=1, start=START, days=5, persona_mix={"browser": 1, "churner": 1}
    )
    assert Counter(t.persona for t in generator.truths().values()) == {"browser": 5, "churner": 5}


@pytest.mark.parametrize(
    "mix",
    [{"vip": 1.0}, {"browser": -1.0}, {"browser": 0.0}, {"browser": float("nan")}],
)
def test_bad_persona_mix_is_rejected(mix: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="persona_mix"):
        TrafficGenerator(customers=1, seed=1, start=START, days=1, persona_mix=mix)


def test_naive_start_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone"):
        TrafficGenerator(customers=1, seed=1, start=datetime(2024, 1, 1), days=1)


def test_truths_record_first_and_last_activity(
    events: list[GeneratedEvent], truths: dict[str, CustomerTruth]
) -> None:
    streams = by_customer(events)
    for cid, truth in truths.items():
        stream = streams.get(cid, [])
        if not stream:
            assert truth.last_event is None
            continue
        assert stream[0].timestamp == truth.first_active
        assert stream[-1].timestamp == truth.last_event


def test_churners_go_silent_at_churn_time(
    events: list[GeneratedEvent], truths: dict[str, CustomerTruth]
) -> None:
    streams = by_customer(events)
    churners = persona_of(truths, "churner")
    active_before = 0
    for cid in churners:
        churn_at = truths[cid].churn_at
        assert churn_at is not None
        assert START + 0.3 * (END - START) <= churn_at <= START + 0.7 * (END - START)
        assert all(e.timestamp < churn_at for e in streams.get(cid, []))
        active_before += bool(streams.get(cid))
    assert active_before >= 0.95 * len(churners)
    assert all(t.churn_at is None for t in truths.values() if t.persona != "churner")


def test_churners_buy_like_regular_customers_before_churning(
    events: list[GeneratedEvent], truths: dict[str, CustomerTruth]
) -> None:
    churners = persona_of(truths, "churner")
    assert 0.3 <= conversion(events, churners) <= 0.6
    totals = order_totals(events, churners)
    assert totals
    assert all(30 <= t <= 120 for t in totals)


def test_new_customers_start_late_and_order_at_most_once(
    events: list[GeneratedEvent], truths: dict[str, CustomerTruth]
) -> None:
    newcomers = persona_of(truths, "new_customer")
    late = START + 0.8 * (END - START)
    for cid, stream in by_customer(events).items():
        if cid not in newcomers:
            continue
        assert stream[0].timestamp >= late
        assert len({e.value["session_id"] for e in stream}) <= 4
        assert sum(e.value.get("type") == "order" for e in stream) <= 1
    for cid in newcomers:
        assert truths[cid].first_active >= late


def test_loyal_customers_buy_big_baskets_often_all_period(
    events: list[GeneratedEvent], truths: dict[str, CustomerTruth]
) -> None:
    loyal = persona_of(truths, "loyal_high_value")
    assert conversion(events, loyal) >= 0.5
    totals = order_totals(events, loyal)
    assert all(80 <= t <= 300 for t in totals)
    for cid in loyal:
        last = truths[cid].last_event
        assert last is not None
        assert last >= END - timedelta(days=10)
    refunds = sum(e.key in loyal and e.value.get("type") == "refund" for e in events)
    assert refunds <= 0.1 * len(totals)


def test_bargain_hunters_search_a_lot_buy_small_and_abandon_carts(
    events: list[GeneratedEvent], truths: dict[str, CustomerTruth]
) -> None:
    hunters = persona_of(truths, "bargain_hunter")
    totals = order_totals(events, hunters)
    assert totals
    assert all(10 <= t <= 40 for t in totals)
    assert 0.25 <= conversion(events, hunters) <= 0.45
    carting = ordered = 0
    for session in sessions_of(events).values():
        if session[0].key in hunters and any(
            e.value.get("event_type") in CART_TYPES for e in session
        ):
            carting += 1
            ordered += session[-2].topic == "purchases"
    assert 1 - ordered / carting >= 0.4
    searches = Counter(
        truths[e.key].persona for e in events if e.value.get("event_type") == "search"
    )
    clicks = Counter(truths[e.key].persona for e in events if e.topic == "clickstream")
    share = {p: searches[p] / clicks[p] for p in PERSONAS}
    assert share["bargain_hunter"] == max(share.values())


def test_browsers_view_a_lot_and_rarely_buy(
    events: list[GeneratedEvent], truths: dict[str, CustomerTruth]
) -> None:
    browsers = persona_of(truths, "browser")
    assert conversion(events, browsers) < 0.05
    carts = sum(e.key in browsers and e.value.get("event_type") == "add_to_cart" for e in events)
    assert carts > 0
    views = Counter(
        e.key for e in events if e.value.get("event_type") in {"page_view", "product_view"}
    )
    per_customer = {p: 0.0 for p in PERSONAS}
    for p in PERSONAS:
        members = persona_of(truths, p)
        sessions = {e.value["session_id"] for e in events if e.key in members}
        per_customer[p] = sum(views[c] for c in members) / len(sessions)
    assert per_customer["browser"] > per_customer["loyal_high_value"]


def test_count_estimate_is_in_the_right_ballpark(
    generator: TrafficGenerator, events: list[GeneratedEvent]
) -> None:
    assert 0.7 * len(events) <= generator.count_estimate() <= 1.3 * len(events)


# -- batch_envelopes ----------------------------------------------------------------------


def unpack(message: dict[str, Any]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = message.get("events", [message])
    return events


def test_size_one_yields_bare_events(events: list[GeneratedEvent]) -> None:
    sample = events[:200]
    assert list(batch_envelopes(sample, 1)) == [(e.topic, e.key, e.value) for e in sample]


@pytest.mark.parametrize(("size", "max_lag"), [(5, 10_000), (50, 10_000), (8, 3)])
def test_envelopes_keep_each_customers_order_and_size(
    events: list[GeneratedEvent], size: int, max_lag: int
) -> None:
    messages = list(batch_envelopes(events, size, max_lag=max_lag))
    assert len(messages) < len(events)
    regrouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for topic, key, message in messages:
        batch = unpack(message)
        assert 1 <= len(batch) <= size
        assert all(e["customer_id"] == key for e in batch)
        regrouped[topic, key].extend(e["event_id"] for e in batch)
    expected: dict[tuple[str, str], list[str]] = defaultdict(list)
    for event in events:
        expected[event.topic, event.key].append(event.value["event_id"])
    assert regrouped == expected


@given(
    keys=st.lists(st.tuples(st.sampled_from(["clickstream", "purchases"]), st.integers(0, 4))),
    size=st.integers(1, 6),
    max_lag=st.integers(0, 20),
)
def test_envelopes_property(keys: list[tuple[str, int]], size: int, max_lag: int) -> None:
    stream = [
        GeneratedEvent(topic, f"c-{k}", {"event_id": str(i), "customer_id": f"c-{k}"}, START)  # type: ignore[arg-type]
        for i, (topic, k) in enumerate(keys)
    ]
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for topic, key, message in batch_envelopes(stream, size, max_lag=max_lag):
        batch = unpack(message)
        assert len(batch) <= size
        out[topic, key].extend(e["event_id"] for e in batch)
    expected: dict[tuple[str, str], list[str]] = defaultdict(list)
    for event in stream:
        expected[event.topic, event.key].append(event.value["event_id"])
    assert out == expected


def test_envelope_size_must_be_positive(events: list[GeneratedEvent]) -> None:
    with pytest.raises(ValueError, match="size"):
        list(batch_envelopes(events, 0))


# -- inject_faults ------------------------------------------------------------------------


def test_no_faults_is_the_identity(events: list[GeneratedEvent]) -> None:
    sample = events[:1000]
    assert list(inject_faults(sample, seed=1)) == sample


def test_faults_are_deterministic(events: list[GeneratedEvent]) -> None:
    sample = events[:2000]

    def run() -> list[GeneratedEvent]:
        return list(
            inject_faults(sample, seed=9, duplicate_rate=0.1, shuffle_window=16, invalid_rate=0.05)
        )

    assert run() == run()


def test_duplicates_repeat_events_at_the_requested_rate(events: list[GeneratedEvent]) -> None:
    sample = events[:20_000]
    out = list(inject_faults(sample, seed=2, duplicate_rate=0.05))
    counts = Counter(e.value["event_id"] for e in out)
    duplicated = sum(n - 1 for n in counts.values())
    assert duplicated / len(sample) == pytest.approx(0.05, abs=0.01)
    assert set(counts) == {e.value["event_id"] for e in sample}
    assert all(e.invalid_reason is None for e in out)
    first_seen: dict[str, dict[str, Any]] = {}
    for event in out:
        assert first_seen.setdefault(event.value["event_id"], event.value) == event.value


def test_invalid_events_are_marked_and_really_invalid(events: list[GeneratedEvent]) -> None:
    sample = events[:20_000]
    out = list(inject_faults(sample, seed=3, invalid_rate=0.03))
    invalid = [e for e in out if e.invalid_reason is not None]
    assert len(invalid) / len(sample) == pytest.approx(0.03, abs=0.006)
    assert [e for e in out if e.invalid_reason is None] == sample
    reasons = Counter(e.invalid_reason for e in invalid)
    assert set(reasons) >= {
        "negative_price",
        "unknown_event_type",
        "missing_customer_id",
        "bad_timestamp",
    }
    valid_ids = {e.value["event_id"] for e in sample}
    for event in invalid:
        value = event.value
        assert value["event_id"] not in valid_ids
        match event.invalid_reason:
            case "negative_price":
                prices = (
                    [value["price"]]
                    if "price" in value
                    else [i["unit_price"] for i in value["items"]]
                )
                assert min(prices) < 0
            case "unknown_event_type":
                assert value["event_type"] not in PRODUCT_TYPES | {"session_start", "session_end"}
            case "unknown_type":
                assert value["type"] not in {"order", "refund"}
            case "missing_customer_id":
                assert "customer_id" not in value
            case "total_mismatch":
                items = value["items"]
                assert value["total"] != round(
                    sum(i["quantity"] * i["unit_price"] for i in items), 2
                )
            case "bad_timestamp":
                with pytest.raises(ValueError, match="Invalid isoformat"):
                    datetime.fromisoformat(value["timestamp"])
            case other:
                pytest.fail(f"unexpected reason {other}")


def test_shuffles_stay_within_the_window(events: list[GeneratedEvent]) -> None:
    sample = events[:5000]
    out = list(inject_faults(sample, seed=4, shuffle_window=10))
    assert sorted(out, key=lambda e: e.value["event_id"]) == sorted(
        sample, key=lambda e: e.value["event_id"]
    )
    position = {e.value["event_id"]: i for i, e in enumerate(sample)}
    moves = [abs(position[e.value["event_id"]] - i) for i, e in enumerate(out)]
    assert max(moves) < 10
    assert sum(m > 0 for m in moves) > 0.5 * len(sample)


def test_fault_rates_are_validated(events: list[GeneratedEvent]) -> None:
    with pytest.raises(ValueError, match="duplicate_rate"):
        list(inject_faults(events, seed=1, duplicate_rate=1.5))
