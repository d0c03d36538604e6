"""Output contracts: stable ids, closed frozen models, byte round-trips, dead letters."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from streamproc.core.events import REJECT_REASONS, Rejection
from streamproc.core.outputs import (
    DEAD_LETTER_MAX_BYTES,
    MAX_RECORD_BYTES,
    AlertValue,
    ChurnAlert,
    DeadLetter,
    Reason,
    SegmentChanged,
    SegmentInfo,
    alert_id,
    stable_id,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LOYAL = SegmentInfo(segment_id=2, name="loyal_regulars", profile={"recency_days": 6.0})
DRIFTING = SegmentInfo(segment_id=4, name="drifting_away", profile={"recency_days": 47.0})


def segment_changed(**overrides: Any) -> SegmentChanged:
    kwargs: dict[str, Any] = {
        "customer_id": "cust-1",
        "previous": LOYAL,
        "current": DRIFTING,
        "rfm_tier": "at_risk",
        "value_tier": "high",
        "lifecycle_stage": "at_risk",
        "model_version": 3,
        "event_time": T0,
        "emitted_at": T0 + timedelta(seconds=1),
    }
    kwargs.update(overrides)
    return SegmentChanged.build(**kwargs)


def churn_alert(**overrides: Any) -> ChurnAlert:
    kwargs: dict[str, Any] = {
        "customer_id": "cust-1",
        "churn_probability": 0.83,
        "threshold": 0.7,
        "risk_level": "high",
        "customer_value": 812.5,
        "value": AlertValue(expected_value=200.0, horizon_days=30.0, value_at_risk=166.0,
                            value_tier="high", lifecycle_stage="at_risk", priority=1,
                            trigger="entered_risk"),
        "segment": DRIFTING,
        "reasons": [Reason(feature="recency_days", contribution=0.3, text="no order for 41 days")],
        "model_version": 5,
        "event_time": T0,
        "emitted_at": T0 + timedelta(seconds=2),
    }
    kwargs.update(overrides)
    return ChurnAlert.build(**kwargs)


def test_stable_id_is_deterministic_and_unambiguous() -> None:
    assert stable_id("a", "b") == stable_id("a", "b")
    assert len(stable_id("a")) == 32
    assert stable_id("ab", "c") != stable_id("a", "bc")
    assert stable_id("a", "") != stable_id("a")


def test_segment_changed_id_depends_on_customer_time_and_segment_only() -> None:
    base = segment_changed()
    assert base.id == segment_changed(emitted_at=T0 + timedelta(hours=1), rfm_tier=None).id
    assert base.id == segment_changed(event_time=T0.astimezone(timezone(timedelta(hours=2)))).id
    assert base.id != segment_changed(customer_id="cust-2").id
    assert base.id != segment_changed(event_time=T0 + timedelta(milliseconds=1)).id
    assert base.id != segment_changed(current=LOYAL, previous=DRIFTING).id


def test_churn_alert_id_is_the_one_rule_of_customer_time_and_model_version() -> None:
    base = churn_alert()
    assert base.alert_id == alert_id(base.customer_id, T0.timestamp(), base.model_version)
    assert base.alert_id == churn_alert(emitted_at=T0 + timedelta(hours=1)).alert_id
    assert base.alert_id != churn_alert(event_time=T0 + timedelta(milliseconds=1)).alert_id
    assert base.alert_id != churn_alert(model_version=base.model_version + 1).alert_id
    assert base.alert_id != churn_alert(customer_id="cust-2").alert_id


@pytest.mark.parametrize(
    "model",
    [
        LOYAL,
        segment_changed(),
        segment_changed(previous=None),
        churn_alert(),
        churn_alert(segment=None, reasons=[]),
        Reason(feature="orders_30d", contribution=-0.1, text="3 orders in 30 days"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_bytes_round_trip(model: Any) -> None:
    data = model.to_bytes()
    assert type(model).from_bytes(data) == model
    assert orjson.loads(data) == model.model_dump(mode="json")


def test_times_are_normalised_to_utc_and_serialised_with_z() -> None:
    local = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    alert = churn_alert(event_time=local)
    assert alert.event_time == T0
    assert alert.event_time.tzinfo is UTC
    assert orjson.loads(alert.to_bytes())["event_time"] == "2024-05-01T12:00:00Z"


def test_naive_times_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        churn_alert(event_time=datetime(2024, 5, 1, 12, 0))


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"churn_probability": 1.01}, ("churn_probability",)),
        ({"churn_probability": -0.01}, ("churn_probability",)),
        ({"churn_probability": float("nan")}, ("churn_probability",)),
        ({"threshold": 2.0}, ("threshold",)),
        ({"risk_level": "low"}, ("risk_level",)),
        ({"customer_value": float("inf")}, ("customer_value",)),
        ({"model_version": -1}, ("model_version",)),
        ({"customer_id": ""}, ("customer_id",)),
    ],
)
def test_churn_alert_rejections(overrides: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        churn_alert(**overrides)
    assert info.value.errors()[0]["loc"] == loc


def test_outputs_are_closed_and_frozen() -> None:
    data = orjson.loads(churn_alert().to_bytes())
    data["surprise"] = 1
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ChurnAlert.from_bytes(orjson.dumps(data))
    with pytest.raises(ValidationError, match="frozen"):
        LOYAL.name = "other"  # type: ignore[misc]


def test_dead_letter_from_rejection() -> None:
    rejection = Rejection("customer_mismatch", "events[1].customer_id: ...", 1, b'{"a":1}')
    letter = DeadLetter.from_rejection(
        rejection, key=b"cust-1", topic="clickstream", partition=3, offset=99, received_at=T0
    )
    assert letter.original_bytes() == b'{"a":1}'
    assert letter.key_bytes() == b"cust-1"
    assert letter.batch_index == 1
    assert letter.reason == "customer_mismatch"
    assert DeadLetter.from_bytes(letter.to_bytes()) == letter


def test_dead_letter_rejects_bad_base64_and_unknown_reason() -> None:
    good = orjson.loads(
        DeadLetter.from_rejection(
            Rejection("not_json", "x", None, b"{"),
            key=None,
            topic="purchases",
            partition=0,
            offset=0,
            received_at=T0,
        ).to_bytes()
    )
    assert good["key"] is None
    with pytest.raises(ValidationError, match="Invalid base64"):
        DeadLetter.model_validate({**good, "original": "not base64!"})
    with pytest.raises(ValidationError) as info:
        DeadLetter.model_validate({**good, "reason": "bad_vibes"})
    assert info.value.errors()[0]["loc"] == ("reason",)


@given(
    raw=st.binary(max_size=256),
    key=st.none() | st.binary(max_size=64),
    reason=st.sampled_from(sorted(REJECT_REASONS)),
    index=st.none() | st.integers(min_value=0, max_value=999),
    detail=st.text(max_size=100),
)
def test_dead_letter_preserves_any_bytes(
    raw: bytes, key: bytes | None, reason: Any, index: int | None, detail: str
) -> None:
    letter = DeadLetter.from_rejection(
        Rejection(reason, detail, index, raw),
        key=key,
        topic="clickstream",
        partition=1,
        offset=7,
        received_at=T0,
    )
    restored = DeadLetter.from_bytes(letter.to_bytes())
    assert restored.original_bytes() == raw
    assert restored.key_bytes() == key
    assert restored.detail == detail


def _letter(raw: bytes, key: bytes | None = b"cust-1", detail: str = "too big",
            max_bytes: int = DEAD_LETTER_MAX_BYTES) -> DeadLetter:
    return DeadLetter.from_rejection(Rejection("oversized", detail, None, raw), key=key,
                                     topic="clickstream", partition=2, offset=41,
                                     received_at=T0, max_bytes=max_bytes)


def _record_size(letter: DeadLetter) -> int:
    """Key plus value, as published (runtime/pipeline.py sends ``key_bytes()`` as the key)."""
    return len(letter.to_bytes()) + len(letter.key_bytes() or b"")


def test_a_dead_letter_of_a_huge_message_fits_the_producer_and_says_where_the_rest_is() -> None:
    raw = bytes(range(256)) * (5 * 4096)  # 5 MiB, every byte value
    key = b"k" * 5000
    letter = _letter(raw, key=key, detail=f"key {key!r} " * 100)
    value = letter.to_bytes()
    assert DEAD_LETTER_MAX_BYTES - 4 <= _record_size(letter) <= DEAD_LETTER_MAX_BYTES
    # What aiokafka checks against the producer's max_request_size before sending.
    framed = DefaultRecordBatchBuilder.estimate_size_in_bytes(letter.key_bytes(), value, [])
    assert framed <= MAX_RECORD_BYTES
    assert letter.original_truncated
    assert raw.startswith(letter.original_bytes())
    assert len(letter.original_bytes()) > 700_000  # as much as fits is kept
    assert letter.original_size == len(raw)
    assert letter.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert letter.key_truncated
    assert letter.key_bytes() == key[:1024]
    assert len(letter.detail) == 2000
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "clickstream", 2, 41)
    assert DeadLetter.from_bytes(value) == letter


def test_a_dead_letter_keeps_the_whole_message_while_it_fits() -> None:
    # Base64 grows 3 bytes to 4 characters: about 3/4 of the bound fits whole.
    fits = 740_000
    whole = _letter(b"x" * fits)
    assert not whole.original_truncated
    assert whole.original_bytes() == b"x" * fits
    cut = _letter(b"x" * 760_000)
    assert cut.original_truncated
    assert _record_size(cut) <= DEAD_LETTER_MAX_BYTES


@given(
    raw=st.binary(max_size=40_000),
    key=st.none() | st.binary(max_size=3000),
    detail=st.text(max_size=3000),
    max_bytes=st.integers(min_value=20_000, max_value=50_000),
)
def test_a_dead_letter_never_exceeds_its_bound(raw: bytes, key: bytes | None, detail: str,
                                               max_bytes: int) -> None:
    letter = _letter(raw, key=key, detail=detail, max_bytes=max_bytes)
    assert _record_size(letter) <= max_bytes
    kept = letter.original_bytes()
    assert raw.startswith(kept)
    assert letter.original_truncated == (kept != raw)
    assert letter.original_size == len(raw)
    assert letter.original_sha256 == hashlib.sha256(raw).hexdigest()
    assert letter.key_truncated == (key is not None and len(key) > 1024)
    assert DeadLetter.from_bytes(letter.to_bytes()) == letter
