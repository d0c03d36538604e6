"""Read API: a customer's live profile, segment and churn risk as of an event time.

Used by the CLI, the HTTP read API (``streamproc serve``) and evaluations. Scores come
from the currently published model version, so the answer is the same whichever worker
owns the customer. Without an ``as_of``, customers are scored as of the deployment's
current event time (the workers' watermark, see ``streamproc.adapters.event_time``), the
same instant for everyone, so a customer idle for longer has the larger recency.

Everything here only reads Redis (GET, MGET, SCAN, ZRANGE): ``streamproc serve`` runs
under a Redis user allowed nothing else (README, "HTTP read API").
"""

from __future__ import annotations

import base64
import binascii
import statistics
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import redis.asyncio as aioredis

from streamproc.adapters import keys
from streamproc.adapters.event_time import current_event_time
from streamproc.adapters.model_store import ModelStore
from streamproc.adapters.redis_store import RedisProfileStore, RedisScoringStore, make_client
from streamproc.core.features import DAY, FIELDS, ProfileView
from streamproc.core.lifecycle import lifecycle_stage
from streamproc.core.modelset import ModelBundle, Score, SnapshotRejected
from streamproc.core.policies import alert_risk_level
from streamproc.core.step import ScoringState
from streamproc.core.store import CustomerRecord
from streamproc.settings import Settings
from streamproc.times import iso_utc

#: Churn risk levels, lowest first: "low" is under the alert threshold, the others are the
#: levels a churn alert carries (thirds of the band above the threshold).
RISK_LEVELS: Final = ("low", "medium", "high", "critical")

#: Profile fields that count whole things (printed and served as integers).
COUNT_FIELDS: Final = frozenset({
    "events", "orders", "items_purchased", "refunds", "sessions", "page_views",
    "product_views", "searches", "add_to_cart", "remove_from_cart", "cart_sessions",
    "ordered_sessions", "converted_cart_sessions", "distinct_categories",
})

#: Readable names of the stored profile fields, in their documented order.
STORED_NAMES: Final = tuple(FIELDS.values())

#: Profile fields summarised per segment (median over the segment's customers).
SEGMENT_FIELDS: Final[tuple[str, ...]] = (
    "recency_days", "orders", "net_spend", "average_order_value", "events",
    "cart_abandonment_rate", "churn_probability",
)
UNASSIGNED: Final = "unassigned"

#: Keys asked per SCAN call when paging members (Redis may return a few more or fewer).
SCAN_COUNT: Final = 500


def readable_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """A profile as documents show it: times as :func:`iso_utc`, whole counts as integers.

    Every stored field has a key, so documents of different customers have the same keys:
    a count or amount that never moved is 0, a time that never happened is null. The
    report's own ``customer_id`` and ``as_of`` are left out (the document has them).
    """
    out: dict[str, Any] = {name: None if name.endswith("_at") else
                           0 if name in COUNT_FIELDS else 0.0 for name in STORED_NAMES}
    for name, value in profile.items():
        if name in ("customer_id", "as_of"):
            continue
        if value is not None and name.endswith("_at"):
            value = iso_utc(float(value))
        elif name in COUNT_FIELDS and isinstance(value, float) and value.is_integer():
            value = int(value)
        out[name] = value
    return out


def check_customer_id(value: str, max_length: int) -> str:
    """``value`` if it can be a customer id (the input contract's rules), else ValueError."""
    if not value:
        raise ValueError("customer id is empty")
    if len(value) > max_length:
        raise ValueError(f"customer id longer than {max_length} characters")
    if not value.isprintable():
        raise ValueError("customer id contains control characters")
    if value.strip() != value:
        raise ValueError("customer id has leading or trailing whitespace")
    return value


def risk_level(probability: float, threshold: float) -> str:
    """``low`` under ``threshold``, else the alert's level (medium, high or critical)."""
    if probability < threshold:
        return "low"
    return alert_risk_level(probability, threshold)


@dataclass(frozen=True, slots=True)
class CustomerReport:
    """Everything a person asks about one customer, as of ``as_of`` (event time)."""

    customer_id: str
    as_of: datetime
    #: Raw numbers (times as epoch seconds); :meth:`to_dict` makes them readable.
    profile: dict[str, Any]
    model_version: int | None
    segment_id: int | None = None
    segment_name: str | None = None
    #: The segment's typical customer (medians the trainer published), not this customer.
    segment_profile: dict[str, float] = field(default_factory=dict)
    published_segment_id: int | None = None
    rfm_tier: str | None = None
    rfm_scores: tuple[int, int, int] | None = None
    churn_probability: float | None = None
    churn_model_ready: bool = False
    churn_threshold: float | None = None
    #: One of :data:`RISK_LEVELS`; None until the churn model may alert.
    risk_level: str | None = None
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
        """The JSON document (CLI ``--json`` and HTTP): one time format, new fields additive."""
        return {
            "customer_id": self.customer_id,
            "as_of": iso_utc(self.as_of),
            "model_version": self.model_version,
            "segment": None if self.segment_id is None else {
                "segment_id": self.segment_id, "name": self.segment_name,
                "profile": self.segment_profile},
            "published_segment_id": self.published_segment_id,
            "rfm_tier": self.rfm_tier,
            "rfm_scores": None if self.rfm_scores is None else dict(
                zip(("recency", "frequency", "monetary"), self.rfm_scores, strict=True)),
            "churn_probability": self.churn_probability,
            "churn_model_ready": self.churn_model_ready,
            "churn_threshold": self.churn_threshold,
            "risk_level": self.risk_level,
            "reasons": self.reasons,
            "expected_value": self.expected_value,
            "horizon_days": self.horizon_days,
            "value_at_risk": self.value_at_risk,
            "value_tier": self.value_tier,
            "lifecycle_stage": self.lifecycle_stage,
            "published_lifecycle_stage": self.published_lifecycle_stage,
            "profile": readable_profile(self.profile),
        }


def _value_fields(score: Score, bundle: ModelBundle, state: ScoringState | None,
                  view: ProfileView) -> dict[str, Any]:
    """Expected value, value at risk, value tier and lifecycle stage of one scoring."""
    at_risk = bundle.churn_ready and score.churn_probability >= bundle.churn_threshold
    stage = lifecycle_stage(
        None if state is None else state.stage, at=view.as_of,
        last_activity=None if state is None else state.last_activity,
        features=bundle.features(view), at_risk=at_risk, horizon_s=score.horizon_days * DAY)
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


class UnknownSegment(LookupError):
    """No segment of the current model version has this id or name."""

    def __init__(self, wanted: str, known: dict[int, str]) -> None:
        listed = ", ".join(f"{sid} ({name})" for sid, name in sorted(known.items()))
        super().__init__(f"unknown segment {wanted!r}; "
                         + (f"segments: {listed}" if known else "no model version published yet"))
        self.known = known


class InvalidCursor(ValueError):
    """A page cursor that this reader did not hand out."""


class CursorExpired(LookupError):
    """The model version a cursor was scored with is no longer stored: start again."""


# --- segment summaries --------------------------------------------------------------------


@dataclass
class SegmentSummary:
    """Size and median profile of one segment, over the customers scored into it."""

    segment_id: int | None
    name: str
    size: int
    share: float
    medians: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"segment_id": self.segment_id, "name": self.name, "size": self.size,
                "share": round(self.share, 4), "medians": self.medians}


def summarize_segments(rows: Iterable[dict[str, Any]]) -> list[SegmentSummary]:
    """Group plain rows (``segment_id``, ``segment_name`` and profile fields) into summaries.

    Rows without a segment (no model version yet) form an ``unassigned`` group.
    """
    groups: dict[int | None, list[dict[str, Any]]] = {}
    names: dict[int | None, str] = {}
    for row in rows:
        sid = row.get("segment_id")
        groups.setdefault(sid, []).append(row)
        names[sid] = row.get("segment_name") or (UNASSIGNED if sid is None else f"segment {sid}")
    total = sum(len(g) for g in groups.values())
    out = []
    for sid, members in groups.items():
        medians = {}
        for name in SEGMENT_FIELDS:
            values = [float(m[name]) for m in members if isinstance(m.get(name), int | float)]
            if values:
                medians[name] = round(statistics.median(values), 4)
        out.append(SegmentSummary(sid, names[sid], len(members),
                                  len(members) / total if total else 0.0, medians))
    out.sort(key=lambda s: (-s.size, s.segment_id is None, s.segment_id or 0))
    return out


def report_row(report: CustomerReport) -> dict[str, Any]:
    """The plain row :func:`summarize_segments` reads (a count never stored is 0)."""
    row = {k: report.profile.get(k, 0.0) for k in SEGMENT_FIELDS}
    row.update(segment_id=report.segment_id, segment_name=report.segment_name,
               churn_probability=report.churn_probability)
    return row


@dataclass(frozen=True, slots=True)
class SegmentsReport:
    """Segment summaries, the model version that scored them and the instant they describe."""

    summaries: list[SegmentSummary]
    model_version: int | None
    as_of: datetime

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (``segments --json`` and ``GET /v1/segments``)."""
        return {"as_of": iso_utc(self.as_of), "model_version": self.model_version,
                "customers": sum(s.size for s in self.summaries),
                "segments": [s.to_dict() for s in self.summaries]}


# --- members, paged -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberFilter:
    """Which customers a members listing keeps (None: any)."""

    segment_id: int | None = None
    risk_levels: frozenset[str] | None = None

    def keeps(self, report: CustomerReport) -> bool:
        """Whether ``report`` belongs in the listing."""
        if self.segment_id is not None and report.segment_id != self.segment_id:
            return False
        return self.risk_levels is None or report.risk_level in self.risk_levels


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Where a members listing goes on: a SCAN cursor and the last customer id examined
    in that SCAN reply, pinned to one instant and one model version so that every page
    of a listing is scored alike."""

    scan: int
    after: str | None
    as_of: datetime
    model_version: int | None

    def encode(self) -> str:
        """An opaque URL-safe token."""
        doc = [self.scan, self.after, round(self.as_of.timestamp() * 1e6), self.model_version]
        return base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> PageCursor:
        """Inverse of :meth:`encode`; InvalidCursor for anything else."""
        try:
            doc = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            scan, after, micros, version = doc
            if not (isinstance(scan, int) and 0 <= scan < 2**64 and isinstance(micros, int)
                    and (after is None or isinstance(after, str))
                    and (version is None or (isinstance(version, int) and version > 0))):
                raise TypeError
            when = datetime.fromtimestamp(micros / 1e6, UTC)
        except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError,
                OverflowError, OSError):
            raise InvalidCursor("invalid cursor: pass the next_cursor of a previous page "
                                "unchanged") from None
        return cls(scan, after, when, version)


@dataclass(frozen=True, slots=True)
class MemberPage:
    """One page of a members listing; ``next_cursor`` is None on the last page."""

    reports: list[CustomerReport]
    next_cursor: str | None
    #: Stored customers examined to fill this page.
    scanned: int
    as_of: datetime
    model_version: int | None


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
        self._pinned: dict[int, ModelBundle] = {}

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

    async def bundle_version(self, version: int) -> ModelBundle:
        """One stored version (verified); CursorExpired once it is no longer kept."""
        current = self._bundle
        if current is not None and current.version == version:
            return current
        if version not in self._pinned:
            try:
                loaded = (await self.models.load_bundle(version)).bundle
            except SnapshotRejected as exc:
                raise CursorExpired(f"model version {version} of this listing is no longer "
                                    f"readable ({exc.reason}); start again without a "
                                    "cursor") from None
            if len(self._pinned) >= 4:  # a listing reads pages of one or two versions
                self._pinned.pop(next(iter(self._pinned)))
            self._pinned[version] = loaded
        return self._pinned[version]

    async def published_at(self, version: int) -> float | None:
        """Wall time (epoch seconds) a stored version was published, None if unknown."""
        raw = await self.client.get(keys.model_key(self.settings.redis.key_prefix,
                                                   f"published:{version}"))
        return float(raw) if raw else None

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
        bundle = await self.bundle()
        return self._reports([record], when, bundle)[0]

    async def all_customers(self, as_of: datetime | None = None,
                            chunk: int = 500) -> AsyncIterator[CustomerReport]:
        """Stream a report for every known customer, scored in vectorised chunks.

        Everyone is scored as of one instant (``as_of``, or the current event time) and
        with the model version current when the listing started.
        """
        as_of = await self.resolve_as_of(as_of)
        bundle = await self.bundle()
        ids: list[str] = []
        async for cid in self.profiles.customers():
            ids.append(cid)
            if len(ids) >= chunk:
                for report in await self._chunk(ids, as_of, bundle):
                    yield report
                ids = []
        if ids:
            for report in await self._chunk(ids, as_of, bundle):
                yield report

    async def segment_summaries(self, as_of: datetime | None = None) -> SegmentsReport:
        """Size and medians of every segment over all stored customers (a full scan)."""
        when = await self.resolve_as_of(as_of)
        bundle = await self.bundle()
        rows = [report_row(r) async for r in self.all_customers(when)]
        return SegmentsReport(summarize_segments(rows), bundle.version if bundle else None,
                              when)

    async def find_segment(self, wanted: str, version: int | None = None) -> int:
        """The id of the segment with this id or name in model ``version`` (default: the
        current one); UnknownSegment if it has none."""
        bundle = await self.bundle() if version is None else await self.bundle_version(version)
        known = {} if bundle is None else {sid: s.name for sid, s in bundle.segments.items()}
        text = wanted.strip()
        if text.isdigit() and int(text) in known:
            return int(text)
        for sid, name in known.items():
            if name.casefold() == text.casefold():
                return sid
        raise UnknownSegment(wanted, known)

    async def members(self, which: MemberFilter, *, limit: int, as_of: datetime | None = None,
                      cursor: PageCursor | None = None, max_scan: int = 20_000) -> MemberPage:
        """Up to ``limit`` customers ``which`` keeps, examining at most ``max_scan`` stored ones.

        Pages follow Redis SCAN: a customer stored during the whole listing is listed
        exactly once; one added or removed meanwhile may or may not be. A page may hold
        fewer than ``limit`` customers (``max_scan`` reached): go on while ``next_cursor``
        is not None. A cursor pins the instant and model version of its first page.
        """
        if cursor is None:
            when = await self.resolve_as_of(as_of)
            bundle = await self.bundle()
            cursor = PageCursor(0, None, when, bundle.version if bundle else None)
        else:
            bundle = None if cursor.model_version is None else \
                await self.bundle_version(cursor.model_version)
        found: list[CustomerReport] = []
        scanned, scan, after = 0, cursor.scan, cursor.after
        pattern = keys.profile_pattern(self.settings.redis.key_prefix)
        while True:
            next_scan, raw = await self.client.scan(scan, match=pattern, count=SCAN_COUNT)
            ids = sorted({self._customer_of(k) for k in raw})
            ids = [c for c in ids if after is None or c > after]
            for start in range(0, len(ids), SCAN_COUNT):
                if scanned >= max_scan:  # only after a part: start > 0
                    following = PageCursor(scan, ids[start - 1], cursor.as_of,
                                           cursor.model_version)
                    return MemberPage(found, following.encode(), scanned, cursor.as_of,
                                      cursor.model_version)
                part = ids[start:start + SCAN_COUNT]
                stop = await self._collect(part, which, cursor.as_of, bundle, found, limit,
                                           max_scan - scanned)
                scanned += stop if stop >= 0 else len(part)
                if stop >= 0:  # the page is full, or max_scan reached, within this reply
                    following = PageCursor(scan, part[stop - 1], cursor.as_of,
                                           cursor.model_version)
                    return MemberPage(found, following.encode(), scanned, cursor.as_of,
                                      cursor.model_version)
            scan, after = int(next_scan), None
            if scan == 0:
                return MemberPage(found, None, scanned, cursor.as_of, cursor.model_version)
            if scanned >= max_scan:
                following = PageCursor(scan, None, cursor.as_of, cursor.model_version)
                return MemberPage(found, following.encode(), scanned, cursor.as_of,
                                  cursor.model_version)

    async def _collect(self, ids: list[str], which: MemberFilter, as_of: datetime,
                       bundle: ModelBundle | None, found: list[CustomerReport], limit: int,
                       budget: int) -> int:
        """Score ``ids`` in order into ``found``; how many were examined when the page
        filled up or ``budget`` ran out (-1: all of them, the page still open)."""
        present = [r for r in await self.scoring.read(ids) if r.profile is not None]
        reports = {r.customer_id: r for r in self._reports(present, as_of, bundle)}
        for i, cid in enumerate(ids):
            report = reports.get(cid)
            if report is not None and which.keeps(report):
                found.append(report)
            if len(found) >= limit or i + 1 >= budget:
                return i + 1
        return -1

    def _customer_of(self, key: bytes | str) -> str:
        raw = key.decode() if isinstance(key, bytes) else str(key)
        return keys.customer_from_key(self.settings.redis.key_prefix, raw)

    async def _chunk(self, ids: list[str], as_of: datetime,
                     bundle: ModelBundle | None) -> list[CustomerReport]:
        present = [r for r in await self.scoring.read(ids) if r.profile is not None]
        return self._reports(present, as_of, bundle)

    @staticmethod
    def _reports(records: Sequence[CustomerRecord], as_of: datetime,
                 bundle: ModelBundle | None) -> list[CustomerReport]:
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
                threshold = bundle.churn_threshold
                base.update(
                    segment_id=score.segment_id, segment_name=score.segment_name,
                    segment_profile=score.segment_profile, rfm_tier=score.rfm_tier,
                    rfm_scores=score.rfm_scores, churn_probability=score.churn_probability,
                    churn_model_ready=bundle.churn_ready, churn_threshold=threshold,
                    risk_level=risk_level(score.churn_probability, threshold)
                    if bundle.churn_ready else None,
                    expected_value=score.expected_value, horizon_days=score.horizon_days,
                    reasons=[{"feature": f, "contribution": c, "text": t}
                             for f, c, t in score.reasons])
                base.update(_value_fields(score, bundle, state, view))
            reports.append(CustomerReport(**base))
        return reports
