"""Output contracts: stable ids, closed frozen models, byte round-trips, dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from streamproc.core.events import REJECT_REASONS, Rejection
from streamproc.core.outputs import (
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
