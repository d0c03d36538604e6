"""Signed model snapshots in Redis: versioned bundles, a ``current`` pointer, trainer state.

Bytes are verified (HMAC) before anything is unpickled; a bad blob is refused
and the caller keeps the last good version. The trainer state is stored with its
position on the training topic, in the same transaction, so a resumed trainer knows
exactly which examples it has already learned.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass

from streamproc.adapters import keys
from streamproc.adapters.cluster import RedisClient
from streamproc.adapters.deployment import DeploymentMarker, guard, guarded
from streamproc.core.modelset import ModelBundle, SnapshotRejected, Trainer, sign, verify_and_load

log = logging.getLogger(__name__)

#: Old bundle versions kept for roll-back.
KEEP_VERSIONS = 20
#: Key name (under the model prefix, so ``reset`` deletes it) of the trainer position.
POSITION = "trainer_position"
#: Key name of the token of the trainer that owns the state (see :meth:`ModelStore.claim`).
OWNER = "trainer_owner"

# While KEYS[1] still holds the writer's owner token ARGV[1]: sets the ARGV[2] keys after
# it to ARGV[3..], deletes the rest of KEYS; returns 1. Otherwise writes nothing: 0.
_FENCED_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local n = tonumber(ARGV[2])
for i = 2, #KEYS do
  if i <= n + 1 then redis.call('SET', KEYS[i], ARGV[i + 1]) else redis.call('DEL', KEYS[i]) end
end
return 1
"""
# A plain SET of the owner token, as a script so the deployment guard covers it too.
_CLAIM = "redis.call('SET', KEYS[1], ARGV[1])\nreturn 1\n"


@dataclass(frozen=True, slots=True)
class TrainerPosition:
    """How far a trainer state has learned the (single-partition) training topic."""

    topic: str
    #: The first record not fully learned.
    offset: int
    #: Examples of that record already learned (always fewer than it holds).
    index: int
    #: Examples learned since the last version cut, so a resumed trainer cuts at the same
    #: examples as one that never stopped.
    since_version: int = 0

    def to_json(self) -> str:
        """Plain JSON: an operator can read it with ``redis-cli get``."""
        return json.dumps({"topic": self.topic, "offset": self.offset, "index": self.index,
                           "since_version": self.since_version})

    @classmethod
    def from_json(cls, raw: bytes | str) -> TrainerPosition:
        """Inverse of :meth:`to_json`; raises ValueError, KeyError or TypeError if malformed."""
        doc = json.loads(raw)
        position = cls(str(doc["topic"]), int(doc["offset"]), int(doc["index"]),
                       int(doc["since_version"]))
        if min(position.offset, position.index, position.since_version) < 0:
            raise ValueError("negative trainer position")
        return position


@dataclass(frozen=True, slots=True)
class PublishedBundle:
    """A verified bundle and the wall time it was published."""

    bundle: ModelBundle
    published_at: float


class ModelStore:
    """Reads and writes signed snapshots under ``<prefix>:{model}:*`` (one cluster slot)."""

    def __init__(self, client: RedisClient, prefix: str, key: bytes,
                 marker: DeploymentMarker | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self._key = key
        #: The trainer's writes and the worker's reads of ``current`` go only to a Redis
        #: holding this marker (None: unchecked, for the model commands).
        self.marker = marker
        self._fenced_write = client.register_script(guarded(_FENCED_WRITE))
        self._claim = client.register_script(guarded(_CLAIM))

    def _k(self, name: str) -> str:
        return keys.model_key(self.prefix, name)

    async def current_version(self) -> int:
        """The published version number (0 when none).

        With a marker, read with it: a Redis that lost its data raises ``StateLost``
        rather than reporting that no version exists.
        """
        if self.marker is None:
            raw = await self.client.get(self._k("current"))
        else:
            current = self._k("current")
            raw, mark = await self.client.mget([current, self.marker.key_for(current)])
            self.marker.check(mark)
        return int(raw) if raw else 0

    def snapshot(self, bundle: ModelBundle, trainer: Trainer, published_at: float,
                 position: TrainerPosition | None = None) -> dict[str, bytes | str | int]:
        """What publishing ``bundle`` writes, signed now: later learning cannot leak in."""
        return published_items(self.prefix, self._key, bundle, trainer, published_at, position)

    def checkpoint(self, trainer: Trainer, position: TrainerPosition) -> dict[str, bytes | str]:
        """What saving the trainer state alone writes (no new version), signed now."""
        return trainer_items(self.prefix, self._key, trainer, position)

    async def claim(self, owner: str) -> None:
        """Make ``owner`` the only trainer whose stores are accepted (call before loading).

        A trainer that lost the training partition may still be storing what it learned;
        once the next owner has claimed, those stores are refused, so they can neither
        overwrite the newer state nor move ``current`` back.
        """
        marker_keys, marker_args = guard(self.marker, self._k(OWNER))
        await self._claim(keys=[self._k(OWNER), *marker_keys], args=[owner, *marker_args])

    async def store(self, version: int, items: Mapping[str, bytes | str | int],
                    owner: str) -> bool:
        """Write a :meth:`snapshot` atomically, moving ``current`` to ``version``.

        Only while trainer ``owner`` still holds the claim: False when another one claimed
        the state since, or a reset removed it (nothing is written then).
        """
        return await self._write(self._version_writes(version, items), owner)

    async def store_checkpoint(self, items: Mapping[str, bytes | str], owner: str) -> bool:
        """Write a :meth:`checkpoint` atomically; ``owner`` as in :meth:`store`."""
        return await self._write(dict(items), owner)

    def _version_writes(self, version: int, items: Mapping[str, bytes | str | int],
                        ) -> dict[str, bytes | str | int | None]:
        writes: dict[str, bytes | str | int | None] = dict(items)
        old = version - KEEP_VERSIONS
        if old > 0:
            writes[self._k(f"bundle:{old}")] = writes[self._k(f"published:{old}")] = None
        return writes

    async def _write(self, writes: Mapping[str, bytes | str | int | None],
                     owner: str | None) -> bool:
        if owner is None:
            pipe = self.client.pipeline(transaction=True)
            for name, value in writes.items():
                if value is None:
                    pipe.delete(name)
                else:
                    pipe.set(name, value)
            await pipe.execute()
            return True
        sets = {name: value for name, value in writes.items() if value is not None}
        deletes = [name for name, value in writes.items() if value is None]
        marker_keys, marker_args = guard(self.marker, self._k(OWNER))
        done = await self._fenced_write(keys=[self._k(OWNER), *sets, *deletes, *marker_keys],
                                        args=[owner, len(sets), *sets.values(), *marker_args])
        return bool(done)

    async def publish(self, bundle: ModelBundle, trainer: Trainer, published_at: float) -> None:
        """Store the bundle and the trainer state and move ``current``, claim or none.

        For tools and tests; the trainer stores through :meth:`store`, under its claim.
        """
        await self._write(self._version_writes(
            bundle.version, self.snapshot(bundle, trainer, published_at)), None)

    async def load_bundle(self, version: int) -> PublishedBundle:
        """Load and verify one version; raises SnapshotRejected (counted by the caller)."""
        blob, published = await self.client.mget(
            [self._k(f"bundle:{version}"), self._k(f"published:{version}")])
        if blob is None:
            raise SnapshotRejected(f"version {version} not found")
        obj = verify_and_load(_as_bytes(blob), self._key)
        if not isinstance(obj, ModelBundle):
            raise SnapshotRejected("not a model bundle")
        return PublishedBundle(obj, float(published) if published else 0.0)

    async def load_trainer_state(self) -> tuple[Trainer | None, TrainerPosition | None]:
        """The trainer's last saved state and the position it covers, read together.

        Raises SnapshotRejected for a state that does not verify. A missing or unreadable
        position is None: the trainer then learns whatever it is given.
        """
        blob, raw = await self.client.mget([self._k("trainer"), self._k(POSITION)])
        if blob is None:
            return None, None
        trainer = Trainer.from_state_bytes(_as_bytes(blob), self._key)
        if not raw:
            return trainer, None
        try:
            return trainer, TrainerPosition.from_json(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable trainer position (%s)", type(exc).__name__)
            return trainer, None

    async def roll_back(self, version: int) -> None:
        """Point ``current`` at an older stored version (operators' escape hatch)."""
        await self.load_bundle(version)  # refuse to point at something that won't verify
        await self.client.set(self._k("current"), version)

    async def reset(self) -> int:
        """Delete every model key (workers go cold); returns how many keys were removed."""
        names = [k async for k in self.client.scan_iter(match=self._k("*"))]
        return int(await self.client.delete(*names)) if names else 0


def published_items(prefix: str, key: bytes, bundle: ModelBundle, trainer: Trainer,
                    published_at: float,
                    position: TrainerPosition | None = None) -> dict[str, bytes | str | int]:
    """The keys and values publishing a version writes, ``current`` last.

    Also used to seed a store synchronously (the benchmark starts workers with a model).
    """
    return {
        keys.model_key(prefix, f"bundle:{bundle.version}"): sign(_pickle(bundle), key),
        keys.model_key(prefix, f"published:{bundle.version}"): repr(published_at),
        **trainer_items(prefix, key, trainer, position),
        keys.model_key(prefix, "current"): bundle.version,
    }


def trainer_items(prefix: str, key: bytes, trainer: Trainer,
                  position: TrainerPosition | None) -> dict[str, bytes | str]:
    """The trainer state and its position: always written together, so they always match.

    No position is written as an empty value rather than left out, so a stale position
    never outlives the state it described.
    """
    return {
        keys.model_key(prefix, "trainer"): trainer.state_bytes(key),
        keys.model_key(prefix, POSITION): position.to_json() if position else "",
    }


def _pickle(bundle: ModelBundle) -> bytes:
    return pickle.dumps(bundle, protocol=pickle.HIGHEST_PROTOCOL)


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
