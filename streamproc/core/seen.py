"""Bounded memory of what a customer's profile has already counted.

Two small byte strings live inside the profile blob, so dedupe costs no keys of
its own and a customer's memory stays O(1) in the number of events:

* **Event ids**, one ring per input topic: records of an 8-byte digest of the
  ``event_id`` and the event time in milliseconds (6 bytes), kept sorted by event
  time and capped at ``capacity`` records. When the ring is full the
  oldest record is evicted and its time raises the ring's *floor*. An event whose
  id is in the ring is a duplicate; an unknown event at or before the floor may be
  a duplicate of an evicted one, so it is *late*: it is dead-lettered, never
  guessed at. Every applied event is either still in the ring or at or before the
  floor, so a duplicate is never counted twice. One ring per topic, because each
  topic partition arrives in its own order and one topic may run ahead of the
  other during a catch-up.
* **Sessions**: records of an 8-byte digest of the session id and a byte of flags
  (session counted, had a cart, had an order), the ``capacity`` most recently
  touched sessions. Session counts are exact while a customer has no more than
  that many sessions open at once.

Both interpreters (``adapters/profile_update.lua`` and :mod:`streamproc.core.features`)
implement these rules; the Redis conformance test checks they write identical bytes.
"""

from __future__ import annotations

import hashlib
import math
from typing import Final

ID_RECORD: Final = 14
SESSION_RECORD: Final = 9
_TIME_BYTES: Final = 6
_MAX_MS: Final = 2**48 - 1

APPLIED: Final = 1
DUPLICATE: Final = 0
LATE: Final = 2

SESSION_SEEN: Final = 1
SESSION_CART: Final = 2
SESSION_ORDER: Final = 4


def digest(text: str) -> bytes:
    """The 8-byte digest that stands for an event or session id (collisions: ~2**-64 each)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def record_ms(ts: float) -> int:
    """Event time as stored in an id record: milliseconds, clamped to 48 bits.

    Lateness is decided on this value too, so the rounding needs no direction: a
    duplicate has the same event time, hence the same ``record_ms``.
    """
    return min(_MAX_MS, max(0, math.floor(ts * 1000.0 + 0.5)))


def find_record(ring: bytes, key: bytes, size: int) -> int:
    """Byte offset of the record starting with ``key``, or -1."""
    at = ring.find(key)
    while at >= 0:
        if at % size == 0:
            return at
        at = ring.find(key, at + 1)
    return -1


def admit_event(ring: bytes, floor: int | None, key: bytes, ts: float,
                capacity: int) -> tuple[int, bytes, int | None]:
    """Decide one event against an id ring: ``(APPLIED|DUPLICATE|LATE, ring, floor)``.

    ``floor`` is the newest ``record_ms`` ever evicted from the ring (None: nothing yet).
    """
    if find_record(ring, key, ID_RECORD) >= 0:
        return DUPLICATE, ring, floor
    ms = record_ms(ts)
    if floor is not None and ms <= floor:
        return LATE, ring, floor
    # Insert after every record with an earlier or equal time; arrivals are mostly in
    # order, so scanning back from the newest record usually stops at once.
    at = len(ring)
    while at > 0 and int.from_bytes(ring[at - _TIME_BYTES:at], "big") > ms:
        at -= ID_RECORD
    ring = ring[:at] + key + ms.to_bytes(_TIME_BYTES, "big") + ring[at:]
    if len(ring) > capacity * ID_RECORD:
        evicted = int.from_bytes(ring[8:ID_RECORD], "big")
        floor = evicted if floor is None else max(floor, evicted)
        ring = ring[ID_RECORD:]
    return APPLIED, ring, floor


def touch_session(ring: bytes, key: bytes, flag: int, capacity: int) -> tuple[int, bytes]:
    """Set ``flag`` on a session, making it the most recent: ``(flags before, ring)``."""
    at = find_record(ring, key, SESSION_RECORD)
    before = 0
    if at >= 0:
        before = ring[at + 8]
        ring = ring[:at] + ring[at + SESSION_RECORD:]
    ring += key + bytes([before | flag])
    if len(ring) > capacity * SESSION_RECORD:
        ring = ring[SESSION_RECORD:]
    return before, ring
