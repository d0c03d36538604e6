"""Which Redis holds this deployment's state: a marker key, checked by every write.

Redis is the source of truth; a Redis that comes back empty (flushed, or restarted
without persistence) must not be silently refilled from the events that arrive after
it. The marker ``<prefix>:deployment`` holds a random id, written once at a
deployment's first start (SET NX). Every worker remembers the id it writes under, and
every script that writes customer or model state first checks, inside the same atomic
call, that the key still holds that id (:func:`guarded`): a wiped Redis refuses the
write. :class:`DeploymentGuard` reads the marker at start, every few seconds and after
any failed or refused Redis call, and holds the worker's Redis calls while it does not
match, until an operator restores the data or accepts the new Redis
(:func:`accept_marker`, ``streamproc deployment accept``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from redis.exceptions import ResponseError

from streamproc.adapters import keys
from streamproc.adapters.cluster import SLOTS, RedisClient, is_cluster, mget, slot_of, slot_tag

log = logging.getLogger(__name__)

#: Seconds between two marker checks while nothing else asks for one.
CHECK_INTERVAL_S: Final = 5.0
#: First word of a write refused because the marker does not match.
REFUSAL: Final = "STATELOST"

Origin = Literal["first_start", "operator"]
Status = Literal["unverified", "ok", "lost"]

# Prepended to a write script. The caller appends the marker key to KEYS and the value it
# must hold to ARGV (see :func:`guard`); both are taken off before the script proper runs,
# so its own layout is unchanged. The key is declared, as Redis Cluster requires: it is
# the copy in the slot of the script's other keys, and a slot being migrated answers
# TRYAGAIN/ASK for it like for them. An empty value (and no key) turns the check off.
_GUARD: Final = f"""-- deployment guard (streamproc/adapters/deployment.py)
do
  local mval = ARGV[#ARGV]
  ARGV[#ARGV] = nil
  if mval ~= '' then
    local mkey = KEYS[#KEYS]
    KEYS[#KEYS] = nil
    if redis.call('GET', mkey) ~= mval then
      return redis.error_reply('{REFUSAL} the deployment marker ' .. mkey ..
        ' is missing or changed: this Redis is not the one the worker wrote to')
    end
  end
end
"""


def guarded(script: str) -> str:
    """``script`` preceded by the marker check (after a ``#!lua`` line, if it has one)."""
    if script.startswith("#!"):
        head, _, body = script.partition("\n")
        return f"{head}\n{_GUARD}{body}"
    return _GUARD + script


class StateLost(ResponseError):
    """A read or write refused because the marker does not match (see :func:`is_refusal`)."""


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is a call refused because the deployment marker does not match."""
    return isinstance(exc, ResponseError) and str(exc).startswith(REFUSAL)


@dataclass(frozen=True, slots=True)
class MarkerRecord:
    """The value of the marker key: plain JSON, readable with ``redis-cli get``."""

    id: str
    created_at: str
    origin: Origin

    def to_bytes(self) -> bytes:
        """The stored form; workers compare it byte for byte."""
        return json.dumps({"id": self.id, "created_at": self.created_at,
                           "origin": self.origin}).encode()

    @classmethod
    def parse(cls, raw: bytes | None) -> MarkerRecord | None:
        """The record in ``raw``; None when absent or not a marker this version wrote."""
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            origin = doc["origin"]
            if origin not in ("first_start", "operator"):
                return None
            return cls(str(doc["id"]), str(doc["created_at"]), origin)
        except (ValueError, KeyError, TypeError):
            return None

    @classmethod
    def new(cls, origin: Origin, now: float) -> MarkerRecord:
        """A fresh marker with a random id."""
        created = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
        return cls(secrets.token_hex(8), created, origin)


class DeploymentMarker:
    """The marker value a store's guarded scripts require (None: not known yet).

    On Redis Cluster a script checks the copy of the marker in the slot of the keys it
    writes (:func:`keys.deployment_copy_key`), since it may read no other slot.
    """

    def __init__(self, key: str, prefix: str | None = None) -> None:
        self.key = key
        #: Set on Redis Cluster: the prefix of the per-slot copies.
        self.cluster_prefix = prefix
        self.value: bytes | None = None

    def key_for(self, key: str) -> str:
        """The marker key a call touching ``key`` checks (the same slot on a cluster)."""
        if self.cluster_prefix is None:
            return self.key
        return keys.deployment_copy_key(self.cluster_prefix, slot_tag(slot_of(key)))

    def guard(self, key: str = "") -> tuple[list[str], list[str | bytes]]:
        """The trailing keys and arguments of a :func:`guarded` script touching ``key``."""
        # A value nothing can hold refuses every write until the marker is known.
        return [self.key_for(key)], [self.value if self.value is not None else b"\x00unknown"]

    def check(self, raw: bytes | str | None) -> None:
        """Raise :class:`StateLost` unless ``raw`` (read with the data) is the value."""
        if self.value is None or _as_bytes(raw) != self.value:
            raise StateLost(f"{REFUSAL} the deployment marker {self.key} is missing or changed")


class DeploymentGuard:
    """Holds a worker's Redis calls unless Redis still holds this deployment's marker.

    ``history`` tells whether the deployment processed events before (e.g. the consumer
    group has committed offsets): a worker that starts against a Redis without a marker
    creates one only when it did not. ``on_change(status, reason)`` reports every change
    of :attr:`status`; ``reason`` says what was found while it is ``"lost"``.
    :attr:`on_replaced` is called when the worker goes on under another marker than the
    one it wrote under (an operator accepted a new Redis): what it holds in memory from
    the old one is stale.
    """

    def __init__(self, client: RedisClient, prefix: str, *,
                 history: Callable[[], Awaitable[bool]],
                 on_change: Callable[[Status, str | None], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.prefix = prefix
        self.marker = DeploymentMarker(keys.deployment_key(prefix),
                                       prefix if is_cluster(client) else None)
        self.status: Status = "unverified"
        self.reason: str | None = None
        self._history = history
        self._on_change = on_change
        self.on_replaced: Callable[[], None] | None = None
        self._clock = clock
        self._open = asyncio.Event()
        self._wake = asyncio.Event()
        #: Check every slot's copy at the next verify (cluster only; see _copies_hold).
        self._copies_due = True

    @property
    def is_open(self) -> bool:
        """Whether Redis calls may go ahead now."""
        return self._open.is_set()

    async def wait_open(self) -> None:
        """Return once the marker was verified (at once while it is)."""
        await self._open.wait()

    def suspect(self) -> None:
        """Hold calls until the marker is verified again: a call failed or was refused."""
        if self.status == "ok":
            self._set("unverified", None)
        self._wake.set()

    def refused(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a refusal by the marker check; if so, calls are held."""
        if not is_refusal(exc):
            return False
        self._copies_due = True
        self.suspect()
        return True

    async def verify(self) -> None:
        """Read the marker and open or close the gate; see the module docstring."""
        raw = _as_bytes(await self.client.get(self.marker.key))
        record = MarkerRecord.parse(raw)
        expected = self.marker.value
        if raw is not None and (raw == expected or expected is None
                                or (record is not None and record.origin == "operator")):
            if self._copies_due:
                if not await self._copies_hold(raw):
                    return
                self._copies_due = False
            self._adopt(raw, record)
        elif raw is not None:
            self._lose(f"the deployment marker {self.marker.key} holds another deployment's "
                       "id: this Redis is not the one this worker wrote to")
        elif expected is not None:
            self._lose(f"the deployment marker {self.marker.key} is gone: Redis was flushed "
                       "or restarted without its data")
        else:
            await self._first_start()

    async def _first_start(self) -> None:
        try:
            consumed_before = await self._history()
        except Exception as exc:  # any Kafka failure: ask again at the next check
            log.warning("cannot tell whether this deployment processed events before (%s); "
                        "holding until Kafka answers", type(exc).__name__)
            return
        if consumed_before:
            self._lose(f"Redis has no deployment marker ({self.marker.key}) although the "
                       "consumer group has committed offsets: its data was lost while no "
                       "worker was running")
            return
        fresh = MarkerRecord.new("first_start", self._clock())
        await self.client.set(self.marker.key, fresh.to_bytes(), nx=True)
        await self.verify()  # another worker may have created it first: adopt theirs

    async def _copies_hold(self, raw: bytes) -> bool:
        """On a cluster, whether every slot's copy of the marker holds ``raw``.

        Checked at the first check and after a refused write, not every few seconds nor
        after a mere connection failure (it costs one MGET per slot, ~1-3 s of client
        time): a master that lost its data refuses the next write to any of its slots,
        which brings the worker here. Copies missing on a
        deployment that never consumed anything are written (a first start, or one
        that stopped before writing them all); otherwise a master lost its data.
        """
        if self.marker.cluster_prefix is None:
            return True
        names = marker_copy_keys(self.prefix)
        values = await mget(self.client, names)
        bad = [name for name, value in zip(names, values, strict=True)
               if _as_bytes(value) != raw]
        if not bad:
            return True
        if any(value is not None for value in values) or await self._history():
            self._lose(f"{len(bad)} of {SLOTS} slots hold no copy of the deployment marker "
                       f"{self.marker.key} or another one (e.g. {bad[0]}): a cluster master "
                       "lost its data")
            return False
        await write_marker_copies(self.client, self.prefix, raw)
        return True

    def _adopt(self, raw: bytes, record: MarkerRecord | None) -> None:
        previous = self.marker.value
        self.marker.value = raw
        if previous is not None and raw != previous and self.on_replaced is not None:
            self.on_replaced()
        if self.status == "lost":
            how = ("accepted by an operator" if record is not None
                   and record.origin == "operator" else "back")
            log.warning("the deployment marker %s is %s (%s); resuming", self.marker.key,
                        how, record.id if record else "unreadable id")
        elif previous is not None and raw != previous:
            log.warning("the deployment marker %s was replaced by an operator; writing "
                        "under the new one", self.marker.key)
        elif previous is None:
            log.info("deployment marker %s: %s", self.marker.key,
                     record.id if record else "unreadable id")
        self._set("ok", None)

    def _lose(self, reason: str) -> None:
        if self.status != "lost":
            log.error("%s. This worker stopped consuming and writes nothing to Redis: restore "
                      "Redis from a backup (the workers resume by themselves), or accept this "
                      "Redis as it is with `streamproc deployment accept --yes` and replay the "
                      "input topics to rebuild what it lost (README, Operations: Redis lost "
                      "its data)", reason)
        self._set("lost", reason)

    def _set(self, status: Status, reason: str | None) -> None:
        changed = (status, reason) != (self.status, self.reason)
        self.status, self.reason = status, reason
        if status == "ok":
            self._open.set()
        else:
            self._open.clear()
        if changed and self._on_change is not None:
            self._on_change(status, reason)

    async def watch(self, check: Callable[[], Awaitable[None]],
                    on_first: Callable[[], None] | None = None,
                    interval_s: float = CHECK_INTERVAL_S) -> None:
        """Run ``check`` (a retried :meth:`verify`) now, then every ``interval_s`` and
        whenever suspected; ``on_first`` once the first check returned."""
        first = True
        while True:
            self._wake.clear()
            try:
                await check()
            except Exception:
                # A check that dies would hold the worker's Redis calls for good.
                log.exception("deployment marker check failed; trying again")
            if first and on_first is not None:
                on_first()
            first = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval_s)


def marker_copy_keys(prefix: str) -> list[str]:
    """Every slot's copy of the marker (Redis Cluster), slot order."""
    return [keys.deployment_copy_key(prefix, slot_tag(s)) for s in range(SLOTS)]


async def write_marker_copies(client: RedisClient, prefix: str, raw: bytes) -> None:
    """Write ``raw`` to every slot's copy of the marker (a no-op on a single instance)."""
    if not is_cluster(client):
        return
    mapping = dict.fromkeys(marker_copy_keys(prefix), raw)
    await client.mset_nonatomic(mapping)  # type: ignore[union-attr]


async def read_marker(client: RedisClient, prefix: str) -> MarkerRecord | None:
    """The stored marker (None when absent or unreadable)."""
    return MarkerRecord.parse(_as_bytes(await client.get(keys.deployment_key(prefix))))


async def accept_marker(client: RedisClient, prefix: str,
                        now: float) -> tuple[MarkerRecord | None, MarkerRecord]:
    """Make this Redis the deployment's state store: a new operator marker.

    Workers holding because the marker is gone or changed adopt it at their next check
    and resume. Returns the marker replaced (None if there was none) and the new one.
    """
    key = keys.deployment_key(prefix)
    fresh = MarkerRecord.new("operator", now)
    # Copies first: a worker adopting the new main marker finds them in place.
    await write_marker_copies(client, prefix, fresh.to_bytes())
    old = await client.set(key, fresh.to_bytes(), get=True)
    return MarkerRecord.parse(_as_bytes(old) if isinstance(old, str | bytes) else None), fresh


def guard(marker: DeploymentMarker | None,
          key: str = "") -> tuple[list[str], list[str | bytes]]:
    """Trailing keys and arguments of a :func:`guarded` script touching ``key`` for
    ``marker`` (None: no check, for tools and tests that write without a worker's marker)."""
    return marker.guard(key) if marker is not None else ([], [""])


def _as_bytes(raw: bytes | str | None) -> bytes | None:
    # Our clients return bytes; a client built with decode_responses returns str.
    return raw.encode() if isinstance(raw, str) else raw
