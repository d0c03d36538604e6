"""Output contracts: segment changes, churn alerts and dead letters published to Kafka.

Pure: imports only pydantic, orjson and the standard library. Models are frozen and forbid
unknown fields, so a consumer parsing with ``from_bytes`` notices contract drift immediately.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import UTC, datetime
from typing import Annotated, Literal, Self

import annotated_types as at
import orjson
from pydantic import (
    AfterValidator,
    AllowInfNan,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from streamproc.core.events import Rejection, RejectReason

__all__ = [
    "ChurnAlert",
    "DeadLetter",
    "Reason",
    "RiskLevel",
    "SegmentChanged",
    "SegmentInfo",
    "alert_id",
    "stable_id",
]

_ID_HEX_CHARS = 32
_NonEmpty = Annotated[str, Field(min_length=1, max_length=256)]
_Finite = Annotated[float, AllowInfNan(False)]
_Probability = Annotated[float, AllowInfNan(False), at.Ge(0.0), at.Le(1.0)]
_NonNegativeInt = Annotated[int, at.Ge(0)]

RiskLevel = Literal["medium", "high", "critical"]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


def _check_base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise PydanticCustomError(
            "base64", "Invalid base64: {error}", {"error": str(exc)}
        ) from None
    return value


_Base64 = Annotated[
    str,
    AfterValidator(_check_base64),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]


def stable_id(*parts: str) -> str:
    """Deterministic id: 32 hex chars of sha256 over length-prefixed parts (no join collisions)."""
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode()
        digest.update(f"{len(encoded)}:".encode())
        digest.update(encoded)
    return digest.hexdigest()[:_ID_HEX_CHARS]


def _time_part(value: datetime) -> str:
    return _to_utc(value).isoformat()


def alert_id(customer_id: str, event_time: float, model_version: int) -> str:
    """The one churn-alert id rule: customer, the event time (ms) it fired at, model version.

    A customer alerts at most once per event time (the cooldown is positive), so the id
    names one alert episode; with the model version in it, an alert re-decided after a
    redelivery under another version (another probability) gets another id, and one id
    never carries two contents.
    """
    return stable_id("churn_alert", customer_id, str(round(event_time * 1000)),
                     str(model_version))


class _Output(BaseModel):
    """Frozen, closed contract with orjson (de)serialisation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_bytes(self) -> bytes:
        """JSON bytes as published (UTC timestamps in ISO-8601)."""
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, data: bytes | str) -> Self:
        """Parse and validate published JSON; raises pydantic.ValidationError on drift."""
        return cls.model_validate_json(data)


class SegmentInfo(_Output):
    """A customer segment as the online clustering names it."""

    segment_id: _NonNegativeInt
    name: _NonEmpty
    # Business-unit medians of the segment, e.g. {"recency_days": 12.0, "orders": 3.0}.
    profile: dict[str, _Finite] = Field(default_factory=dict)


class SegmentChanged(_Output):
    """A customer moved to another segment (or got a first one, ``previous=None``)."""

    id: _NonEmpty  # stable_id(customer_id, event_time, current.segment_id): idempotent replays
    customer_id: _NonEmpty
    previous: SegmentInfo | None
    current: SegmentInfo
    rfm_tier: _NonEmpty | None = None
    model_version: _NonNegativeInt
    event_time: UtcDatetime  # event time of the event that triggered the change
    emitted_at: UtcDatetime  # wall-clock time from the injected clock

    @classmethod
    def build(
        cls,
        *,
        customer_id: str,
        previous: SegmentInfo | None,
        current: SegmentInfo,
        rfm_tier: str | None,
        model_version: int,
        event_time: datetime,
        emitted_at: datetime,
    ) -> SegmentChanged:
        """Construct with the stable id derived from customer, event time and new segment."""
        return cls(
            id=stable_id(
                "segment_changed", customer_id, _time_part(event_time), str(current.segment_id)
            ),
            customer_id=customer_id,
            previous=previous,
            current=current,
            rfm_tier=rfm_tier,
            model_version=model_version,
            event_time=event_time,
            emitted_at=emitted_at,
        )


class Reason(_Output):
    """One driver of a churn score, in words a CRM user understands."""

    feature: _NonEmpty
    contribution: _Finite
    text: _NonEmpty  # e.g. "no order for 41 days"


class ChurnAlert(_Output):
    """A customer's churn probability crossed the alert threshold."""

    alert_id: _NonEmpty  # alert_id(customer_id, event_time, model_version): one id, one alert
    customer_id: _NonEmpty
    churn_probability: _Probability
    threshold: _Probability
    risk_level: RiskLevel
    customer_value: _Finite
    segment: SegmentInfo | None = None
    reasons: list[Reason] = Field(default_factory=list)
    model_version: _NonNegativeInt
    event_time: UtcDatetime
    emitted_at: UtcDatetime

    @classmethod
    def build(
        cls,
        *,
        customer_id: str,
        churn_probability: float,
        threshold: float,
        risk_level: RiskLevel,
        customer_value: float,
        segment: SegmentInfo | None,
        reasons: list[Reason],
        model_version: int,
        event_time: datetime,
        emitted_at: datetime,
    ) -> ChurnAlert:
        """Construct with the id :func:`alert_id` derives from customer, event time and version."""
        return cls(
            alert_id=alert_id(customer_id, event_time.timestamp(), model_version),
            customer_id=customer_id,
            churn_probability=churn_probability,
            threshold=threshold,
            risk_level=risk_level,
            customer_value=customer_value,
            segment=segment,
            reasons=reasons,
            model_version=model_version,
            event_time=event_time,
            emitted_at=emitted_at,
        )


class DeadLetter(_Output):
    """A rejected input unit with where it came from and why; ``original`` is base64."""

    original: _Base64
    key: _Base64 | None
    source_topic: _NonEmpty
    source_partition: _NonNegativeInt
    source_offset: _NonNegativeInt
    batch_index: _NonNegativeInt | None
    reason: RejectReason
    detail: str
    received_at: UtcDatetime

    @classmethod
    def from_rejection(
        cls,
        rejection: Rejection,
        *,
        key: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        received_at: datetime,
    ) -> DeadLetter:
        """Wrap a decoder rejection with its Kafka coordinates."""
        return cls(
            original=base64.b64encode(rejection.raw).decode("ascii"),
            key=None if key is None else base64.b64encode(key).decode("ascii"),
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            batch_index=rejection.index,
            reason=rejection.reason,
            detail=rejection.detail,
            received_at=received_at,
        )

    def original_bytes(self) -> bytes:
        """The rejected bytes, for replay after a fix."""
        return base64.b64decode(self.original)

    def key_bytes(self) -> bytes | None:
        """The original message key, if there was one."""
        return None if self.key is None else base64.b64decode(self.key)
