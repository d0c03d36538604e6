"""Redis feature store: one atomic, idempotent Lua call per batch.

The Lua interpreter in ``profile_update.lua`` applies the ops computed by
``streamproc.core.features``; this module only groups a batch by customer,
ships it, and decodes the answer. Both write scripts run behind the deployment marker
check (``deployment.guarded``): a Redis that lost the worker's marker refuses them.
"""

from __future__ import annotations

import ssl
import struct
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from streamproc.adapters import keys
from streamproc.adapters.cluster import (
    RedisClient,
    group_by_slot,
    is_cluster,
    mget,
    partition,
    run_per_slot,
)
from streamproc.adapters.deployment import DeploymentMarker, guard, guarded
from streamproc.adapters.scoring_codec import decode_state, encode_state, state_token
from streamproc.core import seen
from streamproc.core.features import (
    BINARY_FIELDS,
    LANE_CLICKSTREAM,
    FeatureConfig,
    Op,
    ProfileFormatError,
    profile_from_row,
    profile_row,
)
from streamproc.core.store import CustomerRecord, StateWrite
from streamproc.settings import RedisSettings

_SCRIPT = resources.files("streamproc.adapters").joinpath("profile_update.lua").read_text()
_SCORING_WRITE = resources.files("streamproc.adapters").joinpath("scoring_write.lua").read_text()


@dataclass(slots=True)
class PreparedEvent:
    """A validated event reduced to what the store needs.

    Not frozen: one is built per event, and a frozen dataclass pays
    ``object.__setattr__`` for each field.
    """

    customer_id: str
    event_id: str
    ts: float
    ops: Sequence[Op]
    #: The id ring the event is deduplicated in (one per input topic).
    lane: str = LANE_CLICKSTREAM


@dataclass(frozen=True, slots=True)
class CustomerUpdate:
    """What one customer looks like after a batch was applied."""

    customer_id: str
    state: dict[str, Any]
    #: The profile with the customer's scoring state as stored (its token included).
    scoring: CustomerRecord
    #: Per event of the customer, in batch order: seen.APPLIED, DUPLICATE or LATE.
    statuses: list[int]
    #: Cart/order links the customer's full link ring cost in this batch: each may be a
    #: conversion not counted (seen.touch_link).
    links_dropped: int = 0

    @property
    def applied(self) -> list[bool]:
        """Per event: was it counted."""
        return [s == seen.APPLIED for s in self.statuses]


#: First byte of a customer value holding profile and scoring state (never a msgpack byte).
VALUE_TAG: Final = 0xC1
_HEAD: Final = 5


def split_value(raw: bytes | str | None) -> tuple[bytes | None, bytes | None]:
    """A customer key's value as (profile blob, scoring-state blob), None where empty.

    The layout (see ``profile_update.lua``): the tag byte, the profile's length (4 bytes,
    big-endian), the profile, then the scoring state.
    """
    if not raw:
        return None, None
    if isinstance(raw, str):  # a client built with decode_responses; never ours
        raw = raw.encode("utf-8", "surrogateescape")
    if raw[0] != VALUE_TAG:
        return raw, None
    n = int.from_bytes(raw[1:_HEAD], "big")
    return raw[_HEAD:_HEAD + n] or None, raw[_HEAD + n:] or None


def customer_record(customer_id: str, profile: dict[str, Any] | None,
                    state_blob: bytes | None) -> CustomerRecord:
    """A customer as the scoring store reads it, from its profile and state blob."""
    state, stale = decode_state(customer_id, state_blob)
    return CustomerRecord(customer_id, profile, state, state_token(state_blob), stale)


def _unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False,
                           unicode_errors="surrogateescape")


def decode_profile(blob: bytes | None) -> dict[str, Any]:
    """Decode a stored profile, or a whole customer value, to its mapping ({} if none).

    A profile is a positional array (``features.STORED_FIELDS``); anything else, or a
    profile of a newer version, raises ``ProfileFormatError``. Lua's cmsgpack has no
    binary type: the byte-string fields come back as msgpack strings, decoded losslessly
    with ``surrogateescape`` and turned back into bytes.
    """
    if blob and blob[0] == VALUE_TAG:
        blob = split_value(blob)[0]
    if not blob:
        return {}
    row = _unpack(blob)
    if not isinstance(row, list):
        raise ProfileFormatError(f"stored profile is a msgpack {type(row).__name__}, "
                                 "not an array")
    value = profile_from_row(row)
    for name in BINARY_FIELDS:
        field = value.get(name)
        if isinstance(field, str):
            value[name] = field.encode("utf-8", "surrogateescape")
    return value


def decode_blob(blob: bytes | str | None) -> dict[str, Any]:
    """Decode a scoring state (a msgpack map); a whole customer value decodes to its profile."""
    if isinstance(blob, str):
        blob = blob.encode()
    if not blob:
        return {}
    if blob[0] == VALUE_TAG:
        return decode_profile(blob)
    decoded = _unpack(blob)
    return decoded if isinstance(decoded, dict) else {}


def pack_like_lua(value: Any) -> bytes:
    """Pack ``value`` byte for byte as Lua's cmsgpack packs the same Lua value.

    Lua numbers are doubles: whole ones pack as integers, the others as float32 when
    that is exact, else float64. Strings and bytes pack as msgpack str (``str 8`` from 32
    bytes, which msgpack-python only uses with bin types on). Absent is False or None.
    Map entries follow the mapping's order, where Lua follows its hash order.
    """
    out = bytearray()
    _pack_lua(value, out)
    return bytes(out)


def _header(out: bytearray, n: int, fix: int, wide: int) -> None:
    # Collection headers: fixarray/fixmap up to 15, then 16- and 32-bit counts.
    if n <= 15:
        out.append(fix | n)
    elif n <= 0xFFFF:
        out += bytes([wide]) + n.to_bytes(2, "big")
    else:
        out += bytes([wide + 1]) + n.to_bytes(4, "big")


def _pack_lua(value: Any, out: bytearray) -> None:
    if value is None:
        out.append(0xC0)
    elif isinstance(value, bool):
        out.append(0xC3 if value else 0xC2)
    elif isinstance(value, int | float):
        number = float(value)
        if number.is_integer() and -(2**63) <= number < 2**63:
            out += msgpack.packb(int(number))
            return
        try:
            single = struct.pack(">f", number)
        except OverflowError:
            single = b""
        if single and struct.unpack(">f", single)[0] == number:
            out += b"\xca" + single
        else:
            out += b"\xcb" + struct.pack(">d", number)
    elif isinstance(value, str | bytes):
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        n = len(raw)
        if n < 32:
            out.append(0xA0 | n)
        elif n <= 0xFF:
            out += bytes([0xD9, n])
        elif n <= 0xFFFF:
            out += b"\xda" + n.to_bytes(2, "big")
        else:
            out += b"\xdb" + n.to_bytes(4, "big")
        out += raw
    elif isinstance(value, Mapping):
        _header(out, len(value), 0x80, 0xDE)
        for key, item in value.items():
            _pack_lua(key, out)
            _pack_lua(item, out)
    elif isinstance(value, list | tuple):
        _header(out, len(value), 0x90, 0xDC)
        for item in value:
            _pack_lua(item, out)
    else:
        raise TypeError(f"cannot pack {type(value).__name__} as Lua would")


def encode_profile(state: Mapping[str, Any]) -> bytes:
    """A profile as ``profile_update.lua`` stores it (the Python twin of its save)."""
    return pack_like_lua(profile_row(state))


def encode_for_lua(value: Any) -> bytes:
    """Encode a script argument: bytes as msgpack str, the only string type cmsgpack reads."""
    packed: bytes = msgpack.packb(value, use_bin_type=False)
    return packed


def encode_blob(value: Any) -> bytes:
    """Encode a value (a state mapping, a batch) the way Lua reads it."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def make_client(settings: RedisSettings) -> RedisClient:
    """An asyncio Redis client from settings (password and TLS included).

    With ``cluster`` on, a Redis Cluster client: the URL names any one node.
    """
    kwargs: dict[str, Any] = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
    if settings.username:
        kwargs["username"] = settings.username
    if settings.url.startswith("rediss://"):
        kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        if settings.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = settings.ssl_ca_certs
    if settings.cluster:
        return RedisCluster.from_url(settings.url, **kwargs)
    return aioredis.Redis.from_url(settings.url, **kwargs)


class RedisProfileStore:
    """Customer profiles in Redis, updated atomically and deduplicated by event id."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str,
        features: FeatureConfig,
        profile_ttl_s: int,
        marker: DeploymentMarker | None = None,
    ) -> None:
        self.client = client
        self.cluster = is_cluster(client)
        self.prefix = prefix
        #: Writes go only to a Redis holding this marker (None: unchecked, for tools).
        self.marker = marker
        self._script = client.register_script(guarded(_SCRIPT))
        wire = features.as_wire()
        wire.update(pttl=profile_ttl_s)
        self._config = encode_for_lua(wire)

    @classmethod
    def from_settings(cls, client: RedisClient, settings: RedisSettings,
                      features: FeatureConfig,
                      marker: DeploymentMarker | None = None) -> RedisProfileStore:
        """A store configured from :class:`RedisSettings`."""
        return cls(client, prefix=settings.key_prefix, features=features,
                   profile_ttl_s=settings.profile_ttl_s, marker=marker)

    async def apply_batch(self, events: Sequence[PreparedEvent],
                          now: int | None = None) -> list[CustomerUpdate]:
        """Apply a batch in one round trip; returns each touched customer's new state.

        ``now`` (wall clock, whole seconds; default: this machine's) expires cart/order links.
        Raises ``redis.exceptions.ResponseError`` for a stored profile this version cannot
        read or write, and writes nothing then (on Redis Cluster: nothing in that slot;
        other slots' calls may have landed, and a retried batch finds their events seen).
        """
        if not events:
            return []
        groups: dict[str, list[tuple[bytes, float, Sequence[Op], str]]] = {}
        digest = seen.event_digest
        for ev in events:
            groups.setdefault(ev.customer_id, []).append(
                (digest(ev.event_id), ev.ts, ev.ops, ev.lane))
        customers = list(groups)
        wall = int(time.time()) if now is None else now
        names = [keys.profile_key(self.prefix, c) for c in customers]
        slots = group_by_slot(names, self.cluster)
        calls = []
        for group in slots:
            marker_keys, marker_args = guard(self.marker, names[group[0]])
            calls.append(([*(names[i] for i in group), *marker_keys],
                          [self._config, encode_for_lua([groups[customers[i]] for i in group]),
                           wall, *marker_args]))
        replies = await run_per_slot(self.client, self._script, calls)
        # Customers in the order they first appear in the batch, whatever their slots.
        rows: list[Any] = [None] * len(customers)
        for group, reply in zip(slots, replies, strict=True):
            for i, row in zip(group, reply, strict=True):
                rows[i] = row
        updates = []
        for customer_id, (blob, out_blob, flags, dropped) in zip(customers, rows, strict=True):
            profile = decode_profile(blob or None)
            updates.append(CustomerUpdate(
                customer_id=customer_id, state=profile,
                scoring=customer_record(customer_id, profile, out_blob or None),
                statuses=[int(f) for f in flags], links_dropped=int(dropped)))
        return updates

    async def get_state(self, customer_id: str) -> dict[str, Any] | None:
        """The raw stored profile of one customer, None if unknown."""
        return (await self.get_states([customer_id]))[0]

    async def get_states(self, customer_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Raw profiles of many customers in one round trip."""
        if not customer_ids:
            return []
        values = await mget(self.client, [keys.profile_key(self.prefix, c) for c in customer_ids])
        out: list[dict[str, Any] | None] = []
        for value in values:
            profile = split_value(value)[0]
            out.append(decode_profile(profile) if profile else None)
        return out

    async def customers(self, count: int = 1000) -> AsyncIterator[str]:
        """Every customer with a stored profile (SCAN; safe on a live server)."""
        async for key in self.client.scan_iter(match=keys.profile_pattern(self.prefix),
                                               count=count):
            raw = key.decode() if isinstance(key, bytes) else str(key)
            yield keys.customer_from_key(self.prefix, raw)

    async def memory_usage(self, customer_id: str) -> int:
        """Bytes Redis uses for one customer's profile key."""
        used = await self.client.memory_usage(keys.profile_key(self.prefix, customer_id))
        return int(used or 0)


class RedisScoringStore:
    """The :class:`~streamproc.core.store.ScoringStore` on Redis: states in customers' keys,
    schedules in sorted sets (``<prefix>:<schedule>``), written by ``scoring_write.lua``."""

    def __init__(self, client: RedisClient, *, prefix: str, ttl_s: int,
                 marker: DeploymentMarker | None = None) -> None:
        self.client = client
        self.cluster = is_cluster(client)
        self.prefix = prefix
        #: Applies to a state written for a customer with no key (its profile expired).
        self.ttl_s = ttl_s
        #: Writes go only to a Redis holding this marker (None: unchecked, for tools).
        self.marker = marker
        self._write = client.register_script(guarded(_SCORING_WRITE))

    @classmethod
    def from_settings(cls, client: RedisClient, settings: RedisSettings,
                      marker: DeploymentMarker | None = None) -> RedisScoringStore:
        """A store configured from :class:`RedisSettings`."""
        return cls(client, prefix=settings.key_prefix, ttl_s=settings.profile_ttl_s,
                   marker=marker)

    def schedule_key(self, schedule: str) -> str:
        """The sorted set of a schedule (``core.store.schedule_name``)."""
        return keys.schedule_key(self.prefix, schedule)

    async def read(self, customer_ids: Sequence[str]) -> list[CustomerRecord]:
        """Profiles and scoring states of customers, in order, in one round trip."""
        if not customer_ids:
            return []
        values = await mget(self.client, [keys.profile_key(self.prefix, c) for c in customer_ids])
        out = []
        for cid, value in zip(customer_ids, values, strict=True):
            profile, state = split_value(value)
            out.append(customer_record(cid, decode_profile(profile) if profile else None, state))
        return out

    async def write(self, writes: Sequence[StateWrite]) -> list[str]:
        """Apply every write whose token still names the stored state.

        Returns the customers whose write was refused. On a single instance one script
        call writes states and schedule entries atomically. On Redis Cluster the keys of
        one call must share a slot: one call per slot writes the states, then the
        schedule entries of the writes that were not refused follow (``_schedule``).
        """
        if not writes:
            return []
        if not self.cluster:
            return await self._write_slot(writes, with_schedules=True)
        groups = partition(writes, lambda w: keys.profile_key(self.prefix, w.customer_id), True)
        calls = [self._call(group, with_schedules=False) for group in groups]
        replies = await run_per_slot(self.client, self._write, calls)
        refused = {group[int(i) - 1].customer_id
                   for group, reply in zip(groups, replies, strict=True) for i in reply}
        await self._schedule([w for w in writes if w.customer_id not in refused])
        return [w.customer_id for w in writes if w.customer_id in refused]

    async def _write_slot(self, writes: Sequence[StateWrite], *,
                          with_schedules: bool) -> list[str]:
        names, args = self._call(writes, with_schedules=with_schedules)
        refused = await self._write(keys=names, args=args)
        return [writes[int(i) - 1].customer_id for i in refused]

    def _call(self, writes: Sequence[StateWrite], *,
              with_schedules: bool) -> tuple[list[str], list[Any]]:
        """Keys and arguments of one ``scoring_write.lua`` call (schedules left out if not
        ``with_schedules``)."""
        sets = sorted({name for w in writes for name in w.schedules}) if with_schedules else []
        index = {name: i + 1 for i, name in enumerate(sets)}
        plan = [[w.token, w.customer_id,
                 [[index[name], False if due is None else due]
                  for name, due in w.schedules.items()] if with_schedules else []]
                for w in writes]
        blobs = [b"" if w.state is None else encode_state(w.state) for w in writes]
        names = [*(keys.profile_key(self.prefix, w.customer_id) for w in writes),
                 *(self.schedule_key(name) for name in sets)]
        marker_keys, marker_args = guard(self.marker, names[0])
        return [*names, *marker_keys], [self.ttl_s, len(writes), *blobs, encode_for_lua(plan),
                                        *marker_args]

    async def _schedule(self, writes: Sequence[StateWrite]) -> None:
        """The schedule entries of applied writes, one ZADD/ZREM per set, one pipeline.

        Not atomic with the states (on a cluster a schedule set lives in its own slot):
        a crash between the two leaves entries out, and the batch, redelivered because
        its offsets were not committed, writes them again (its retried state write is no
        conflict). Entries are unguarded by the marker: a schedule only says when to
        look at a customer, and a look at a customer with no profile finds nothing.
        """
        adds: dict[str, dict[str, float]] = {}
        gone: dict[str, list[str]] = {}
        for w in writes:
            for name, due in w.schedules.items():
                if due is None:
                    gone.setdefault(name, []).append(w.customer_id)
                else:
                    adds.setdefault(name, {})[w.customer_id] = due
        if not adds and not gone:
            return
        pipe = self.client.pipeline(transaction=False)
        for name, mapping in adds.items():
            pipe.zadd(self.schedule_key(name), mapping)
        for name, members in gone.items():
            pipe.zrem(self.schedule_key(name), *members)
        await pipe.execute()

    async def due(self, schedule: str, upto: float, limit: int) -> list[str]:
        """Up to ``limit`` customers of ``schedule`` due at or before ``upto``, oldest first."""
        members = await self.client.zrangebyscore(self.schedule_key(schedule), "-inf", upto,
                                                  start=0, num=limit)
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]
