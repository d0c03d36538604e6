"""``streamproc deployment``: show the Redis deployment marker, or accept a Redis as the state.

Workers stop consuming when Redis no longer holds the marker they wrote under (it was
flushed, restarted without its data, or replaced); ``accept`` is the operator's
deliberate "this Redis is the state now" (see README, Operations).
"""

from __future__ import annotations

import time
from typing import Any

from streamproc.adapters.deployment import MarkerRecord, accept_marker, read_marker
from streamproc.adapters.redis_store import make_client
from streamproc.settings import Settings


def marker_document(record: MarkerRecord | None, key_prefix: str) -> dict[str, Any]:
    """The marker as JSON-ready data (``marker`` is None when Redis holds none)."""
    return {"key": f"{key_prefix}:deployment",
            "marker": None if record is None else {
                "id": record.id, "created_at": record.created_at, "origin": record.origin}}


async def deployment_status(settings: Settings) -> MarkerRecord | None:
    """The marker Redis holds now (None when it holds none, or not one of ours)."""
    client = make_client(settings.redis)
    try:
        return await read_marker(client, settings.redis.key_prefix)
    finally:
        await client.aclose()


async def deployment_accept(settings: Settings) -> tuple[MarkerRecord | None, MarkerRecord]:
    """Write a new operator marker; returns the one replaced (None if none) and the new one."""
    client = make_client(settings.redis)
    try:
        return await accept_marker(client, settings.redis.key_prefix, time.time())
    finally:
        await client.aclose()
