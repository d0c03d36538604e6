"""The documents the HTTP read API returns, as pydantic models (its OpenAPI description).

Each model accepts fields it does not declare (``extra="allow"``): a field added to
:meth:`streamproc.api.CustomerReport.to_dict` (expected value, value tier, lifecycle stage...)
reaches clients without a change here, and clients must ignore fields they do not know.
Times are ISO-8601 strings in UTC with a ``Z``, everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Time = Annotated[str, Field(json_schema_extra={"format": "date-time"},
                            examples=["2026-03-01T12:00:00Z"])]
RiskLevel = Literal["low", "medium", "high", "critical"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


def _count(text: str) -> Any:
    return Field(None, description=text)


class Profile(_Doc):
    """A customer's live profile as of the document's ``as_of``; null: never happened."""

    events: int | None = _count("Events counted (duplicates and rejected ones are not).")
    orders: int | None = _count("Orders.")
    revenue: float | None = _count("Sum of order totals.")
    items_purchased: int | None = _count("Items ordered (sum of line quantities).")
    refunds: int | None = _count("Refunds.")
    refund_amount: float | None = _count("Sum of refunded amounts.")
    first_order_at: Time | None = _count("First order.")
    last_order_at: Time | None = _count("Latest order.")
    first_seen_at: Time | None = _count("First event.")
    last_seen_at: Time | None = _count("Latest event.")
    last_active_at: Time | None = _count("Latest qualifying activity (any event but a refund).")
    sessions: int | None = _count("Sessions.")
    page_views: int | None = _count("Page views.")
    product_views: int | None = _count("Product views.")
    searches: int | None = _count("Searches.")
    add_to_cart: int | None = _count("Add-to-cart events.")
    remove_from_cart: int | None = _count("Remove-from-cart events.")
    cart_sessions: int | None = _count("Sessions with an add-to-cart.")
    ordered_sessions: int | None = _count("Sessions with an order.")
    converted_cart_sessions: int | None = _count("Cart sessions that ended in an order.")
    views_7d: float | None = _count("Views, exponentially decayed over 7 days of event time.")
    views_30d: float | None = _count("Views, decayed over 30 days.")
    carts_7d: float | None = _count("Add-to-carts, decayed over 7 days.")
    carts_30d: float | None = _count("Add-to-carts, decayed over 30 days.")
    orders_7d: float | None = _count("Orders, decayed over 7 days.")
    orders_30d: float | None = _count("Orders, decayed over 30 days.")
    spend_7d: float | None = _count("Spend, decayed over 7 days.")
    spend_30d: float | None = _count("Spend, decayed over 30 days.")
    recency_days: float | None = _count("Days since the latest qualifying activity.")
    days_since_last_order: float | None = _count("Days since the latest order.")
    tenure_days: float | None = _count("Days since the first event.")
    average_order_value: float | None = _count("Revenue per order.")
    net_spend: float | None = _count("Revenue minus refunds: the customer's value to date.")
    conversion_rate: float | None = _count("Share of sessions with an order.")
    cart_abandonment_rate: float | None = _count("Share of cart sessions without an order.")
    refund_rate: float | None = _count("Refunded amount over revenue.")
    mean_days_between_orders: float | None = _count("Mean gap between orders (2+ orders).")
    distinct_categories: int | None = _count("Categories tracked for affinity.")
    top_category: str | None = _count("Strongest category.")
    top_category_share: float | None = _count("Its share of the tracked category weight.")
    categories: dict[str, float] | None = _count("Category affinity weights (top 16).")


class Reason(_Doc):
    """One of the features that pushed the churn probability most, in words."""

    feature: str
    contribution: float = Field(description="Contribution to the log-odds of churn.")
    text: str = Field(examples=["no order for 41 days"])


class SegmentRef(_Doc):
    """The segment a customer is scored into, with the segment's typical profile."""

    segment_id: int
    name: str
    profile: dict[str, float] = Field(
        description="The segment's typical customer (medians in business units), not this "
        "customer's own figures.")


class RFMScores(_Doc):
    """Recency, frequency and monetary scores, 1-5 against streaming quintiles (5 best)."""

    recency: int
    frequency: int
    monetary: int


class Customer(_Doc):
    """One customer scored with the current model version as of ``as_of``."""

    customer_id: str
    as_of: Time = Field(description="The event time the customer was scored as of.")
    model_version: int | None = Field(description="null before the first model version.")
    segment: SegmentRef | None
    published_segment_id: int | None = Field(
        description="The segment last published on segment-changes (moves with hysteresis).")
    rfm_tier: str | None
    rfm_scores: RFMScores | None
    churn_probability: float | None
    churn_model_ready: bool = Field(
        description="false while the churn model has learned too few labels to alert.")
    churn_threshold: float | None
    risk_level: RiskLevel | None = Field(
        description="low under the alert threshold, else the alert's level; null until the "
        "churn model is ready.")
    reasons: list[Reason]
    profile: Profile


class CustomerPage(_Doc):
    """One page of customers; request the next one with ``cursor=next_cursor``."""

    as_of: Time = Field(description="Every page of a listing is scored as of this instant.")
    model_version: int | None
    limit: int
    scanned: int = Field(description="Stored customers examined to fill this page.")
    next_cursor: str | None = Field(
        description="null on the last page. A page may hold fewer than limit customers "
        "and still have a next one.")
    items: list[Customer]


class SegmentSummary(_Doc):
    """Size and medians of one segment over the customers scored into it."""

    segment_id: int | None = Field(description="null: customers scored before any model.")
    name: str
    size: int
    share: float
    medians: dict[str, float]


class Segments(_Doc):
    """Every segment, as of one instant."""

    as_of: Time
    model_version: int | None
    customers: int
    segments: list[SegmentSummary]


class ModelSegment(_Doc):
    """A segment as the model publishes it."""

    segment_id: int
    name: str
    profile: dict[str, float]


class Model(_Doc):
    """The published model version every worker scores with."""

    model_version: int | None
    published_at: Time | None
    churn_model_ready: bool
    churn_threshold: float | None
    labels_seen: int
    quality: dict[str, float | None] = Field(
        description="Progressive quality on delayed labels (roc_auc, log_loss, precision, "
        "recall at the threshold, positive_rate: the base rate...).")
    segments: list[ModelSegment]


class Health(_Doc):
    """Liveness or readiness."""

    status: Literal["ok", "unavailable"]
    detail: str | None = None


class Problem(BaseModel):
    """An error: what was wrong, in one sentence."""

    detail: str | list[dict[str, Any]]
