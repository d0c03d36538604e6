"""The read API's pure parts: times, readable documents, ids, risk levels, page cursors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamproc.api import (
    COUNT_FIELDS,
    RISK_LEVELS,
    STORED_NAMES,
    CustomerReport,
    InvalidCursor,
    MemberFilter,
    PageCursor,
    check_customer_id,
    readable_profile,
    risk_level,
)
from streamproc.core.outputs import AlertValue, ChurnAlert, SegmentInfo
from streamproc.settings import Settings
from streamproc.times import iso_utc, parse_time

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_iso_utc_is_the_output_topics_format() -> None:
    alert = ChurnAlert.build(
        customer_id="c", churn_probability=0.9, threshold=0.7, risk_level="critical",
        customer_value=1.0, segment=SegmentInfo(segment_id=1, name="x"), reasons=[],
        model_version=1, event_time=NOW + timedelta(microseconds=123000), emitted_at=NOW,
        value=AlertValue(expected_value=90.0, horizon_days=30.0, value_at_risk=81.0,
                         value_tier="high", lifecycle_stage="at_risk", priority=1,
                         trigger="entered_risk"))
    doc = alert.model_dump(mode="json")
    assert iso_utc(NOW + timedelta(microseconds=123000)) == doc["event_time"]
    assert iso_utc(NOW) == doc["emitted_at"] == "2026-03-01T12:00:00Z"
    assert iso_utc(NOW.timestamp()) == "2026-03-01T12:00:00Z"
    assert iso_utc(NOW.astimezone(timezone(timedelta(hours=5)))) == "2026-03-01T12:00:00Z"


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-03-01T12:00:00Z", NOW),
    ("2026-03-01T13:00:00+01:00", NOW),
    ("2026-03-01T12:00:00", NOW),  # no offset: UTC
    (str(round(NOW.timestamp() * 1000)), NOW),
    ("0", datetime(1970, 1, 1, tzinfo=UTC)),
    ("now", None), (" NOW ", None),
])
def test_parse_time_accepts_iso_epoch_ms_and_now(text: str, expected: datetime | None) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(("text", "words"), [
    ("yesterday", "not a time"), ("", "not a time"), ("-5", "not a time"),
    ("9" * 30, "not a time"), ("1.5e12", "not a time"),
    ("1969-12-31T23:59:59Z", "before 1970"),
])
def test_parse_time_rejects_with_the_reason(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_time(text)


def test_readable_profile_one_time_format_and_whole_counts() -> None:
    raw = {"customer_id": "c", "as_of": NOW.timestamp(), "events": 20.0, "orders": 3.0,
           "revenue": 12.5, "views_7d": 2.0, "first_seen_at": NOW.timestamp() - 86_400,
           "recency_days": 1.5, "top_category": "toys"}
    doc = readable_profile(raw)
    assert "customer_id" not in doc
    assert "as_of" not in doc
    assert doc["events"] == 20
    assert isinstance(doc["events"], int)
    assert isinstance(doc["revenue"], float)
    assert isinstance(doc["views_7d"], float)  # decayed counts are not whole things
    assert doc["first_seen_at"] == "2026-02-28T12:00:00Z"
    # Every stored field has a key: a count never moved is 0, a time never reached null.
    assert doc["last_order_at"] is None
    assert doc["refunds"] == 0
    assert isinstance(doc["refunds"], int)
    assert doc["refund_amount"] == 0.0
    assert set(STORED_NAMES) <= set(doc)
    assert set(STORED_NAMES) | {"distinct_categories"} >= COUNT_FIELDS


def test_customer_document_has_one_time_format() -> None:
    report = CustomerReport("c", NOW, {"last_seen_at": NOW.timestamp()}, 3,
                            rfm_scores=(5, 1, 2))
    doc = report.to_dict()
    assert doc["as_of"] == doc["profile"]["last_seen_at"] == "2026-03-01T12:00:00Z"
    assert doc["rfm_scores"] == {"recency": 5, "frequency": 1, "monetary": 2}


@pytest.mark.parametrize("bad", ["", " x", "x ", "a\x01b", "x" * 129])
def test_customer_ids_follow_the_input_contract(bad: str) -> None:
    with pytest.raises(ValueError, match="customer id"):
        check_customer_id(bad, Settings().ingest.max_id_length)
    assert check_customer_id("c-000123/ä", 128) == "c-000123/ä"


def test_risk_levels_split_the_band_above_the_threshold() -> None:
    assert [risk_level(p, 0.7) for p in (0.1, 0.69, 0.7, 0.81, 0.9, 1.0)] == \
        ["low", "low", "medium", "high", "critical", "critical"]
    assert RISK_LEVELS == ("low", "medium", "high", "critical")


# SCAN cursors are unsigned 64-bit integers.
@given(scan=st.integers(0, 2**64 - 1), after=st.none() | st.text(max_size=40),
       micros=st.integers(0, 4_000_000_000_000_000),
       version=st.none() | st.integers(1, 2**31))
def test_cursor_round_trips(scan: int, after: str | None, micros: int,
                            version: int | None) -> None:
    cursor = PageCursor(scan, after, datetime.fromtimestamp(micros / 1e6, UTC), version)
    token = cursor.encode()
    assert token.isascii()
    assert "=" not in token
    assert PageCursor.decode(token) == cursor


@pytest.mark.parametrize("token", ["", "not-a-cursor", "W10", "WzEsMiwzXQ",
                                   PageCursor(1, None, NOW, 1).encode()[:-3],
                                   "Wy0xLG51bGwsMCxudWxsXQ"])  # [-1, null, 0, null]
def test_foreign_cursors_are_refused(token: str) -> None:
    with pytest.raises(InvalidCursor, match="invalid cursor"):
        PageCursor.decode(token)


def test_member_filter() -> None:
    def report(segment: int, level: str | None) -> CustomerReport:
        return CustomerReport("c", NOW, {}, 1, segment_id=segment, risk_level=level)

    assert MemberFilter().keeps(report(1, None))
    assert MemberFilter(segment_id=1).keeps(report(1, "low"))
    assert not MemberFilter(segment_id=2).keeps(report(1, "low"))
    high = MemberFilter(risk_levels=frozenset({"high", "critical"}))
    assert high.keeps(report(1, "critical"))
    assert not high.keeps(report(1, "low"))
    assert not high.keeps(report(1, None))  # churn model not ready: no level yet
