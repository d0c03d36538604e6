"""``streamproc model``: inspect, roll back or reset the published model versions."""

from __future__ import annotations

from typing import Any

from streamproc.adapters.model_store import ModelStore
from streamproc.adapters.redis_store import make_client
from streamproc.settings import Settings


def _store(settings: Settings) -> ModelStore:
    key = settings.models.signing_key
    if key is None:
        raise ValueError("STREAMPROC_MODELS__SIGNING_KEY is required to verify model versions")
    return ModelStore(make_client(settings.redis), settings.redis.key_prefix,
                      key.get_secret_value().encode())


async def model_status(settings: Settings) -> dict[str, Any]:
    """The current version with its quality, verified (None fields before the first)."""
    store = _store(settings)
    try:
        version = await store.current_version()
        if not version:
            return {"version": None}
        loaded = await store.load_bundle(version)
        b = loaded.bundle
        return {"version": version, "published_at": loaded.published_at,
                "churn_ready": b.churn_ready, "labels_seen": b.labels_seen,
                "horizon_days": b.horizon_days, "typical_gap_days": b.typical_gap_days,
                "quality": b.quality,
                "segments": {sid: seg.name for sid, seg in sorted(b.segments.items())}}
    finally:
        await store.client.aclose()


async def model_rollback(settings: Settings, version: int) -> int:
    """Point every worker at an older stored version (verified first); returns it."""
    store = _store(settings)
    try:
        await store.roll_back(version)
        return version
    finally:
        await store.client.aclose()


async def model_reset(settings: Settings) -> int:
    """Delete every version and the trainer state; returns the number of keys removed."""
    store = _store(settings)
    try:
        return await store.reset()
    finally:
        await store.client.aclose()
