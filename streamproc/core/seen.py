"""Bounded memory of what a customer's profile has already counted.

Two small byte strings live inside the profile blob, so dedupe costs no keys of
its own and a customer's memory stays O(1) in the number of events:

* **Event ids**, one ring per input topic: records of a 6-byte digest of the
  ``event_id`` (:func:`event_digest`) and the event time in milliseconds (6 bytes),
  kept sorted by event time and capped at ``capacity`` records. When the ring is
  full the oldest record is evicted and its time raises the ring's *floor*. An event whose
  id is in the ring is a duplicate; an unknown event at or before the floor may be
  a duplicate of an evicted one, so it is *late*: it is dead-lettered, never
  guessed at. Every applied event is either still in the ring or at or before the
  floor, so a duplicate is never counted twice. One ring per topic, because each
  topic partition arrives in its own order and one topic may run ahead of the
  other during a catch-up. A false duplicate needs a new id whose 48-bit digest
  matches one of the customer's <= 28 remembered ones (20 + 8 by default): about
  28 / 2**48, ~1e-13 per event (one expected in ~10 trillion events). Rings of earlier
  versions (8-byte digests, 14-byte records) convert exactly (:func:`upgrade_id_ring`):
  the 6-byte digest is the 8-byte one's first 6 bytes.
* **Sessions**: records of an 8-byte digest of the session id and a byte of flags
  (session counted, had a cart, had an order), the ``capacity`` most recently
  touched sessions. Session counts are exact while a customer has no more than
  that many sessions open at once.
* **Cart/order links**: records of the session digest, a byte of flags, the
  session's newest event time (whole seconds) and a wall-clock expiry (seconds),
  sorted by event time. They join the two topics (an order counts a cart session
  as converted), which may be far apart during a catch-up, so a link is forgotten
  only once *both* topics have moved ``window`` seconds of event time past it for
  this customer, or its wall-clock expiry passed, or the ring overflows (the oldest
  session goes). While each topic arrives in event-time order per customer and an
  order comes within ``window`` of its cart, the counts do not depend on how the
  two topics interleave.

Both interpreters (``adapters/profile_update.lua`` and :mod:`streamproc.core.features`)
implement these rules; the Redis conformance test checks they write identical bytes.
"""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Final

#: Bytes of an event id digest and of an id record (digest + 6-byte time).
ID_DIGEST: Final = 6
ID_RECORD: Final = ID_DIGEST + 6
#: Id records of earlier versions: the 8-byte :func:`digest` + 6-byte time.
OLD_ID_RECORD: Final = 14
SESSION_RECORD: Final = 9
LINK_RECORD: Final = 17
_TIME_BYTES: Final = 6
_MAX_MS: Final = 2**48 - 1
_MAX_U32: Final = 2**32 - 1

APPLIED: Final = 1
DUPLICATE: Final = 0
LATE: Final = 2

SESSION_SEEN: Final = 1
SESSION_CART: Final = 2
SESSION_ORDER: Final = 4


def digest(text: str) -> bytes:
    """The 8-byte digest that stands for a session id (collisions: ~2**-64 each)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def event_digest(text: str) -> bytes:
    """The 6-byte digest that stands for an event id: the first bytes of :func:`digest`.

    Shorter than a session digest because it only has to tell apart the few ids one
    customer's ring remembers (see the module docstring for the odds); a prefix rather
    than a 6-byte blake2b so that rings of earlier versions convert exactly.
    """
    return digest(text)[:ID_DIGEST]


@functools.lru_cache(maxsize=16_384)
def session_digest(session_id: str) -> bytes:
    """:func:`digest` of a session id, remembered: a session's events come close together."""
    return digest(session_id)


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
    ring, floor = _insert_id(ring, floor, key, ms, capacity)
    return APPLIED, ring, floor


def _insert_id(ring: bytes, floor: int | None, key: bytes, ms: int,
               capacity: int) -> tuple[bytes, int | None]:
    # Insert after every record with an earlier or equal time; arrivals are mostly in
    # order, so scanning back from the newest record usually stops at once.
    at = len(ring)
    while at > 0 and int.from_bytes(ring[at - _TIME_BYTES:at], "big") > ms:
        at -= ID_RECORD
    ring = ring[:at] + key + ms.to_bytes(_TIME_BYTES, "big") + ring[at:]
    if len(ring) > capacity * ID_RECORD:
        evicted = int.from_bytes(ring[ID_DIGEST:ID_RECORD], "big")
        floor = evicted if floor is None else max(floor, evicted)
        ring = ring[ID_RECORD:]
    return ring, floor


def upgrade_id_ring(old: bytes, old_floor: int | None, ring: bytes, floor: int | None,
                    capacity: int) -> tuple[bytes, int | None]:
    """Fold an id ring of 14-byte records (earlier versions) into a 12-byte ring.

    Each old record loses digest bytes 7-8 and is inserted in event-time order, the
    newer floor wins, and overflow evicts the oldest as :func:`admit_event` does. Into
    an empty ring of enough capacity this is an exact conversion, order kept. ``ring``
    is only non-empty when an older worker wrote to a converted profile (a rolling
    upgrade); records it already holds are not added twice.
    """
    if old_floor is not None and (floor is None or old_floor > floor):
        floor = old_floor
    for at in range(0, len(old) - OLD_ID_RECORD + 1, OLD_ID_RECORD):
        key = old[at:at + ID_DIGEST]
        if find_record(ring, key, ID_RECORD) < 0:
            ms = int.from_bytes(old[at + OLD_ID_RECORD - _TIME_BYTES:at + OLD_ID_RECORD], "big")
            ring, floor = _insert_id(ring, floor, key, ms, capacity)
    return ring, floor


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


def newest_ms(ring: bytes) -> int | None:
    """The newest event time (``record_ms``) in an id ring, None when it is empty."""
    if not ring:
        return None
    return int.from_bytes(ring[-_TIME_BYTES:], "big")


def _u32(value: float) -> int:
    return min(_MAX_U32, max(0, math.floor(value)))


def touch_link(ring: bytes, key: bytes, flag: int, ts: float, *, now: int, ttl: int,
               settled_ms: int | None, window: int, capacity: int) -> tuple[int, bytes]:
    """Set ``flag`` on a session's cart/order link: ``(flags before, ring)``.

    ``settled_ms`` is the event time both topics have reached for this customer (the
    older of the two rings' newest times; None while one topic has none): links more
    than ``window`` seconds older than it, and links past their wall-clock expiry, are
    dropped first.
    """
    low = None if settled_ms is None else settled_ms // 1000 - window
    kept, before, t, expiry = [], 0, _u32(ts), _u32(now + ttl)
    for at in range(0, len(ring), LINK_RECORD):
        rec = ring[at:at + LINK_RECORD]
        rec_t = int.from_bytes(rec[9:13], "big")
        rec_exp = int.from_bytes(rec[13:17], "big")
        if rec_exp <= now or (low is not None and rec_t < low):
            continue
        if rec[:8] == key:
            before = rec[8]
            t, expiry = max(t, rec_t), max(expiry, rec_exp)
        else:
            kept.append(rec)
    # Sorted by event time, ties in arrival order, so overflow evicts the oldest session.
    at = len(kept)
    while at > 0 and int.from_bytes(kept[at - 1][9:13], "big") > t:
        at -= 1
    kept.insert(at, key + bytes([before | flag]) + t.to_bytes(4, "big")
                + expiry.to_bytes(4, "big"))
    if len(kept) > capacity:
        del kept[0]
    return before, b"".join(kept)
