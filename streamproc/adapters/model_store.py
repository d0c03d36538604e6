"""Signed model snapshots in Redis: versioned bundles, a ``current`` pointer, trainer state.

Bytes are verified (HMAC) before anything is unpickled; a bad blob is refused
and the caller keeps the last good version.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from streamproc.adapters import keys
from streamproc.core.modelset import ModelBundle, SnapshotRejected, Trainer, sign, verify_and_load

log = logging.getLogger(__name__)

#: Old bundle versions kept for roll-back.
KEEP_VERSIONS = 20


@dataclass(frozen=True, slots=True)
class PublishedBundle:
    """A verified bundle and the wall time it was published."""

    bundle: ModelBundle
    published_at: float


class ModelStore:
    """Reads and writes signed snapshots under ``<prefix>:model:*``."""

    def __init__(self, client: aioredis.Redis, prefix: str, key: bytes) -> None:
        self.client = client
        self.prefix = prefix
        self._key = key

    def _k(self, name: str) -> str:
        return keys.model_key(self.prefix, name)

    async def current_version(self) -> int:
        """The published version number (0 when none)."""
        raw = await self.client.get(self._k("current"))
        return int(raw) if raw else 0

    def snapshot(self, bundle: ModelBundle, trainer: Trainer,
                 published_at: float) -> dict[str, bytes | str | int]:
        """What publishing ``bundle`` writes, signed now: later learning cannot leak in."""
        return published_items(self.prefix, self._key, bundle, trainer, published_at)

    async def store(self, version: int, items: Mapping[str, bytes | str | int]) -> None:
        """Write a :meth:`snapshot` in one transaction, moving ``current`` to ``version``."""
        pipe = self.client.pipeline(transaction=True)
        for name, value in items.items():
            pipe.set(name, value)
        old = version - KEEP_VERSIONS
        if old > 0:
            pipe.delete(self._k(f"bundle:{old}"), self._k(f"published:{old}"))
        await pipe.execute()

    async def publish(self, bundle: ModelBundle, trainer: Trainer, published_at: float) -> None:
        """Store the bundle and the trainer state, then move ``current`` to the new version."""
        await self.store(bundle.version, self.snapshot(bundle, trainer, published_at))

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

    async def load_trainer(self) -> Trainer | None:
        """The trainer's last saved state, None when there is none."""
        blob = await self.client.get(self._k("trainer"))
        if blob is None:
            return None
        return Trainer.from_state_bytes(_as_bytes(blob), self._key)

    async def roll_back(self, version: int) -> None:
        """Point ``current`` at an older stored version (operators' escape hatch)."""
        await self.load_bundle(version)  # refuse to point at something that won't verify
        await self.client.set(self._k("current"), version)

    async def reset(self) -> int:
        """Delete every model key (workers go cold); returns how many keys were removed."""
        names = [k async for k in self.client.scan_iter(match=self._k("*"))]
        return int(await self.client.delete(*names)) if names else 0


def published_items(prefix: str, key: bytes, bundle: ModelBundle, trainer: Trainer,
                    published_at: float) -> dict[str, bytes | str | int]:
    """The keys and values publishing a version writes, ``current`` last.

    Also used to seed a store synchronously (the benchmark starts workers with a model).
    """
    return {
        keys.model_key(prefix, f"bundle:{bundle.version}"): sign(_pickle(bundle), key),
        keys.model_key(prefix, f"published:{bundle.version}"): repr(published_at),
        keys.model_key(prefix, "trainer"): trainer.state_bytes(key),
        keys.model_key(prefix, "current"): bundle.version,
    }


def _pickle(bundle: ModelBundle) -> bytes:
    return pickle.dumps(bundle, protocol=pickle.HIGHEST_PROTOCOL)


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value
