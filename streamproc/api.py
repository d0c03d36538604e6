"""Read API: a customer's live profile, segment and churn risk as of an event time.

Used by the CLI and by evaluations. Scores come from the currently published
model version, so the answer is the same whichever worker owns the customer.
Without an ``as_of``, customers are scored as of the deployment's current event
time (the workers' watermark, see ``streamproc.adapters.event_time``), the same
instant for everyone, so a customer idle for longer has the larger recency.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from streamproc.adapters.event_time import current_event_time
from streamproc.adapters.model_store import ModelStore
from streamproc.adapters.redis_store import RedisProfileStore, RedisScoringStore, make_client
from streamproc.core.features import DAY, ProfileView, model_features
from streamproc.core.lifecycle import lifecycle_stage
from streamproc.core.modelset import ModelBundle, Score
from streamproc.core.step import ScoringState
from streamproc.core.store import CustomerRecord
from streamproc.settings import Settings


@dataclass(frozen=True, slots=True)
class CustomerReport:
    """Everything a person asks about one customer, as of ``as_of`` (event time)."""

    customer_id: str
    as_of: datetime
    profile: dict[str, Any]
    model_version: int | None
    segment_id: int | None = None
    segment_name: str | None = None
    segment_profile: dict[str, float] = field(default_factory=dict)
    published_segment_id: int | None = None
    rfm_tier: str | None = None
    churn_probability: float | None = None
    churn_model_ready: bool = False
    reasons: list[dict[str, Any]] = field(default_factory=list)
    #: Expected spend over the next ``horizon_days``; value at risk = probability x it.
    expected_value: float | None = None
    horizon_days: float | None = None
    value_at_risk: float | None = None
    value_tier: str | None = None
    #: The stage as of ``as_of`` (see the README), and the one last published.
    lifecycle_stage: str | None = None
    published_lifecycle_stage: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "customer_id": self.customer_id,
            "as_of": self.as_of.isoformat(),
            "model_version": self.model_version,
            "segment": None if self.segment_id is None else {
                "segment_id": self.segment_id, "name": self.segment_name,
                "profile": self.segment_profile},
            "published_segment_id": self.published_segment_id,
            "rfm_tier": self.rfm_tier,
            "churn_probability": self.churn_probability,
            "churn_model_ready": self.churn_model_ready,
            "reasons": self.reasons,
            "expected_value": self.expected_value,
            "horizon_days": self.horizon_days,
            "value_at_risk": self.value_at_risk,
            "value_tier": self.value_tier,
            "lifecycle_stage": self.lifecycle_stage,
            "published_lifecycle_stage": self.published_lifecycle_stage,
            "profile": self.profile,
        }


def _value_fields(score: Score, bundle: ModelBundle, state: ScoringState | None,
                  view: ProfileView) -> dict[str, Any]:
    """Expected value, value at risk, value tier and lifecycle stage of one scoring."""
    at_risk = bundle.churn_ready and score.churn_probability >= bundle.churn_threshold
    stage = lifecycle_stage(
        None if state is None else state.stage, at=view.as_of,
        last_activity=None if state is None else state.last_activity,
        features=model_features(view), at_risk=at_risk, horizon_s=score.horizon_days * DAY)
    return {"expected_value": score.expected_value, "horizon_days": score.horizon_days,
            "value_at_risk": round(score.churn_probability * score.expected_value, 2),
            "value_tier": bundle.value_tier(score.expected_value), "lifecycle_stage": stage}


class CustomerNotFound(LookupError):
    """No profile is stored for this customer id."""


class NoEventTime(LookupError):
    """No worker has recorded an event time yet, so "now" is unknown: pass ``as_of``."""

    def __init__(self, prefix: str) -> None:
        super().__init__(f"no event time recorded under key prefix {prefix!r} yet (no worker "
                         "has swept a partition with events); pass an explicit as_of")


class AnalyticsReader:
    """Reads profiles and scores them with the current model version."""

    def __init__(self, settings: Settings, client: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.client = client or make_client(settings.redis)
        self.profiles = RedisProfileStore.from_settings(
            self.client, settings.redis,
            settings.ingest.feature_config())
        self.scoring = RedisScoringStore.from_settings(self.client, settings.redis)
        key = settings.models.signing_key
        self.models = ModelStore(self.client, settings.redis.key_prefix,
                                 key.get_secret_value().encode() if key else b"")
        self._bundle: ModelBundle | None = None

    async def close(self) -> None:
        """Release the Redis connection."""
        await self.client.aclose()

    async def bundle(self) -> ModelBundle | None:
        """The current published model version (verified), None before the first."""
        if self.settings.models.signing_key is not None:
            version = await self.models.current_version()
            if version and (self._bundle is None or self._bundle.version != version):
                self._bundle = (await self.models.load_bundle(version)).bundle
        return self._bundle

    async def event_time(self) -> datetime | None:
        """The deployment's current event time (the workers' watermark), None before any."""
        at = await current_event_time(self.client, self.settings.redis.key_prefix)
        return None if at is None else datetime.fromtimestamp(at, UTC)

    async def resolve_as_of(self, as_of: datetime | None) -> datetime:
        """``as_of`` itself, or the current event time when None (NoEventTime if unknown)."""
        if as_of is not None:
            return as_of
        now = await self.event_time()
        if now is None:
            raise NoEventTime(self.settings.redis.key_prefix)
        return now

    async def customer(self, customer_id: str, as_of: datetime | None = None) -> CustomerReport:
        """One customer's report as of ``as_of`` (default: the current event time)."""
        [record] = await self.scoring.read([customer_id])
        if record.profile is None:
            raise CustomerNotFound(customer_id)
        when = await self.resolve_as_of(as_of)
        return (await self._reports([record], when))[0]

    async def all_customers(self, as_of: datetime | None = None,
                            chunk: int = 500) -> AsyncIterator[CustomerReport]:
        """Stream a report for every known customer, scored in vectorised chunks.

        Everyone is scored as of one instant: ``as_of``, or the current event time.
        """
        as_of = await self.resolve_as_of(as_of)
        ids: list[str] = []
        async for cid in self.profiles.customers():
            ids.append(cid)
            if len(ids) >= chunk:
                for report in await self._chunk(ids, as_of):
                    yield report
                ids = []
        if ids:
            for report in await self._chunk(ids, as_of):
                yield report

    async def _chunk(self, ids: list[str], as_of: datetime) -> list[CustomerReport]:
        records = await self.scoring.read(ids)
        return await self._reports([r for r in records if r.profile is not None], as_of)

    async def _reports(self, records: Sequence[CustomerRecord],
                       as_of: datetime) -> list[CustomerReport]:
        bundle = await self.bundle()
        at = as_of.timestamp()
        views = [ProfileView(r.customer_id, at, r.profile or {}) for r in records]
        scores: list[Score | None] = list(bundle.score_many(views)) if bundle else \
            [None] * len(views)
        reports = []
        for view, score, record in zip(views, scores, records, strict=True):
            state = record.state
            published = state.segment if state is not None else None
            base: dict[str, Any] = {
                "customer_id": view.customer_id,
                "as_of": datetime.fromtimestamp(view.as_of, UTC),
                "profile": view.to_dict(),
                "model_version": bundle.version if bundle else None,
                "published_segment_id": published.segment_id if published else None,
                "published_lifecycle_stage": (state.stage.stage if state is not None
                                              and state.stage is not None else None),
            }
            if score is not None and bundle is not None:
                base.update(
                    segment_id=score.segment_id, segment_name=score.segment_name,
                    segment_profile=score.segment_profile, rfm_tier=score.rfm_tier,
                    churn_probability=score.churn_probability,
                    churn_model_ready=bundle.churn_ready,
                    reasons=[{"feature": f, "contribution": c, "text": t}
                             for f, c, t in score.reasons])
                base.update(_value_fields(score, bundle, state, view))
            reports.append(CustomerReport(**base))
        return reports
