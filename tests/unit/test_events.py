"""Input contracts and decode_message: accepted shapes, precise rejections, never raising."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streamproc.core.events import (
    DEFAULT_LIMITS,
    REJECT_REASONS,
    ClickstreamEvent,
    PurchaseEvent,
    Rejection,
    ValidationLimits,
    decode_message,
    event_json,
    parse_timestamp,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LIMITS = DEFAULT_LIMITS
KEY = b"cust-1"


def click(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "evt-1",
        "customer_id": "cust-1",
        "event_type": "page_view",
        "timestamp": "2024-05-01T11:59:00Z",
        "session_id": "sess-1",
        "url": "https://shop.example.com/",
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not ...}


def purchase(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "pur-1",
        "customer_id": "cust-1",
        "order_id": "ord-1",
        "timestamp": "2024-05-01T11:00:00Z",
        "type": "order",
        "items": [
            {"product_id": "sku-1", "quantity": 2, "unit_price": 10.0},
            {"product_id": "sku-2", "quantity": 1, "unit_price": 5.5},
        ],
        "total": 25.5,
        "currency": "EUR",
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not ...}


def ctx(limits: ValidationLimits = LIMITS, now: datetime = NOW) -> dict[str, Any]:
    return {"limits": limits, "now": now}


def decode_click(doc: Any, key: bytes | None = KEY) -> Any:
    return decode_message(orjson.dumps(doc), key, "clickstream", limits=LIMITS, now=NOW)


def decode_purchase(doc: Any, key: bytes | None = KEY) -> Any:
    return decode_message(orjson.dumps(doc), key, "purchases", limits=LIMITS, now=NOW)


def only_rejection(decoded: Any) -> Rejection:
    assert decoded.events == []
    assert len(decoded.rejections) == 1
    rejection: Rejection = decoded.rejections[0]
    assert rejection.reason in REJECT_REASONS
    return rejection


# --- ClickstreamEvent -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        click(event_type="session_start"),
        click(event_type="session_end"),
        click(event_type="page_view", session_id=None),
        click(event_type="product_view", product_id="sku-1", price=9.99, category="shoes"),
        click(event_type="search", query="red shoes"),
        click(event_type="add_to_cart", product_id="sku-1", quantity=3),
        click(event_type="remove_from_cart", product_id="sku-1"),
    ],
    ids=lambda d: d["event_type"],
)
def test_clickstream_accepts_every_event_type(doc: dict[str, Any]) -> None:
    event = ClickstreamEvent.model_validate(doc, context=ctx())
    assert event.event_type == doc["event_type"]
    assert event.kind == "clickstream"


def test_add_to_cart_quantity_defaults_to_one() -> None:
    event = ClickstreamEvent.model_validate(click(event_type="add_to_cart", product_id="sku-1"))
    assert event.quantity == 1
    assert ClickstreamEvent.model_validate(click()).quantity is None


@pytest.mark.parametrize(
    ("event_type", "missing"),
    [
        ("product_view", "product_id"),
        ("add_to_cart", "product_id"),
        ("remove_from_cart", "product_id"),
        ("search", "query"),
        ("session_start", "session_id"),
        ("session_end", "session_id"),
    ],
)
def test_per_type_required_fields(event_type: str, missing: str) -> None:
    doc = click(event_type=event_type, product_id="sku-1", query="q", session_id="s")
    del doc[missing]
    with pytest.raises(ValidationError) as info:
        ClickstreamEvent.model_validate(doc)
    (error,) = info.value.errors()
    assert error["loc"] == (missing,)
    assert error["msg"] == f"Field required for event_type '{event_type}'"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-05-01T11:59:00Z", datetime(2024, 5, 1, 11, 59, tzinfo=UTC)),
        ("2024-05-01T13:59:00+02:00", datetime(2024, 5, 1, 11, 59, tzinfo=UTC)),
        ("2024-05-01T06:59:00.250-05:00", datetime(2024, 5, 1, 11, 59, 0, 250000, tzinfo=UTC)),
        (1714564740000, datetime(2024, 5, 1, 11, 59, tzinfo=UTC)),
        (1714564740000.5, datetime(2024, 5, 1, 11, 59, 0, 500, tzinfo=UTC)),
        # History of any age replays: no business floor, only the Unix epoch.
        ("1997-01-01T12:00:00Z", datetime(1997, 1, 1, 12, tzinfo=UTC)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_timestamp_forms_normalise_to_utc(raw: object, expected: datetime) -> None:
    event = ClickstreamEvent.model_validate(click(timestamp=raw), context=ctx())
    assert event.timestamp == expected
    assert event.timestamp.tzinfo is UTC


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("2024-05-01T11:59:00", "must carry a UTC offset"),
        ("2024-05-01", "must carry a UTC offset"),
        ("yesterday", "ISO-8601 timestamp with a UTC offset"),
        ("1969-12-31T23:59:59Z", "before 1970-01-01"),
        ("0001-01-01T00:00:00+01:00", "before 1970-01-01"),
        ("9999-12-31T23:59:59-01:00", "after 9999-12-31"),
        (-1, "outside 1970-01-01"),
        (True, "ISO-8601 string or epoch milliseconds"),
        (None, "ISO-8601 string or epoch milliseconds"),
        (float("nan"), "outside 1970-01-01"),
        (float("inf"), "outside 1970-01-01"),
        (10**30, "outside 1970-01-01"),
    ],
)
def test_timestamp_rejections(raw: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ClickstreamEvent.model_validate(click(timestamp=raw))
    (error,) = info.value.errors()
    assert error["loc"] == ("timestamp",)
    assert message in error["msg"]


def test_future_timestamp_bounded_by_skew() -> None:
    edge = NOW + timedelta(seconds=LIMITS.max_future_skew_s)
    ClickstreamEvent.model_validate(click(timestamp=edge.isoformat()), context=ctx())
    late = edge + timedelta(milliseconds=1)
    with pytest.raises(ValidationError, match=r"more than 300\.0s after now"):
        ClickstreamEvent.model_validate(click(timestamp=late.isoformat()), context=ctx())
    # Without a clock (schema examples) there is no future check.
    ClickstreamEvent.model_validate(click(timestamp=late.isoformat()))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("price", True, "valid number"),
        ("price", "9.99", "valid number"),
        ("price", -0.01, "greater than or equal to 0"),
        ("price", float("nan"), "finite number"),
        ("price", float("inf"), "finite number"),
        ("price", 1_000_000.01, "less than or equal to 1000000.0"),
        ("quantity", True, "valid integer"),
        ("quantity", 1.5, "valid integer"),
        ("quantity", 0, "greater than or equal to 1"),
        ("quantity", 10_001, "less than or equal to 10000"),
        ("event_id", "", "at least 1 character"),
        ("event_id", "   ", "leading/trailing whitespace"),
        ("customer_id", " cust-1", "leading/trailing whitespace"),
        ("customer_id", "cust\n1", "control characters"),
        ("customer_id", "c" * 129, "at most 128 characters"),
        ("customer_id", 42, "valid string"),
        ("url", "u" * 2049, "at most 2048 characters"),
        ("event_type", "checkout", "Input should be 'session_start'"),
    ],
)
def test_field_rejections(field: str, value: object, message: str) -> None:
    doc = click(**{"event_type": "add_to_cart", "product_id": "sku-1", field: value})
    with pytest.raises(ValidationError) as info:
        ClickstreamEvent.model_validate(doc)
    errors = info.value.errors()
    assert errors[0]["loc"] == (field,)
    assert message in errors[0]["msg"]


def test_limits_come_from_context() -> None:
    tight = ValidationLimits(max_id_length=4, max_amount=10.0, max_quantity=2)
    doc = click(event_type="add_to_cart", product_id="sku-1", price=11.0, quantity=3)
    ClickstreamEvent.model_validate(doc)  # fine with defaults
    with pytest.raises(ValidationError) as info:
        ClickstreamEvent.model_validate(doc, context=ctx(limits=tight))
    locs = {e["loc"] for e in info.value.errors()}
    assert locs == {
        ("event_id",),
        ("customer_id",),
        ("session_id",),
        ("product_id",),
        ("price",),
        ("quantity",),
    }


def test_extra_fields_ignored_and_not_stored() -> None:
    event = ClickstreamEvent.model_validate(click(referrer="x", nested={"a": [1]}))
    assert "referrer" not in event.model_dump()
    with pytest.raises(ValidationError):
        event.customer_id = "other"  # type: ignore[misc]


# --- PurchaseEvent --------------------------------------------------------------------------------


def test_purchase_order_and_refund() -> None:
    order = PurchaseEvent.model_validate(purchase(), context=ctx())
    assert order.kind == "purchase"
    assert [i.quantity for i in order.items] == [2, 1]
    refund = PurchaseEvent.model_validate(purchase(type="refund", items=[], total=10.0))
    assert refund.total == 10.0


def test_total_within_tolerance_is_accepted() -> None:
    # 1% relative + 0.01 absolute of max(total, sum): 25.5 * 1.01 + 0.01 = 25.765
    PurchaseEvent.model_validate(purchase(total=25.76))
    PurchaseEvent.model_validate(purchase(total=25.26))


def test_total_mismatch_names_both_numbers() -> None:
    with pytest.raises(ValidationError) as info:
        PurchaseEvent.model_validate(purchase(total=30.0))
    (error,) = info.value.errors()
    assert error["type"] == "total_mismatch"
    assert error["loc"] == ("total",)
    assert "total 30.0 differs from sum(quantity * unit_price) 25.5" in error["msg"]


def test_refund_total_not_checked_against_partial_items() -> None:
    PurchaseEvent.model_validate(purchase(type="refund", total=5.0))


def test_free_order_is_an_order() -> None:
    # Promotions and replacements: items priced 0, total 0.
    free = PurchaseEvent.model_validate(purchase(
        items=[{"product_id": "sku-1", "quantity": 2, "unit_price": 0.0}], total=0.0))
    assert free.type == "order"
    assert free.total == 0.0


@pytest.mark.parametrize(
    ("overrides", "loc", "message"),
    [
        ({"items": []}, ("items",), "at least 1 item"),
        ({"total": 0, "type": "refund", "items": []}, ("total",), "greater than 0 for a refund"),
        ({"total": -5.0, "type": "refund", "items": []}, ("total",), "greater than or equal to 0"),
        ({"total": -5.0}, ("total",), "greater than or equal to 0"),
        ({"currency": "eur"}, ("currency",), "should match pattern"),
        ({"currency": "EURO"}, ("currency",), "should match pattern"),
        ({"type": "chargeback"}, ("type",), "'order' or 'refund'"),
        (
            {"items": [{"product_id": "sku-1", "quantity": 0, "unit_price": 1.0}], "total": 1.0},
            ("items", 0, "quantity"),
            "greater than or equal to 1",
        ),
        (
            {"items": [{"product_id": "sku-1", "quantity": 1, "unit_price": False}], "total": 1.0},
            ("items", 0, "unit_price"),
            "valid number",
        ),
    ],
)
def test_purchase_rejections(overrides: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        PurchaseEvent.model_validate(purchase(**overrides))
    errors = info.value.errors()
    assert errors[0]["loc"] == loc
    assert message in errors[0]["msg"]


def test_items_per_order_limit() -> None:
    limits = ValidationLimits(max_items_per_order=1)
    with pytest.raises(ValidationError, match="at most 1 items"):
        PurchaseEvent.model_validate(purchase(), context=ctx(limits=limits))


# --- decode_message -------------------------------------------------------------------------------


def test_decode_single_event() -> None:
    decoded = decode_click(click())
    assert decoded.rejections == []
    (event,) = decoded.events
    assert isinstance(event, ClickstreamEvent)
    assert event.customer_id == "cust-1"


def test_decode_without_key_skips_customer_check() -> None:
    assert len(decode_click(click(customer_id="someone-else"), key=None).events) == 1


def test_decode_single_customer_mismatch() -> None:
    rejection = only_rejection(decode_click(click(customer_id="cust-2")))
    assert rejection.reason == "customer_mismatch"
    assert rejection.detail == "customer_id: 'cust-2' does not match message key 'cust-1'"
    assert rejection.index is None


def test_decode_batch_keeps_valid_and_rejects_each_invalid_with_index() -> None:
    batch = {
        "batch_id": "b-1",
        "sent_at": "2024-05-01T12:00:00Z",
        "producer": "ignored",
        "events": [
            click(event_id="e0"),
            click(event_id="e1", customer_id="cust-2"),
            click(event_id="e2", event_type="search"),
            "not an object",
            click(event_id="e4", event_type="add_to_cart", product_id="sku-1"),
        ],
    }
    decoded = decode_click(batch)
    assert [e.event_id for e in decoded.events] == ["e0", "e4"]
    assert [(r.index, r.reason) for r in decoded.rejections] == [
        (1, "customer_mismatch"),
        (2, "schema"),
        (3, "not_object"),
    ]
    mismatch, missing, not_object = decoded.rejections
    assert mismatch.detail.startswith("events[1].customer_id: 'cust-2'")
    assert missing.detail == "events[2].query: Field required for event_type 'search'"
    assert not_object.detail == "events[3]: expected a JSON object, got str"
    assert orjson.loads(mismatch.raw) == batch["events"][1]
    assert not_object.raw == b'"not an object"'


def test_decode_batch_nested_location_in_detail() -> None:
    bad_item = {"product_id": "sku-1", "quantity": 0, "unit_price": 1.0}
    decoded = decode_purchase({"events": [purchase(), purchase(items=[bad_item], total=1.0)]})
    assert len(decoded.events) == 1
    (rejection,) = decoded.rejections
    assert rejection.index == 1
    assert rejection.detail == (
        "events[1].items[0].quantity: Input should be greater than or equal to 1"
    )


@pytest.mark.parametrize(
    ("doc", "reason", "detail"),
    [
        (click(event_type="checkout"), "unknown_event_type", "event_type: Input should be"),
        (
            click(timestamp="2024-05-01T13:00:00Z"),
            "future_timestamp",
            "timestamp: Timestamp 2024-05-01T13:00:00+00:00 is more than 300.0s after now",
        ),
        (purchase(), "wrong_topic", "looks like a purchase event (has order_id, items, total)"),
        (click(timestamp=None), "schema", "timestamp: Input should be an ISO-8601 string"),
        (
            {"events": {"a": 1}},
            "bad_envelope",
            "events: expected a list of event objects, got dict",
        ),
        ({"events": []}, "empty_batch", "events: batch is empty"),
        ([click()], "not_object", "expected a JSON object (event or batch envelope), got list"),
        ("text", "not_object", "got str"),
        (None, "not_object", "got NoneType"),
    ],
)
def test_decode_clickstream_rejections(doc: Any, reason: str, detail: str) -> None:
    rejection = only_rejection(decode_click(doc))
    assert rejection.reason == reason
    assert detail in rejection.detail
    assert rejection.raw == orjson.dumps(doc)


@pytest.mark.parametrize(
    ("doc", "reason", "detail"),
    [
        (purchase(total=99.0), "total_mismatch", "total: total 99.0 differs from sum"),
        (click(), "wrong_topic", "looks like a clickstream event (has event_type)"),
        (purchase(customer_id="cust-9"), "customer_mismatch", "'cust-9' does not match"),
    ],
)
def test_decode_purchase_rejections(doc: Any, reason: str, detail: str) -> None:
    rejection = only_rejection(decode_purchase(doc))
    assert rejection.reason == reason
    assert detail in rejection.detail


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty_value"),
        (b"", "empty_value"),
        (b"\xff\xfe{}", "undecodable"),
        (b'{"customer_id": "\xc3\x28"}', "undecodable"),
        (b"{", "not_json"),
        (b"NaN", "not_json"),
        (b'{"price": Infinity}', "not_json"),
        (b"[" * 2000 + b"]" * 2000, "not_json"),
    ],
)
def test_decode_unparseable(value: bytes | None, reason: str) -> None:
    rejection = only_rejection(decode_message(value, KEY, "clickstream", limits=LIMITS, now=NOW))
    assert rejection.reason == reason
    assert rejection.index is None
    assert rejection.raw == (value or b"")


def test_decode_oversized_checked_before_parsing() -> None:
    limits = ValidationLimits(max_payload_bytes=64)
    value = b"{" + b" " * 100  # would be not_json if parsed
    decoded = decode_message(value, KEY, "clickstream", limits=limits, now=NOW)
    rejection = only_rejection(decoded)
    assert rejection.reason == "oversized"
    assert rejection.detail == "message value is 101 bytes; limit is 64"


def test_decode_too_many_events() -> None:
    limits = ValidationLimits(max_events_per_message=2)
    value = orjson.dumps({"events": [click()] * 3})
    rejection = only_rejection(decode_message(value, KEY, "clickstream", limits=limits, now=NOW))
    assert rejection.reason == "too_many_events"
    assert rejection.detail == "events: 3 events; limit is 2"


def test_decode_batch_element_too_deep_to_reserialise_keeps_whole_message() -> None:
    # orjson parses up to 1024 levels but serialises only 254: re-serialising the element fails.
    deep = b"[" * 400 + b"0" + b"]" * 400
    value = b'{"events": [' + orjson.dumps(click()) + b", " + deep + b"]}"
    decoded = decode_message(value, KEY, "clickstream", limits=LIMITS, now=NOW)
    assert len(decoded.events) == 1
    (rejection,) = decoded.rejections
    assert rejection.reason == "not_object"
    assert rejection.raw == value


def test_decode_requires_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decode_message(b"{}", None, "clickstream", limits=LIMITS, now=datetime(2024, 1, 1))


@settings(max_examples=300)
@given(st.binary(max_size=512))
def test_decode_never_raises_on_arbitrary_bytes(value: bytes) -> None:
    for source in ("clickstream", "purchases"):
        decoded = decode_message(value, KEY, source, limits=LIMITS, now=NOW)
        assert decoded.events or decoded.rejections
        assert all(r.reason in REJECT_REASONS for r in decoded.rejections)


_json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_field_names = st.sampled_from(
    [
        "event_id", "customer_id", "event_type", "timestamp", "session_id", "product_id",
        "price", "quantity", "query", "order_id", "type", "items", "total", "currency", "events",
    ]
)  # fmt: skip


@settings(max_examples=300)
@given(st.dictionaries(_field_names, _json, max_size=10) | _json)
def test_decode_never_raises_on_arbitrary_json(doc: Any) -> None:
    value = orjson.dumps(doc)
    for source in ("clickstream", "purchases"):
        decoded = decode_message(value, None, source, limits=LIMITS, now=NOW)
        assert decoded.events or decoded.rejections


_ids = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), min_size=1, max_size=40
)
_event_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2024, 5, 1), timezones=st.just(UTC)
)


@given(
    customer_id=_ids,
    event_type=st.sampled_from(["page_view", "product_view", "add_to_cart", "search"]),
    timestamp=_event_times,
    price=st.none() | st.floats(min_value=0, max_value=1_000_000.0),
)
def test_event_json_round_trips_through_decode(
    customer_id: str, event_type: str, timestamp: datetime, price: float | None
) -> None:
    event = ClickstreamEvent.model_validate(
        click(
            customer_id=customer_id,
            event_type=event_type,
            timestamp=timestamp.isoformat(),
            product_id="sku-1",
            query="q",
            price=price,
        )
    )
    decoded = decode_message(
        event_json(event), customer_id.encode(), "clickstream", limits=LIMITS, now=NOW
    )
    assert decoded.rejections == []
    assert decoded.events == [event]


def test_parse_timestamp_helper() -> None:
    assert parse_timestamp(1714564800000) == NOW
    assert parse_timestamp("2024-05-01T14:00:00+02:00") == NOW
    with pytest.raises(ValueError, match="after"):
        parse_timestamp("2024-05-01T13:00:00Z", now=NOW)
    with pytest.raises(ValueError, match="UTC offset"):
        parse_timestamp("2024-05-01T12:00:00")


def test_float_epoch_ms_is_finite_checked() -> None:
    assert math.isfinite(parse_timestamp(1714564800000.0).timestamp())


def test_core_contracts_stay_pure() -> None:
    code = (
        "import sys, streamproc.core.events, streamproc.core.outputs;"
        "bad = {'faust', 'redis', 'aiokafka', 'prometheus_client', 'streamproc.settings'};"
        "print(sorted(bad & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
