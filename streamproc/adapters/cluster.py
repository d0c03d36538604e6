"""Redis Cluster support: slots, per-slot calls, and the client type both modes share.

On a cluster every key of one command (or script call) must hash to one slot. The
stores therefore split a batch into one script call per slot and send them in one
cluster pipeline (one round trip per master, in parallel); on a single instance the
whole batch is one group and one call, exactly as before. Redirections (MOVED, ASK)
and TRYAGAIN during a slot migration are retried by redis-py's cluster client.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import NoScriptError

#: Either client: the stores take both and branch only where a cluster needs it.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster
SLOTS: Final = REDIS_CLUSTER_HASH_SLOTS
T = TypeVar("T")


def is_cluster(client: RedisClient) -> bool:
    """Whether ``client`` talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


def slot_of(key: str | bytes) -> int:
    """The cluster slot of ``key`` (hash tags honoured)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    # The smallest decimal string hashing to each slot: ~110k CRC16s, ~0.1 s, once.
    tags: dict[int, str] = {}
    i = 0
    while len(tags) < SLOTS:
        tags.setdefault(slot_of(str(i)), str(i))
        i += 1
    return tuple(tags[s] for s in range(SLOTS))


def slot_tag(slot: int) -> str:
    """A hash tag (``{tag}`` content) whose keys land in ``slot``."""
    return _slot_tags()[slot]


def group_by_slot(keys: Sequence[str], cluster: bool) -> list[list[int]]:
    """Indices of ``keys`` grouped by slot, in first-seen order; one group if not ``cluster``."""
    if not cluster:
        return [list(range(len(keys)))]
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(slot_of(key), []).append(i)
    return list(groups.values())


async def mget(client: RedisClient, keys: Sequence[str]) -> list[Any]:
    """Values of ``keys`` in order: one MGET, or on a cluster one MGET per slot."""
    if isinstance(client, RedisCluster):
        return list(await client.mget_nonatomic(list(keys)))
    return list(await client.mget(list(keys)))


async def run_per_slot(client: RedisClient, script: AsyncScript,
                       calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
    """Run ``script`` once per (keys, args) call; each call's keys share one slot.

    One call is sent as is; several go in one non-transactional cluster pipeline (one
    round trip per master, in parallel). Calls refused with NOSCRIPT (a master that
    joined or failed over since the script was loaded) run again, alone, after the
    script is loaded on every master; the others' replies stand, so a call never runs
    twice. Any other error is raised as the server sent it, once every call has run.
    """
    if len(calls) == 1 or not isinstance(client, RedisCluster):
        return [await script(keys=k, args=a) for k, a in calls]
    replies = await _pipelined(client, script, calls)
    missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if missing:
        await client.script_load(script.script)
        again = await _pipelined(client, script, [calls[i] for i in missing])
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def _pipelined(client: RedisCluster, script: AsyncScript,
                     calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for k, a in calls:
        await script(keys=k, args=a, client=pipe)  # type: ignore[arg-type]
    # Errors as the server sent them (raising, the pipeline would reword the first one).
    return list(await pipe.execute(raise_on_error=False))


def partition(items: Sequence[T], key: Callable[[T], str], cluster: bool) -> list[list[T]]:
    """``items`` grouped by the slot of ``key(item)`` (one group if not ``cluster``)."""
    return [[items[i] for i in group]
            for group in group_by_slot([key(x) for x in items], cluster)]
