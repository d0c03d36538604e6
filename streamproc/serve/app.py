"""The HTTP read API: FastAPI routes over :class:`streamproc.api.AnalyticsReader`.

Built by :func:`create_app` per call (no module singleton), so tests make one per test.
Every route only reads Redis; errors are a status code and a one-sentence ``detail``.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at run
# time, and those built in the factories refer to local values (the page size limits).
import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import redis.exceptions
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from streamproc import api
from streamproc.api import (
    AnalyticsReader,
    CursorExpired,
    CustomerNotFound,
    InvalidCursor,
    MemberFilter,
    MemberPage,
    NoEventTime,
    PageCursor,
    SegmentsReport,
    UnknownSegment,
)
from streamproc.core.modelset import SnapshotRejected
from streamproc.serve import models
from streamproc.settings import Settings
from streamproc.times import iso_utc, parse_time

log = logging.getLogger(__name__)

DESCRIPTION = """\
Live customer profiles, segments and churn risk, scored with the model version every
worker uses. Read-only. Times are ISO-8601 in UTC (`2026-03-01T12:00:00Z`) in every
response; `as_of` takes ISO-8601, epoch milliseconds or `now` (the default: the
deployment's current event time, the same instant for every customer). Documents may gain
fields in later versions: ignore fields you do not know.
"""

AS_OF_DOC = ("Score as of this event time: ISO-8601 (UTC when it has no offset), epoch "
             "milliseconds, or now (default: the deployment's current event time).")
RISK_DOC = "Keep customers at these risk levels (repeatable); default: every level."


def _invalid(name: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors."""
    return HTTPException(422, [{"loc": ["query", name], "msg": message, "type": "value_error"}])


def as_of_param(as_of: Annotated[str | None, Query(description=AS_OF_DOC)] = None,
                ) -> datetime | None:
    """The ``as_of`` query parameter, parsed."""
    if as_of is None:
        return None
    try:
        return parse_time(as_of)
    except ValueError as exc:
        raise _invalid("as_of", str(exc)) from None


AsOf = Annotated[datetime | None, Depends(as_of_param)]
Risk = Annotated[list[models.RiskLevel] | None, Query(description=RISK_DOC)]


@dataclass
class _Cached:
    """Segment summaries as of now, shared by concurrent requests and kept ``ttl_s``."""

    ttl_s: float
    value: SegmentsReport | None = None
    at: float = 0.0

    def __post_init__(self) -> None:
        self.lock = asyncio.Lock()

    async def get(self, compute: Callable[[], Awaitable[SegmentsReport]]) -> SegmentsReport:
        async with self.lock:
            if self.value is None or time.monotonic() - self.at >= self.ttl_s:
                self.value, self.at = await compute(), time.monotonic()
            return self.value


def _page_document(page: MemberPage, limit: int) -> dict[str, Any]:
    return {"as_of": iso_utc(page.as_of), "model_version": page.model_version,
            "limit": limit, "scanned": page.scanned, "next_cursor": page.next_cursor,
            "items": [r.to_dict() for r in page.reports]}


def _errors(app: FastAPI) -> None:
    """Map the reader's exceptions to statuses (one place, for every route)."""
    statuses: dict[type[Exception], int] = {
        CustomerNotFound: 404, UnknownSegment: 404, NoEventTime: 409, CursorExpired: 410,
        SnapshotRejected: 503, redis.exceptions.ConnectionError: 503,
        redis.exceptions.TimeoutError: 503,
    }

    def handler(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def respond(request: Request, exc: Exception) -> JSONResponse:
            if status == 503:
                log.warning("%s %s: %s", request.method, request.url.path,
                            type(exc).__name__)
                detail = ("Redis is unreachable" if isinstance(exc, redis.exceptions.RedisError)
                          else f"the current model version cannot be read: {exc}")
            elif isinstance(exc, CustomerNotFound):
                detail = f"unknown customer: {exc.args[0]}"
            else:
                detail = str(exc)
            return JSONResponse({"detail": detail}, status_code=status)

        return respond

    for exc_type, status in statuses.items():
        app.add_exception_handler(exc_type, handler(status))


def _auth(settings: Settings) -> list[Any]:
    """The dependency every /v1 route runs: a bearer token when one is configured."""
    token = settings.serve.token
    if token is None:
        return []
    expected = token.get_secret_value().encode()
    bearer = HTTPBearer(auto_error=False, description="STREAMPROC_SERVE__TOKEN")

    async def require_token(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        given = b"" if credentials is None else credentials.credentials.encode()
        # Constant time: how much of a guess matched must not show in the response time.
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    return [Depends(require_token)]


def create_app(settings: Settings, reader: AnalyticsReader | None = None) -> FastAPI:
    """The read API over ``reader`` (a new one on ``settings`` when None, closed at exit)."""
    own = reader is None
    the_reader = reader if reader is not None else AnalyticsReader(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if own:
            await the_reader.close()

    app = FastAPI(title="streamproc read API", version="0.1.0", description=DESCRIPTION,
                  lifespan=lifespan, responses={422: {"model": models.Problem}})
    _errors(app)
    app.include_router(_health_routes(the_reader))
    app.include_router(_customer_routes(settings, the_reader), dependencies=_auth(settings))
    app.include_router(_segment_routes(settings, the_reader), dependencies=_auth(settings))
    return app


def _health_routes(reader: AnalyticsReader) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=models.Health)
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @router.get("/readyz", response_model=models.Health,
                responses={503: {"model": models.Health}})
    async def readyz() -> Any:
        """Readiness: Redis answers."""
        try:
            await reader.client.ping()
        except redis.exceptions.RedisError as exc:
            return JSONResponse({"status": "unavailable", "detail": type(exc).__name__},
                                status_code=503)
        return {"status": "ok"}

    return router


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": models.Problem},
                                               409: {"model": models.Problem}}


def _customer_routes(settings: Settings, reader: AnalyticsReader) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["customers"], responses=_NOT_FOUND)
    max_id = settings.ingest.max_id_length
    serve = settings.serve

    @router.get("/customers/{customer_id:path}", response_model=models.Customer)
    async def customer(
            customer_id: Annotated[str, Path(description="The customer id events carry.")],
            as_of: AsOf) -> dict[str, Any]:
        """One customer's profile, segment, RFM tier, churn probability and reasons."""
        try:
            api.check_customer_id(customer_id, max_id)
        except ValueError as exc:
            raise HTTPException(422, [{"loc": ["path", "customer_id"], "msg": str(exc),
                                       "type": "value_error"}]) from None
        return (await reader.customer(customer_id, as_of)).to_dict()

    @router.get("/customers", response_model=models.CustomerPage,
                responses={410: {"model": models.Problem}})
    async def customers(
            as_of: AsOf, risk_level: Risk = None,
            segment: Annotated[str | None, Query(description="Segment id or name.")] = None,
            limit: Annotated[int, Query(ge=1, le=serve.max_page_size)] =
            serve.default_page_size,
            cursor: Annotated[str | None, Query(description="next_cursor of the previous "
                                                "page.")] = None) -> dict[str, Any]:
        """Customers of a segment and/or risk levels (all of them without a filter), paged."""
        return await _members(reader, settings, segment, risk_level, limit, cursor, as_of)

    return router


def _segment_routes(settings: Settings, reader: AnalyticsReader) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["segments"], responses=_NOT_FOUND)
    serve = settings.serve
    cached = _Cached(serve.summary_ttl_s)

    @router.get("/segments", response_model=models.Segments)
    async def segments(as_of: AsOf) -> dict[str, Any]:
        """Size and medians of every segment (a scan of every customer; as of now, cached
        for STREAMPROC_SERVE__SUMMARY_TTL_S)."""
        if as_of is None and serve.summary_ttl_s > 0:
            return (await cached.get(reader.segment_summaries)).to_dict()
        return (await reader.segment_summaries(as_of)).to_dict()

    @router.get("/segments/{segment}/members", response_model=models.CustomerPage,
                responses={410: {"model": models.Problem}})
    async def segment_members(
            segment: Annotated[str, Path(description="Segment id or name.")], as_of: AsOf,
            risk_level: Risk = None,
            limit: Annotated[int, Query(ge=1, le=serve.max_page_size)] =
            serve.default_page_size,
            cursor: Annotated[str | None, Query()] = None) -> dict[str, Any]:
        """The customers scored into one segment, paged."""
        return await _members(reader, settings, segment, risk_level, limit, cursor, as_of)

    @router.get("/model", response_model=models.Model, tags=["model"])
    async def model() -> dict[str, Any]:
        """The published model version: quality on delayed labels and its segments."""
        return await _model_document(reader)

    return router


async def _members(reader: AnalyticsReader, settings: Settings, segment: str | None,
                   risk: Sequence[str] | None, limit: int, cursor: str | None,
                   as_of: datetime | None) -> dict[str, Any]:
    """One page; the segment is named in the model version the listing is scored with."""
    position = None
    if cursor is not None:
        try:
            position = PageCursor.decode(cursor)
        except InvalidCursor as exc:
            raise _invalid("cursor", str(exc)) from None
        if as_of is not None and as_of != position.as_of:
            raise _invalid("as_of", "differs from the as_of the cursor's listing started "
                           "with; leave it out when passing a cursor")
    segment_id = None
    if segment is not None:
        pinned = position.model_version if position is not None else None
        segment_id = await reader.find_segment(segment, pinned)
    which = MemberFilter(segment_id, None if not risk else frozenset(risk))
    page = await reader.members(which, limit=limit, as_of=as_of, cursor=position,
                                max_scan=settings.serve.max_scan_per_page)
    return _page_document(page, limit)


async def _model_document(reader: AnalyticsReader) -> dict[str, Any]:
    bundle = await reader.bundle()
    if bundle is None:
        return {"model_version": None, "published_at": None, "churn_model_ready": False,
                "churn_threshold": None, "labels_seen": 0, "quality": {}, "segments": []}
    published = await reader.published_at(bundle.version)
    return {
        "model_version": bundle.version,
        "published_at": None if published is None else iso_utc(published),
        "churn_model_ready": bundle.churn_ready, "churn_threshold": bundle.churn_threshold,
        "labels_seen": bundle.labels_seen,
        "quality": {k: (None if v != v else v) for k, v in bundle.quality.items()},
        "segments": [{"segment_id": sid, "name": s.name, "profile": s.profile}
                     for sid, s in sorted(bundle.segments.items())],
    }


__all__ = ["create_app"]
