"""One typed settings object built from ``STREAMPROC_*`` environment variables.

Nested groups map to variables with a double underscore, for example
``STREAMPROC_KAFKA__BOOTSTRAP_SERVERS`` or ``STREAMPROC_MODELS__CHURN_THRESHOLD``.
A ``.env`` file in the working directory is read too. Unknown ``STREAMPROC_*``
variables are rejected so that a typo fails at start-up instead of being ignored.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamproc.core.churn_definition import ChurnDefinition
from streamproc.core.events import ValidationLimits
from streamproc.core.features import DAY, FeatureConfig
from streamproc.core.policies import AlertPolicy
from streamproc.core.step import StepConfig

ENV_PREFIX = "STREAMPROC_"
NESTED_DELIMITER = "__"


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Group):
    """Kafka client settings; security options are passed through to aiokafka."""

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated host:port list of Kafka brokers."
    )
    consumer_group: str = Field(
        "streamproc", description="Consumer group (Faust app id) shared by all workers."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: str | None = Field(None, description="CA bundle to verify the brokers (SSL).")
    ssl_certfile: str | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_keyfile: str | None = Field(None, description="Client private key for mutual TLS.")
    topic_partitions: int = Field(
        4, ge=1, le=1024, description="Partitions used when streamproc creates its topics."
    )
    replication_factor: int = Field(1, ge=1, description="Replication factor for new topics.")
    fetch_max_wait_ms: int = Field(
        50,
        ge=1,
        le=10_000,
        description="Longest the broker may hold a fetch open; bounds latency on sparse streams.",
    )
    session_timeout_s: float = Field(
        10.0, gt=0,
        description=("Consumer session timeout; lower means faster failover. Heartbeats "
                     "are sent five times per timeout."),
    )

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                "STREAMPROC_KAFKA__SASL_USERNAME and STREAMPROC_KAFKA__SASL_PASSWORD are "
                f"required when STREAMPROC_KAFKA__SECURITY_PROTOCOL={self.security_protocol}"
            )
        return self


class TopicSettings(_Group):
    """Names of every topic streamproc reads or writes."""

    clickstream: str = Field("clickstream", description="Input: clickstream events.")
    purchases: str = Field("purchases", description="Input: order and refund events.")
    segment_changes: str = Field(
        "segment-changes", description="Output: a customer's segment changed."
    )
    churn_alerts: str = Field(
        "churn-alerts", description="Output: churn risk alerts, one per at-risk episode."
    )
    priority_alerts: str = Field(
        "churn-alerts-priority",
        description="Output: the churn alerts of high-value-tier customers (priority 1) again, "
        "for a retention team that works only those.",
    )
    lifecycle_changes: str = Field(
        "lifecycle-changes", description="Output: a customer's lifecycle stage changed."
    )
    dead_letter: str = Field(
        "streamproc-deadletter", description="Output: rejected input with the reason."
    )
    training_examples: str = Field(
        "streamproc-training",
        description="Internal: labelled examples for the single model trainer.",
    )


class RedisSettings(_Group):
    """Redis connection and key layout."""

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="redis:// or rediss:// (TLS) URL; put the password in PASSWORD.",
    )
    password: SecretStr | None = Field(None, description="Redis password (AUTH).")
    username: str | None = Field(None, description="Redis ACL user name.")
    ssl_ca_certs: str | None = Field(None, description="CA bundle for rediss:// URLs.")
    cluster: bool = Field(
        False,
        description=(
            "URL names a node of a Redis Cluster: batches are split into one Lua call per "
            "slot (README: Redis Cluster)."
        ),
    )
    key_prefix: str = Field("sp", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="Key prefix.")
    profile_ttl_s: int = Field(
        int(400 * DAY),
        ge=0,
        description="Profiles untouched this long expire (0 keeps them forever).",
    )
    retry_max_backoff_s: float = Field(
        5.0, gt=0, description="Cap of the exponential backoff while Redis is unreachable."
    )


class IngestSettings(_Group):
    """Batching and input validation limits."""

    batch_max_messages: int = Field(
        500, ge=1, le=100_000, description="Most Kafka messages processed as one batch."
    )
    batch_within_s: float = Field(
        0.02, gt=0, le=10, description="Longest a partial batch waits for more messages."
    )
    catchup_max_wait_s: float = Field(
        0.25, ge=0, le=10,
        description=(
            "Longest a batch keeps growing while the input is backlogged; 0 turns catch-up "
            "batching off: every BATCH_WITHIN_S window is a batch. A batch also stops "
            "growing once its events span one day of event time, so a replay of history "
            "decides churn census checks as the live stream did."
        ),
    )
    max_payload_bytes: int = Field(
        1_048_576, ge=256, description="Larger Kafka messages are dead-lettered."
    )
    max_id_length: int = Field(128, ge=8, le=1024, description="Longest accepted id string.")
    max_events_per_message: int = Field(
        1000, ge=1, description="Most events in one batch envelope."
    )
    max_items_per_order: int = Field(500, ge=1, description="Most line items in one order.")
    max_amount: float = Field(
        1_000_000.0, gt=0, description="Largest accepted price, total or refund amount."
    )
    max_quantity: int = Field(10_000, ge=1, description="Largest accepted line quantity.")
    total_tolerance: float = Field(
        0.01,
        ge=0,
        description="Allowed relative gap between an order's total and its items' sum.",
    )
    max_future_skew_s: float = Field(
        300.0, ge=0, description="Events further than this in the future are rejected."
    )
    allowed_lateness_s: float = Field(
        3600.0, ge=0, description="Watermark = max event time seen minus this lateness."
    )
    max_categories: int = Field(
        16, ge=1, le=256, description="Categories tracked per customer for affinity."
    )
    dedupe_events: int = Field(
        20,
        ge=1,
        le=4096,
        description=(
            "Clickstream event ids remembered per customer (12 bytes each, in the profile: "
            "a 6-byte digest and the event time). "
            "A duplicate of a remembered id is skipped; an unknown event older than every "
            "remembered one is dead-lettered as late_event, never counted twice."
        ),
    )
    dedupe_purchases: int = Field(
        8, ge=1, le=4096,
        description=("Purchase event ids remembered per customer (as DEDUPE_EVENTS, 12 bytes "
                     "each, for orders)."),
    )
    sessions: int = Field(
        4, ge=1, le=1024,
        description=("Most recent sessions remembered per customer, for exact session and "
                     "cart-session counts."),
    )
    linked_sessions: int = Field(
        64, ge=1, le=1024,
        description=(
            "Sessions with a cart or an order remembered per customer (17 bytes each) until "
            "the topics have moved a day past them, so an order counts its cart session "
            "as converted even when one topic runs ahead of the other; when more wait, "
            "conversions go uncounted (streamproc_cart_links_dropped_total)."
        ),
    )

    def feature_config(self) -> FeatureConfig:
        """The feature-update tunables these settings configure."""
        return FeatureConfig(max_categories=self.max_categories,
                             dedupe_events=self.dedupe_events,
                             dedupe_purchases=self.dedupe_purchases, sessions=self.sessions,
                             links=self.linked_sessions)

    def validation_limits(self) -> ValidationLimits:
        """The contract validation limits these settings configure."""
        return ValidationLimits(
            max_payload_bytes=self.max_payload_bytes,
            max_id_length=self.max_id_length,
            max_events_per_message=self.max_events_per_message,
            max_items_per_order=self.max_items_per_order,
            max_amount=self.max_amount,
            max_quantity=self.max_quantity,
            total_tolerance=self.total_tolerance,
            max_future_skew_s=self.max_future_skew_s,
        )


class ModelSettings(_Group):
    """Segmentation and churn model settings."""

    signing_key: SecretStr | None = Field(
        None,
        description="HMAC key for model snapshots; required by the worker. Never commit it.",
    )
    segments: int = Field(5, ge=2, le=20, description="Number of customer segments.")
    segment_hysteresis: float = Field(
        0.15,
        ge=0,
        le=1,
        description="A customer moves only if the new centre is this much closer (relative).",
    )
    churn_definition: ChurnDefinition = Field(
        "activity",
        description=(
            "What keeps a customer from churning: 'activity' (any event but a refund: visits, "
            "views, searches, carts, orders; on a purchase-only stream the same as 'order') "
            "or 'order' (only orders). Only qualifying events start a customer's scoring, so "
            "with 'order' a visitor who never ordered gets no segment or churn score."
        ),
    )
    churn_horizon_days: float | None = Field(
        None, gt=0,
        description=(
            "Churned = no qualifying event for this long. Unset: learned from the purchase "
            "rhythm (the 90 % quantile of the gaps between a customer's consecutive "
            "qualifying days over the whole base, never below 30 days; 30 days until 200 "
            "gaps were seen). Set it when the business has its own definition; the horizon "
            "in use is published (`model status`, streamproc_churn_horizon_seconds)."
        ),
    )
    churn_threshold: float = Field(
        0.7, gt=0, lt=1, description="Churn probability at or above which an alert is raised."
    )
    alert_cooldown_days: float = Field(
        14.0, ge=0, description="Event-time days before the same customer is alerted again."
    )
    alert_rearm_factor: float = Field(
        2.0, gt=1,
        description=(
            "Within one at-risk episode (no qualifying activity since the last alert), a "
            "customer is alerted again only when the value at risk reached this multiple of "
            "the last alert's; ALERT_COOLDOWN_DAYS stays the floor between two alerts."
        ),
    )
    history_lag_hours: float = Field(
        24.0, ge=0,
        description=(
            "Scorings whose event time is older than this behind the wall clock are history: "
            "they update profiles, labels and models but publish no alert, segment change or "
            "lifecycle change (counted in streamproc_history_suppressed_total). 0: "
            "publish history too (a backfill whose history is news)."
        ),
    )
    min_labels_before_alerts: int = Field(
        500, ge=0, description="The churn model raises no alerts before learning this many."
    )
    check_interval_days: float = Field(
        7.0, gt=0,
        description=(
            "Every known customer is re-scored (a census check) every this many event-time "
            "days, whatever they did; each check is a churn snapshot labelled at its horizon."
        ),
    )
    max_pending_snapshots: int = Field(
        64, ge=1, le=256,
        description=(
            "Most snapshots per customer waiting for their churn label (~60 bytes each in "
            "the customer's key); beyond it the oldest is dropped unlabelled, which biases "
            "the labels. Must be at least the horizon over CHECK_INTERVAL_DAYS (64: a "
            "horizon up to 448 days at weekly checks)."
        ),
    )
    snapshot_every_examples: int = Field(
        2000, ge=1, description="The trainer publishes a model version every N examples."
    )
    reload_interval_s: float = Field(
        2.0, gt=0, description="How often workers look for a newer model version."
    )

    @model_validator(mode="after")
    def _pending_covers_horizon(self) -> ModelSettings:
        if self.churn_horizon_days is not None and self.max_pending_snapshots < math.ceil(
                self.churn_horizon_days / self.check_interval_days):
            raise ValueError("MAX_PENDING_SNAPSHOTS must be at least CHURN_HORIZON_DAYS / "
                             "CHECK_INTERVAL_DAYS, or labels are lost")
        return self

    def step_config(self) -> StepConfig:
        """The scoring step's configuration (worker and replay alike), built once."""
        return StepConfig(
            horizon_days=self.churn_horizon_days,
            check_interval_s=self.check_interval_days * DAY,
            max_pending=self.max_pending_snapshots,
            hysteresis=self.segment_hysteresis,
            churn_definition=self.churn_definition,
            # A zero cooldown still allows only one alert per event time (one id, one alert).
            alert_policy=AlertPolicy(threshold=self.churn_threshold,
                                     cooldown_s=max(self.alert_cooldown_days * DAY, 1.0),
                                     min_labels=self.min_labels_before_alerts,
                                     rearm_factor=self.alert_rearm_factor),
            history_lag_s=self.history_lag_hours * 3600.0 or None,
        )


class MetricsSettings(_Group):
    """Prometheus and health endpoints."""

    host: str = Field("0.0.0.0", description="Interface for /metrics, /healthz, /readyz.")  # noqa: S104
    port: int = Field(6066, ge=0, le=65535, description="Port for /metrics and health (0 = off).")


#: Shortest bearer token the read API accepts as its setting.
MIN_TOKEN_LENGTH = 16


class ServeSettings(_Group):
    """The HTTP read API (``streamproc serve``)."""

    host: str = Field(
        "127.0.0.1",
        description="Interface the read API listens on (0.0.0.0: every interface; it serves "
        "customer data, so set TOKEN when it is reachable from a network).",
    )
    port: int = Field(8080, ge=1, le=65535, description="Port of the read API.")
    token: SecretStr | None = Field(
        None,
        description="Bearer token every /v1 request must send (Authorization: Bearer ...), "
        "16 characters or more; unset: no authentication. Never commit it.",
    )
    default_page_size: int = Field(
        100, ge=1, le=10_000, description="Customers per members page when a request sets "
        "no limit.",
    )
    max_page_size: int = Field(
        1000, ge=1, le=10_000,
        description="Largest limit a members request may ask for; a larger one is refused "
        "with 422.",
    )
    max_scan_per_page: int = Field(
        20_000, ge=1,
        description="Most stored customers one members request examines; a page may then "
        "hold fewer than limit customers: follow next_cursor.",
    )
    summary_ttl_s: float = Field(
        30.0, ge=0,
        description="Segment summaries as of now (a scan of every customer) are reused for "
        "this long; 0 recomputes them on every request.",
    )

    @model_validator(mode="after")
    def _default_within_max(self) -> ServeSettings:
        if self.token is not None and len(self.token.get_secret_value()) < MIN_TOKEN_LENGTH:
            # An empty or short token would be guessed, or would let a request without
            # one through: refuse it rather than serve with weak authentication.
            raise ValueError(f"STREAMPROC_SERVE__TOKEN needs at least {MIN_TOKEN_LENGTH} "
                             "characters (e.g. openssl rand -hex 24)")
        if self.default_page_size > self.max_page_size:
            raise ValueError("STREAMPROC_SERVE__DEFAULT_PAGE_SIZE must not exceed "
                             "STREAMPROC_SERVE__MAX_PAGE_SIZE")
        return self


class Settings(BaseSettings):
    """All of streamproc's configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        env_file=".env",
        extra="forbid",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    ingest: IngestSettings = IngestSettings()
    models: ModelSettings = ModelSettings()
    metrics: MetricsSettings = MetricsSettings()
    serve: ServeSettings = ServeSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level; customer ids and payloads are logged only at DEBUG."
    )

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_env(cls, data: Any) -> Any:
        unknown = sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX) and
                         not _known_variable(k.upper()))
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        return data


def _known_variable(name: str) -> bool:
    path = name[len(ENV_PREFIX):].lower().split(NESTED_DELIMITER)
    fields: dict[str, Any] = Settings.model_fields
    for i, part in enumerate(path):
        field = fields.get(part)
        if field is None:
            return False
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if i == len(path) - 1:
                return True  # a whole group given as JSON
            fields = ann.model_fields
        else:
            return i == len(path) - 1
    return False


class SettingsError(ValueError):
    """Settings could not be built; the message names the offending variables."""


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment, turning validation errors into one readable message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            var = ENV_PREFIX + NESTED_DELIMITER.join(loc).upper() if loc else "settings"
            problems.append(f"{var}: {err['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built once."""
    return load_settings()


def to_env(settings: Settings) -> dict[str, str]:
    """The ``STREAMPROC_*`` variables that rebuild ``settings`` (for child processes)."""
    env: dict[str, str] = {}
    for group_name in Settings.model_fields:
        group = getattr(settings, group_name)
        if not isinstance(group, BaseModel):
            env[env_var_name(group_name)] = str(group)
            continue
        for name in type(group).model_fields:
            value = getattr(group, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[env_var_name(group_name, name)] = str(value)
    return env


def env_var_name(*path: str) -> str:
    """The environment variable that sets the field at ``path``."""
    return ENV_PREFIX + NESTED_DELIMITER.join(p.upper() for p in path)


__all__ = [
    "IngestSettings",
    "KafkaSettings",
    "MetricsSettings",
    "ModelSettings",
    "RedisSettings",
    "ServeSettings",
    "Settings",
    "SettingsError",
    "TopicSettings",
    "env_var_name",
    "get_settings",
    "load_settings",
    "to_env",
]

