"""What scoring needs from storage: one interface, and its in-memory twin.

:class:`ScoringStore` reads customers' profiles with their scoring states, writes
scoring states together with their schedule entries atomically and conditionally, and
lists the customers a schedule holds up to an event time. The Redis implementation is
``streamproc.adapters.redis_store.RedisScoringStore``; :class:`InMemoryStore` is its twin
(the replay's store). One conformance suite runs against both
(``tests/integration/test_scoring_store.py``).

Writes are conditional: a read returns a ``token`` naming the state as read, and a
write whose token no longer names the stored state (another worker wrote it meanwhile,
e.g. for a customer whose two input topics landed on two partitions) is refused and
reported, so the caller reads again and decides again instead of overwriting.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from streamproc.core.features import InMemoryProfiles
from streamproc.core.labels import Snapshot
from streamproc.core.step import ScoringState


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    """A customer's stored profile and scoring state, as read."""

    customer_id: str
    profile: dict[str, Any] | None
    state: ScoringState | None
    #: Names the stored state as read: a write carrying it is refused once it changed.
    token: str
    #: Pending snapshots dropped on reading: stored under another feature set.
    stale_snapshots: int = 0


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One customer's conditional write: its state and its schedule entries."""

    customer_id: str
    token: str
    #: The new state; None leaves the stored one (a customer only leaving schedules).
    state: ScoringState | None
    #: Schedule name -> the customer's due event time there, None to take it out.
    schedules: Mapping[str, float | None] = field(default_factory=dict)


class ScoringStore(Protocol):
    """Storage of scoring states and their schedules (Redis, or in memory)."""

    async def read(self, customer_ids: Sequence[str]) -> list[CustomerRecord]:
        """Profiles and scoring states of customers, in order (absent ones too)."""
        ...

    async def write(self, writes: Sequence[StateWrite]) -> list[str]:
        """Apply every write whose token still names the stored state, atomically.

        Returns the customers whose write was refused (nothing of theirs changed).
        """
        ...

    async def due(self, schedule: str, upto: float, limit: int) -> list[str]:
        """Up to ``limit`` customers of ``schedule`` due at or before ``upto``, oldest first."""
        ...


def schedule_name(kind: str, partition: int) -> str:
    """A schedule of one partition: ``checks`` (idle checks, horizon ends) or ``deferred``."""
    return f"{kind}:{partition}"


_BFLOAT16_MAX = 3.3895313892515355e38  # 0x7F7F0000, the largest finite one


def to_bfloat16(values: Sequence[float]) -> np.ndarray:
    """Values as bfloat16 bit patterns (uint16), rounded to nearest even.

    Pending snapshots are stored at this precision: float32's range (spend never
    overflows, as it would in float16) with 8 significant bits, a relative error below
    0.4 %, far inside the noise an online churn model learns through, in half the bytes.
    """
    # Clipped first: rounding up must not turn a large finite value into inf.
    f32 = np.clip(np.asarray(values, dtype=np.float64), -_BFLOAT16_MAX,
                  _BFLOAT16_MAX).astype(np.float32)
    bits = f32.view(np.uint32).astype(np.uint64)
    rounded: np.ndarray = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return rounded


def from_bfloat16(bits: np.ndarray) -> list[float]:
    """Inverse of :func:`to_bfloat16`."""
    values: list[float] = (bits.astype(np.uint32) << 16).view(np.float32).tolist()
    return values


def stored_precision(state: ScoringState) -> ScoringState:
    """``state`` as a store returns it: snapshots' features at bfloat16 precision."""
    if not state.pending and state.ahead is None:
        return state
    ahead = None if state.ahead is None else _stored_snapshot(state.ahead)
    return replace(state, pending=tuple(_stored_snapshot(s) for s in state.pending),
                   ahead=ahead)


def _stored_snapshot(snap: Snapshot) -> Snapshot:
    names = list(snap.features)
    values = from_bfloat16(to_bfloat16([snap.features[n] for n in names]))
    return replace(snap, features=dict(zip(names, values, strict=True)))


@dataclass
class InMemoryStore:
    """The in-memory twin of the Redis scoring store (profiles from :class:`InMemoryProfiles`).

    The synchronous ``*_now`` methods serve the replay; the async ones are the interface.
    """

    profiles: InMemoryProfiles = field(default_factory=InMemoryProfiles.empty)
    states: dict[str, tuple[ScoringState, int]] = field(default_factory=dict)
    #: schedule -> customer -> due; each with a heap of (due, customer), stale entries skipped.
    schedules: dict[str, dict[str, float]] = field(default_factory=dict)
    _heaps: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    _writes: int = 0

    def read_now(self, customer_ids: Sequence[str]) -> list[CustomerRecord]:
        """:meth:`read`, synchronously."""
        out = []
        for cid in customer_ids:
            stored = self.states.get(cid)
            out.append(CustomerRecord(cid, self.profiles.states.get(cid),
                                      None if stored is None else stored[0],
                                      "" if stored is None else str(stored[1])))
        return out

    def write_now(self, writes: Sequence[StateWrite]) -> list[str]:
        """:meth:`write`, synchronously."""
        refused = [w.customer_id for w in writes if not self._current(w)]
        skip = set(refused)
        for w in writes:
            if w.customer_id in skip:
                continue
            if w.state is not None:
                self._writes += 1
                self.states[w.customer_id] = (stored_precision(w.state), self._writes)
            for name, due in w.schedules.items():
                members = self.schedules.setdefault(name, {})
                if due is None:
                    members.pop(w.customer_id, None)
                else:
                    members[w.customer_id] = due
                    heapq.heappush(self._heaps.setdefault(name, []), (due, w.customer_id))
        return refused

    def due_now(self, schedule: str, upto: float, limit: int) -> list[str]:
        """:meth:`due`, synchronously."""
        members = self.schedules.get(schedule, {})
        heap = self._heaps.get(schedule, [])
        found: list[tuple[float, str]] = []
        while heap and heap[0][0] <= upto and len(found) < limit:
            due, cid = heapq.heappop(heap)
            if members.get(cid) == due and (due, cid) not in found:
                found.append((due, cid))
        for entry in found:  # listing does not take them out
            heapq.heappush(heap, entry)
        return [cid for _, cid in found]

    def _current(self, write: StateWrite) -> bool:
        stored = self.states.get(write.customer_id)
        if write.token == ("" if stored is None else str(stored[1])):
            return True
        # A retried write that landed finds its own state: not a conflict.
        return (stored is not None and write.state is not None
                and stored[0] == stored_precision(write.state))

    async def read(self, customer_ids: Sequence[str]) -> list[CustomerRecord]:
        """Profiles and scoring states of customers, in order (absent ones too)."""
        return self.read_now(customer_ids)

    async def write(self, writes: Sequence[StateWrite]) -> list[str]:
        """Apply every write whose token still names the stored state; returns the refused."""
        return self.write_now(writes)

    async def due(self, schedule: str, upto: float, limit: int) -> list[str]:
        """Up to ``limit`` customers of ``schedule`` due at or before ``upto``, oldest first."""
        return self.due_now(schedule, upto, limit)

