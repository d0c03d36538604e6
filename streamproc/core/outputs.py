"""Output contracts: segment changes, churn alerts and dead letters published to Kafka.

Pure: imports only pydantic, orjson and the standard library. Models are frozen and forbid
unknown fields, so a consumer parsing with ``from_bytes`` notices contract drift immediately.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import UTC, datetime
from typing import Annotated, Final, Literal, Self

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
    "DEAD_LETTER_MAX_BYTES",
    "MAX_RECORD_BYTES",
    "ChurnAlert",
    "DeadLetter",
    "LifecycleChanged",
    "Reason",
    "RiskLevel",
    "SegmentChanged",
    "SegmentInfo",
    "alert_id",
    "stable_id",
]

_ID_HEX_CHARS = 32

#: Largest Kafka record streamproc publishes, framing included: Kafka's default producer
#: ``max.request.size``, under the default broker and topic limits (``message.max.bytes`` and
#: ``max.message.bytes``, 1,048,588). The worker's producer is set to it (runtime/app.py).
MAX_RECORD_BYTES: Final = 1_000_000
#: A dead letter's key plus value stay under this: what the producer and broker count on top
#: (record and batch headers, length varints: under 100 bytes in aiokafka's estimate) fits in
#: the 1 KiB left.
DEAD_LETTER_MAX_BYTES: Final = MAX_RECORD_BYTES - 1024
#: Longest message key a dead letter keeps (a valid key, a customer id, is at most 512 bytes).
DEAD_LETTER_MAX_KEY_BYTES: Final = 1024
#: Longest ``detail`` a dead letter keeps (a detail may quote an arbitrarily long key).
DEAD_LETTER_MAX_DETAIL_CHARS: Final = 2000
_NonEmpty = Annotated[str, Field(min_length=1, max_length=256)]
_Finite = Annotated[float, AllowInfNan(False)]
_Probability = Annotated[float, AllowInfNan(False), at.Ge(0.0), at.Le(1.0)]
_NonNegativeInt = Annotated[int, at.Ge(0)]
_Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

RiskLevel = Literal["medium", "high", "critical"]
ValueTier = Literal["high", "medium", "low"]
LifecycleStage = Literal["new", "active", "at_risk", "lapsed", "won_back"]
AlertTrigger = Literal["entered_risk", "value_at_risk_grew"]
_Money = Annotated[float, AllowInfNan(False), at.Ge(0.0)]
#: Priority by value tier: 1 high, 2 medium, 3 low (see :func:`alert_priority`).
_Priority = Annotated[int, at.Ge(1), at.Le(3)]


def alert_priority(value_tier: ValueTier) -> int:
    """1 for a high-value customer, 2 medium, 3 low: consume 1 first, then by value at risk."""
    return {"high": 1, "medium": 2, "low": 3}[value_tier]


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
    value_tier: ValueTier
    lifecycle_stage: LifecycleStage
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
        value_tier: ValueTier,
        lifecycle_stage: LifecycleStage,
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
            value_tier=value_tier,
            lifecycle_stage=lifecycle_stage,
            model_version=model_version,
            event_time=event_time,
            emitted_at=emitted_at,
        )


class Reason(_Output):
    """One driver of a churn score, in words a CRM user understands."""

    feature: _NonEmpty
    contribution: _Finite
    text: _NonEmpty  # e.g. "no order for 41 days"


class AlertValue(_Output):
    """What is at stake with an alerted customer."""

    expected_value: _Money = Field(description="Expected spend over the next horizon_days.")
    horizon_days: Annotated[float, AllowInfNan(False), at.Gt(0.0)]
    value_at_risk: _Money = Field(description="churn_probability x expected_value.")
    value_tier: ValueTier
    lifecycle_stage: LifecycleStage
    priority: _Priority = Field(description="1 high value tier, 2 medium, 3 low; consume 1 "
                                "first and, within a priority, by value_at_risk descending.")
    trigger: AlertTrigger = Field(description="entered_risk: the first alert of an at-risk "
                                  "episode; value_at_risk_grew: the episode's value at risk "
                                  "grew by ALERT_REARM_FACTOR since its last alert.")


class ChurnAlert(_Output):
    """A customer's churn probability crossed the alert threshold (one per at-risk episode)."""

    alert_id: _NonEmpty  # alert_id(customer_id, event_time, model_version): one id, one alert
    customer_id: _NonEmpty
    churn_probability: _Probability
    threshold: _Probability
    risk_level: RiskLevel
    customer_value: _Finite  # net spend so far
    value: AlertValue
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
        value: AlertValue,
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
            value=value,
            segment=segment,
            reasons=reasons,
            model_version=model_version,
            event_time=event_time,
            emitted_at=emitted_at,
        )


class LifecycleChanged(_Output):
    """A customer's lifecycle stage changed (``previous_stage`` None on the first one)."""

    id: _NonEmpty  # stable_id(customer_id, event_time, stage): idempotent replays
    customer_id: _NonEmpty
    previous_stage: LifecycleStage | None
    stage: LifecycleStage
    value_tier: ValueTier
    expected_value: _Money
    churn_probability: _Probability
    segment: SegmentInfo | None = None
    model_version: _NonNegativeInt
    event_time: UtcDatetime
    emitted_at: UtcDatetime

    @classmethod
    def build(
        cls,
        *,
        customer_id: str,
        previous_stage: LifecycleStage | None,
        stage: LifecycleStage,
        value_tier: ValueTier,
        expected_value: float,
        churn_probability: float,
        segment: SegmentInfo | None,
        model_version: int,
        event_time: datetime,
        emitted_at: datetime,
    ) -> LifecycleChanged:
        """Construct with the stable id derived from customer, event time and new stage."""
        return cls(
            id=stable_id("lifecycle_changed", customer_id, _time_part(event_time), stage),
            customer_id=customer_id, previous_stage=previous_stage, stage=stage,
            value_tier=value_tier, expected_value=expected_value,
            churn_probability=churn_probability, segment=segment,
            model_version=model_version, event_time=event_time, emitted_at=emitted_at,
        )


class DeadLetter(_Output):
    """A rejected input unit with where it came from and why; ``original`` is base64.

    A dead letter always fits one Kafka record (key and value within DEAD_LETTER_MAX_BYTES,
    just under the producer's 1,000,000-byte limit). When the rejected bytes do not fit,
    ``original`` keeps their first bytes and ``original_truncated`` is true;
    ``original_size`` and ``original_sha256`` always describe all of them, and the message
    itself stays in the input topic at ``source_topic``/``source_partition``/``source_offset``.
    """

    original: _Base64 = Field(description="The rejected bytes (the whole message, or the "
                              "batch element re-serialised), or their first bytes when "
                              "original_truncated.")
    original_truncated: bool = Field(description="True when the rejected bytes did not fit "
                                     "one Kafka record: original holds only their first "
                                     "bytes; fetch the message at the source coordinates.")
    original_size: _NonNegativeInt = Field(description="Length of the rejected bytes.")
    original_sha256: _Sha256 = Field(description="SHA-256 (hex) of the rejected bytes.")
    key: _Base64 | None = Field(description="The message key, or its first "
                                f"{DEAD_LETTER_MAX_KEY_BYTES} bytes when key_truncated.")
    key_truncated: bool = Field(description="True when the message key was longer than "
                                f"{DEAD_LETTER_MAX_KEY_BYTES} bytes.")
    source_topic: _NonEmpty
    source_partition: _NonNegativeInt
    source_offset: _NonNegativeInt
    batch_index: _NonNegativeInt | None
    reason: RejectReason
    detail: str = Field(description="What was wrong, for people (at most "
                        f"{DEAD_LETTER_MAX_DETAIL_CHARS} characters).")
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
        max_bytes: int = DEAD_LETTER_MAX_BYTES,
    ) -> DeadLetter:
        """Wrap a decoder rejection with its Kafka coordinates, within ``max_bytes``.

        ``max_bytes`` bounds the record's JSON plus the key it is published with
        (:meth:`key_bytes`); the rejected bytes are cut to what room the rest leaves.
        """
        raw = rejection.raw
        kept_key = None if key is None else key[:DEAD_LETTER_MAX_KEY_BYTES]
        detail = rejection.detail
        if len(detail) > DEAD_LETTER_MAX_DETAIL_CHARS:
            detail = detail[:DEAD_LETTER_MAX_DETAIL_CHARS - 1] + "…"
        letter = cls(
            original="",
            original_truncated=False,
            original_size=len(raw),
            original_sha256=hashlib.sha256(raw).hexdigest(),
            key=None if kept_key is None else base64.b64encode(kept_key).decode("ascii"),
            key_truncated=key is not None and len(key) > DEAD_LETTER_MAX_KEY_BYTES,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            batch_index=rejection.index,
            reason=rejection.reason,
            detail=detail,
            received_at=received_at,
        )
        # Base64 takes 4 characters per 3 bytes; "true" is one character shorter than "false".
        room = max_bytes - len(kept_key or b"") - len(letter.to_bytes())
        kept = max(0, room) // 4 * 3
        update: dict[str, object] = {"original": base64.b64encode(raw[:kept]).decode("ascii")}
        if len(raw) > kept:
            update["original_truncated"] = True
        return letter.model_copy(update=update)

    def original_bytes(self) -> bytes:
        """The rejected bytes (their first bytes when ``original_truncated``), for replay."""
        return base64.b64decode(self.original)

    def key_bytes(self) -> bytes | None:
        """The message key (its first bytes when ``key_truncated``), if there was one."""
        return None if self.key is None else base64.b64decode(self.key)
