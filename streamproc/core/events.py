"""Input contracts (clickstream and purchase events) and the decoder for Kafka message values.

Pure: imports only pydantic, orjson and the standard library. Limits and the current time reach
validation through the pydantic context (``{"limits": ValidationLimits, "now": datetime}``); with
no context the models validate with ``DEFAULT_LIMITS`` and skip the future-timestamp check, which
is what schema examples and tests rely on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Final, Generic, Literal, TypeAlias, TypeVar, overload

import annotated_types as at
import orjson
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    Strict,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

__all__ = [
    "DEFAULT_LIMITS",
    "REJECT_REASONS",
    "BatchEnvelope",
    "ClickstreamEvent",
    "ClickstreamEventType",
    "Decoded",
    "Event",
    "LineItem",
    "PurchaseEvent",
    "RejectReason",
    "Rejection",
    "Source",
    "ValidationLimits",
    "decode_message",
    "event_json",
    "parse_timestamp",
]


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """Bounds applied to every incoming message; the defaults are what the JSON schemas state."""

    max_payload_bytes: int = 1_048_576
    max_id_length: int = 128
    max_events_per_message: int = 1000
    max_items_per_order: int = 500
    max_amount: float = 1_000_000.0
    max_quantity: int = 10_000
    # Relative gap allowed between total and sum(items), plus 0.01 absolute for rounding.
    total_tolerance: float = 0.01
    max_future_skew_s: float = 300.0


DEFAULT_LIMITS: Final = ValidationLimits()

#: Earliest accepted event time, the Unix epoch: not a business rule (history of any age
#: replays) but what the store can hold, since it keeps event times as unsigned integers
#: (dedupe records in milliseconds, session links in seconds).
MIN_TIMESTAMP: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_TS_MS: Final = 0.0
_MAX_TS_MS: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() * 1000.0
_ROUNDING_ABS: Final = 0.01
_MAX_TEXT: Final = 2048
_MAX_SHORT: Final = 64
_MAX_DETAIL_ERRORS: Final = 5

Source: TypeAlias = Literal["clickstream", "purchases"]

RejectReason: TypeAlias = Literal[
    "empty_value",  # value is None or b"" (tombstone): nothing to decode
    "oversized",  # value longer than max_payload_bytes; checked before parsing
    "undecodable",  # value is not valid UTF-8
    "not_json",  # valid UTF-8 but not JSON (syntax error, or nested deeper than 1024)
    "not_object",  # top-level JSON, or an element of a batch, is not an object
    "bad_envelope",  # object has an "events" key that is not a list
    "empty_batch",  # batch envelope with zero events
    "too_many_events",  # batch envelope with more than max_events_per_message events
    "unknown_event_type",  # clickstream event_type outside the closed set
    "wrong_topic",  # an event of the other topic (a purchase on clickstream or vice versa)
    "future_timestamp",  # event time more than max_future_skew_s after the decoder's now
    "total_mismatch",  # order total differs from sum(quantity * unit_price) beyond tolerance
    "schema",  # any other field-level violation; detail names the field path and the rule
    "customer_mismatch",  # event customer_id differs from the Kafka message key
    "internal_error",  # a validator raised something unexpected; a bug, never the producer's
    # Valid, but older than every event id the bounded dedupe remembers for the customer
    # and topic, so it cannot be told from a duplicate (decided in Redis, not by the decoder).
    "late_event",
]
REJECT_REASONS: Final[frozenset[str]] = frozenset(RejectReason.__args__)  # type: ignore[attr-defined]


# --- validation context -------------------------------------------------------------------------


def _limits(info: ValidationInfo) -> ValidationLimits:
    ctx = info.context
    if ctx is not None:
        limits = ctx.get("limits")
        if limits is not None:
            return limits  # type: ignore[no-any-return]
    return DEFAULT_LIMITS


def _latest_allowed(info: ValidationInfo) -> datetime | None:
    """now + max_future_skew_s, or None when validating without a clock."""
    ctx = info.context
    if ctx is None:
        return None
    latest = ctx.get("_latest")  # precomputed once per message by decode_message
    if latest is not None:
        return latest  # type: ignore[no-any-return]
    now = ctx.get("now")
    if now is None:
        return None
    return now + timedelta(seconds=_limits(info).max_future_skew_s)  # type: ignore[no-any-return]


# --- field types ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SchemaExtra:
    """Annotation that adds keywords to a field's JSON schema without enforcing them itself."""

    items: tuple[tuple[str, Any], ...]  # a tuple, not a dict: annotations must be hashable

    @classmethod
    def of(cls, extra: Mapping[str, Any]) -> _SchemaExtra:
        return cls(tuple(extra.items()))

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema.update(self.items)
        return schema


def _check_id(value: str, info: ValidationInfo) -> str:
    max_len = _limits(info).max_id_length
    if len(value) > max_len:
        raise PydanticCustomError(
            "string_too_long",
            "String should have at most {max_length} characters",
            {"max_length": max_len},
        )
    if not value.isprintable():
        raise PydanticCustomError("id_not_printable", "Identifier contains control characters")
    if value.strip() != value:
        raise PydanticCustomError(
            "id_whitespace", "Identifier must not be blank or have leading/trailing whitespace"
        )
    return value


def _check_amount(value: float, info: ValidationInfo) -> float:
    max_amount = _limits(info).max_amount
    if value > max_amount:
        raise PydanticCustomError(
            "less_than_equal", "Input should be less than or equal to {le}", {"le": max_amount}
        )
    return value


def _check_quantity(value: int, info: ValidationInfo) -> int:
    max_quantity = _limits(info).max_quantity
    if value > max_quantity:
        raise PydanticCustomError(
            "less_than_equal", "Input should be less than or equal to {le}", {"le": max_quantity}
        )
    return value


# JSON-schema approximation of _check_id (Python's isprintable() is a little stricter).
_ID_PATTERN: Final = r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"

Id = Annotated[
    str,
    StringConstraints(strict=True, min_length=1),
    AfterValidator(_check_id),
    _SchemaExtra.of({"maxLength": DEFAULT_LIMITS.max_id_length, "pattern": _ID_PATTERN}),
]
ShortText = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=_MAX_SHORT)]
LongText = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=_MAX_TEXT)]
Amount = Annotated[
    float,
    Strict(),
    AllowInfNan(False),
    at.Ge(0),
    AfterValidator(_check_amount),
    _SchemaExtra.of({"maximum": DEFAULT_LIMITS.max_amount}),
]
Quantity = Annotated[
    int,
    Strict(),
    at.Ge(1),
    AfterValidator(_check_quantity),
    _SchemaExtra.of({"maximum": DEFAULT_LIMITS.max_quantity}),
]
Currency = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Z]{3}$")]


# --- timestamps -----------------------------------------------------------------------------------


def _parse_ts(value: object) -> datetime:
    """Aware UTC datetime from ISO-8601 with offset or epoch milliseconds; not before 1970."""
    if isinstance(value, str):
        if len(value) > _MAX_SHORT:
            raise PydanticCustomError("timestamp_parsing", "Timestamp string is too long")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError(
                "timestamp_parsing", "Input should be an ISO-8601 timestamp with a UTC offset"
            ) from None
    elif isinstance(value, datetime):
        parsed = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        ms = float(value)
        if not math.isfinite(ms) or ms < _MIN_TS_MS or ms > _MAX_TS_MS:
            raise PydanticCustomError(
                "timestamp_range",
                "Epoch milliseconds {value} is outside 1970-01-01..9999-12-31",
                {"value": value},
            )
        return datetime.fromtimestamp(ms / 1000.0, tz=UTC)
    else:
        raise PydanticCustomError(
            "timestamp_type", "Input should be an ISO-8601 string or epoch milliseconds"
        )
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise PydanticCustomError(
            "timestamp_naive", "Timestamp must carry a UTC offset (e.g. 'Z' or '+02:00')"
        )
    if parsed < MIN_TIMESTAMP:  # aware comparison: no conversion, so no overflow near year 1
        raise PydanticCustomError(
            "timestamp_range", "Timestamp is before 1970-01-01T00:00:00Z (the Unix epoch)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00
        raise PydanticCustomError("timestamp_range", "Timestamp is after 9999-12-31") from None


def _validate_ts(value: object, info: ValidationInfo) -> datetime:
    parsed = _parse_ts(value)
    latest = _latest_allowed(info)
    if latest is not None and parsed > latest:
        raise PydanticCustomError(
            "future_timestamp",
            "Timestamp {ts} is more than {skew}s after now ({now})",
            {
                "ts": parsed.isoformat(),
                "skew": _limits(info).max_future_skew_s,
                "now": (latest - timedelta(seconds=_limits(info).max_future_skew_s)).isoformat(),
            },
        )
    return parsed


def parse_timestamp(
    value: object, *, now: datetime | None = None, limits: ValidationLimits = DEFAULT_LIMITS
) -> datetime:
    """Parse an event timestamp as the models do; raises ValueError with the reason."""
    parsed = _parse_ts(value)
    if now is not None and parsed > now + timedelta(seconds=limits.max_future_skew_s):
        raise ValueError(
            f"timestamp {parsed.isoformat()} is more than "
            f"{limits.max_future_skew_s}s after {now.isoformat()}"
        )
    return parsed


EventTime = Annotated[
    datetime,
    BeforeValidator(_validate_ts),  # not PlainValidator: it breaks serialising `EventTime | None`
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "format": "date-time",
                    "pattern": r"(?:[Zz]|[+-]\d{2}:?\d{2})$",
                },
                {"type": "number", "minimum": _MIN_TS_MS},
            ],
            "description": "ISO-8601 with a UTC offset, or epoch milliseconds; "
            "normalised to UTC. Not before 1970-01-01 (the Unix epoch), not more than "
            f"{DEFAULT_LIMITS.max_future_skew_s:g}s in the future.",
        },
        mode="validation",
    ),
]


# --- contracts ------------------------------------------------------------------------------------

_EVENT_CONFIG: Final = ConfigDict(frozen=True, extra="ignore")

ClickstreamEventType: TypeAlias = Literal[
    "session_start",
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "session_end",
]
_NEEDS_PRODUCT: Final = frozenset({"product_view", "add_to_cart", "remove_from_cart"})
_NEEDS_SESSION: Final = frozenset({"session_start", "session_end"})


def _required_for(event_type: str) -> PydanticCustomError:
    return PydanticCustomError(
        "missing_for_event_type",
        "Field required for event_type '{event_type}'",
        {"event_type": event_type},
    )


def _if_type_then_required(
    types: list[str], required: str, schema: dict[str, Any]
) -> dict[str, Any]:
    return {
        "if": {"properties": {"event_type": {"enum": types}}, "required": ["event_type"]},
        "then": {"required": [required], "properties": {required: schema}},
    }


class ClickstreamEvent(BaseModel):
    """One behavioural event from the web/app clickstream topic."""

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        title="ClickstreamEvent",
        json_schema_extra={
            "allOf": [
                _if_type_then_required(sorted(_NEEDS_PRODUCT), "product_id", {"type": "string"}),
                _if_type_then_required(["search"], "query", {"type": "string"}),
                _if_type_then_required(sorted(_NEEDS_SESSION), "session_id", {"type": "string"}),
            ]
        },
    )
    kind: ClassVar[str] = "clickstream"

    event_id: Id
    customer_id: Id
    event_type: ClickstreamEventType
    timestamp: EventTime
    # validate_default: the per-type rules below must run when the field is absent.
    session_id: Id | None = Field(default=None, validate_default=True)
    product_id: Id | None = Field(default=None, validate_default=True)
    category: ShortText | None = None
    price: Amount | None = None
    quantity: Quantity | None = Field(default=None, validate_default=True)
    query: LongText | None = Field(default=None, validate_default=True)
    url: LongText | None = None
    channel: ShortText | None = None
    device: ShortText | None = None

    @field_validator("session_id", mode="after")
    @classmethod
    def _session_rule(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("event_type") in _NEEDS_SESSION:
            raise _required_for(info.data["event_type"])
        return value

    @field_validator("product_id", mode="after")
    @classmethod
    def _product_rule(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("event_type") in _NEEDS_PRODUCT:
            raise _required_for(info.data["event_type"])
        return value

    @field_validator("quantity", mode="after")
    @classmethod
    def _quantity_default(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None and info.data.get("event_type") == "add_to_cart":
            return 1
        return value

    @field_validator("query", mode="after")
    @classmethod
    def _query_rule(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("event_type") == "search":
            raise _required_for("search")
        return value


class LineItem(BaseModel):
    """One product line of an order or refund."""

    model_config = _EVENT_CONFIG

    product_id: Id
    category: ShortText | None = None
    quantity: Quantity
    unit_price: Amount


class PurchaseEvent(BaseModel):
    """An order or a refund from the purchases topic; refunds carry a positive total.

    An order may total 0 (a promotion or a replacement: items priced 0); it is still an order.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        title="PurchaseEvent",
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"type": {"const": "order"}}, "required": ["type"]},
                    "then": {
                        "properties": {
                            "items": {
                                "minItems": 1,
                                "maxItems": DEFAULT_LIMITS.max_items_per_order,
                            }
                        }
                    },
                },
                {
                    "if": {"properties": {"type": {"const": "refund"}}, "required": ["type"]},
                    "then": {"properties": {"total": {"exclusiveMinimum": 0}}},
                },
            ]
        },
    )
    kind: ClassVar[str] = "purchase"

    event_id: Id
    customer_id: Id
    order_id: Id
    timestamp: EventTime
    type: Literal["order", "refund"]
    items: list[LineItem] = Field(
        json_schema_extra={"maxItems": DEFAULT_LIMITS.max_items_per_order}
    )
    total: Amount
    currency: Currency
    session_id: Id | None = None
    channel: ShortText | None = None

    @field_validator("items", mode="after")
    @classmethod
    def _items_count(cls, value: list[LineItem], info: ValidationInfo) -> list[LineItem]:
        max_items = _limits(info).max_items_per_order
        if len(value) > max_items:
            raise PydanticCustomError(
                "too_long", "List should have at most {max} items", {"max": max_items}
            )
        if not value and info.data.get("type") == "order":
            raise PydanticCustomError("too_short", "An order needs at least 1 item")
        return value

    @field_validator("total", mode="after")
    @classmethod
    def _total_matches_items(cls, value: float, info: ValidationInfo) -> float:
        if value <= 0 and info.data.get("type") == "refund":
            raise PydanticCustomError(
                "greater_than", "Input should be greater than 0 for a refund")
        items = info.data.get("items")
        if info.data.get("type") != "order" or not items:
            return value
        items_sum = math.fsum(item.quantity * item.unit_price for item in items)
        allowed = _limits(info).total_tolerance * max(value, items_sum) + _ROUNDING_ABS
        if abs(value - items_sum) > allowed:
            raise PydanticCustomError(
                "total_mismatch",
                "total {total} differs from sum(quantity * unit_price) {items_sum}"
                " by more than the allowed {allowed}",
                {"total": value, "items_sum": round(items_sum, 6), "allowed": round(allowed, 6)},
            )
        return value


Event: TypeAlias = ClickstreamEvent | PurchaseEvent
E = TypeVar("E", ClickstreamEvent, PurchaseEvent)


class _AnyEventSchema:
    """JSON schema of a batch element: either event contract (decode_message validates each)."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "anyOf": [
                handler(ClickstreamEvent.__pydantic_core_schema__),
                handler(PurchaseEvent.__pydantic_core_schema__),
            ]
        }


class BatchEnvelope(BaseModel):
    """Several events of one customer in one Kafka message; events are validated one by one."""

    model_config = ConfigDict(frozen=True, extra="ignore", title="BatchEnvelope")

    events: list[Annotated[dict[str, Any], _AnyEventSchema]] = Field(
        min_length=1, max_length=DEFAULT_LIMITS.max_events_per_message
    )
    batch_id: ShortText | None = None
    sent_at: EventTime | None = None


# --- decoding -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    """A unit of input that could not be accepted; becomes one dead letter."""

    reason: RejectReason
    detail: str  # precise human message, e.g. "events[3].items[0].quantity: Input should be ..."
    index: int | None  # position inside a batch envelope; None for the whole message
    raw: bytes  # whole message, or the single batch element re-serialised with orjson


@dataclass(frozen=True, slots=True)
class Decoded(Generic[E]):
    """Accepted events (in message order) and rejections of one Kafka message."""

    events: list[E] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


# Keys that only the other topic's events carry: a precise "wrong_topic" instead of field noise.
_FOREIGN_MARKERS: Final[dict[str, tuple[str, ...]]] = {
    "clickstream": ("order_id", "items", "total"),
    "purchases": ("event_type",),
}
_SPECIFIC_ERRORS: Final[dict[str, RejectReason]] = {
    "future_timestamp": "future_timestamp",
    "total_mismatch": "total_mismatch",
}


def _loc(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else part
    return path or "<root>"


def _from_validation_error(exc: ValidationError, prefix: str) -> tuple[RejectReason, str]:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    reason: RejectReason = "schema"
    for err in errors:
        specific = _SPECIFIC_ERRORS.get(err["type"])
        if specific is not None:
            reason = specific
            break
        if err["type"] == "literal_error" and err["loc"] == ("event_type",):
            reason = "unknown_event_type"
    parts = [f"{_loc(prefix, err['loc'])}: {err['msg']}" for err in errors[:_MAX_DETAIL_ERRORS]]
    if len(errors) > _MAX_DETAIL_ERRORS:
        parts.append(f"(+{len(errors) - _MAX_DETAIL_ERRORS} more errors)")
    return reason, "; ".join(parts)


def _wrong_topic(obj: dict[str, Any], source: str, prefix: str) -> str | None:
    if source == "clickstream" and "event_type" not in obj:
        markers = [m for m in _FOREIGN_MARKERS["clickstream"] if m in obj]
        if markers:
            return (
                f"{prefix or '<root>'}: looks like a purchase event (has {', '.join(markers)})"
                " on the clickstream topic; clickstream events need event_type"
            )
    if source == "purchases" and "event_type" in obj and "order_id" not in obj:
        return (
            f"{prefix or '<root>'}: looks like a clickstream event (has event_type) on the "
            "purchases topic; purchase events need order_id, type, items, total, currency"
        )
    return None


def _dump_element(obj: object, whole: bytes) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:  # nested deeper than orjson.dumps allows (254); keep the whole message
        return whole


def _validate_one(
    obj: object,
    *,
    model: type[E],
    source: str,
    key: bytes | None,
    context: dict[str, Any],
    index: int | None,
    raw: bytes,
) -> E | Rejection:
    prefix = "" if index is None else f"events[{index}]"
    if not isinstance(obj, dict):
        return Rejection(
            "not_object",
            f"{prefix or '<root>'}: expected a JSON object, got {type(obj).__name__}",
            index,
            raw,
        )
    try:
        event = model.model_validate(obj, context=context)
    except ValidationError as exc:
        wrong = _wrong_topic(obj, source, prefix)
        if wrong is not None:
            return Rejection("wrong_topic", wrong, index, raw)
        reason, detail = _from_validation_error(exc, prefix)
        return Rejection(reason, detail, index, raw)
    except Exception as exc:  # decode_message must never raise; a validator bug lands here
        return Rejection("internal_error", f"{type(exc).__name__}: {exc}", index, raw)
    if key is not None and event.customer_id.encode() != key:
        loc = f"{prefix}.customer_id" if prefix else "customer_id"
        return Rejection(
            "customer_mismatch",
            f"{loc}: {event.customer_id!r} does not match message key "
            f"{key.decode('utf-8', 'backslashreplace')!r}",
            index,
            raw,
        )
    return event


@overload
def decode_message(
    value: bytes | None,
    key: bytes | None,
    source: Literal["clickstream"],
    *,
    limits: ValidationLimits,
    now: datetime,
) -> Decoded[ClickstreamEvent]: ...


@overload
def decode_message(
    value: bytes | None,
    key: bytes | None,
    source: Literal["purchases"],
    *,
    limits: ValidationLimits,
    now: datetime,
) -> Decoded[PurchaseEvent]: ...


@overload
def decode_message(
    value: bytes | None,
    key: bytes | None,
    source: Source,
    *,
    limits: ValidationLimits,
    now: datetime,
) -> Decoded[ClickstreamEvent] | Decoded[PurchaseEvent]: ...


def decode_message(
    value: bytes | None,
    key: bytes | None,
    source: Source,
    *,
    limits: ValidationLimits,
    now: datetime,
) -> Decoded[ClickstreamEvent] | Decoded[PurchaseEvent]:
    """Decode one Kafka message value (an event or a batch envelope); never raises on input bytes.

    ``now`` must be timezone-aware (it comes from the injected clock); ``key`` is the UTF-8
    customer_id the producer partitioned by, checked against every event when present.
    """
    if now.tzinfo is None:
        raise ValueError("decode_message: now must be timezone-aware")
    if source == "clickstream":
        return _decode(value, key, ClickstreamEvent, source, limits, now)
    if source == "purchases":
        return _decode(value, key, PurchaseEvent, source, limits, now)
    raise ValueError(f"decode_message: unknown source {source!r}")


def _whole(reason: RejectReason, detail: str, raw: bytes) -> Decoded[Any]:
    return Decoded(rejections=[Rejection(reason, detail, None, raw)])


def _decode(
    value: bytes | None,
    key: bytes | None,
    model: type[E],
    source: Source,
    limits: ValidationLimits,
    now: datetime,
) -> Decoded[E]:
    if not value:
        return _whole("empty_value", "message value is empty", b"")
    raw = bytes(value)
    if len(raw) > limits.max_payload_bytes:
        detail = f"message value is {len(raw)} bytes; limit is {limits.max_payload_bytes}"
        return _whole("oversized", detail, raw)
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # includes nesting deeper than 1024
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return _whole("undecodable", f"not UTF-8: {uexc}", raw)
        return _whole("not_json", f"invalid JSON: {exc}", raw)
    if not isinstance(parsed, dict):
        detail = f"expected a JSON object (event or batch envelope), got {type(parsed).__name__}"
        return _whole("not_object", detail, raw)
    context = {
        "limits": limits,
        "now": now,
        "_latest": now + timedelta(seconds=limits.max_future_skew_s),
    }
    events: list[E] = []
    rejections: list[Rejection] = []
    if "events" not in parsed:
        result = _validate_one(
            parsed, model=model, source=source, key=key, context=context, index=None, raw=raw
        )
        if isinstance(result, Rejection):
            rejections.append(result)
        else:
            events.append(result)
        return Decoded(events, rejections)

    batch = parsed["events"]
    if not isinstance(batch, list):
        detail = f"events: expected a list of event objects, got {type(batch).__name__}"
        return _whole("bad_envelope", detail, raw)
    if not batch:
        return _whole("empty_batch", "events: batch is empty", raw)
    if len(batch) > limits.max_events_per_message:
        detail = f"events: {len(batch)} events; limit is {limits.max_events_per_message}"
        return _whole("too_many_events", detail, raw)
    for index, obj in enumerate(batch):
        result = _validate_one(
            obj, model=model, source=source, key=key, context=context, index=index, raw=b""
        )
        if isinstance(result, Rejection):
            # Re-serialise only on the (rare) rejection path.
            raw_event = _dump_element(obj, raw)
            rejections.append(Rejection(result.reason, result.detail, index, raw_event))
        else:
            events.append(result)
    return Decoded(events, rejections)


def event_json(event: BaseModel) -> bytes:
    """Canonical JSON bytes of an event (UTC timestamps as ISO-8601 'Z')."""
    return orjson.dumps(event.model_dump(mode="json"))
