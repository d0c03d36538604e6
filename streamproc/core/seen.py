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
  28 / 2**48, ~1e-13 per event (one expected in ~10 trillion events).
* **Sessions**: records of an 8-byte digest of the session id and a byte of flags
  (session counted, cart counted), the ``capacity`` most recently touched sessions of
  the clickstream. Session and cart-session counts come from this ring alone: it reads
  one topic, so how the two topics interleave cannot change them. They are exact while
  a customer has no more than that many sessions open at once.
* **Cart/order links**: records of the session digest, a byte of flags (cart seen,
  order seen), the session's newest event time (whole seconds) and a wall-clock expiry
  (seconds), sorted by event time. They count ordered sessions and join the two topics
  (an order counts a cart session as converted), which may be far apart during a
  catch-up. Assuming each topic arrives in event-time order per customer and a
  session's events, orders included, lie within ``window`` seconds, a link is dropped
  only when that loses nothing: a cart-only link once the purchases have moved
  ``window`` past it (its order would have come) or its wall-clock expiry passed (a
  customer whose purchases never catch up); a link with an order once the purchases
  have moved past it and, for an order-only link, also the clickstream (its cart would
  have come) or its expiry. When more links wait than the ring holds, the oldest one
  that no count depends on goes (a cart-only link, or an order-only link the purchases
  have moved past), losing at most one conversion; if every link holds an order the
  purchases may still repeat, the new order is neither linked nor counted. So a full
  ring makes ``converted_cart_sessions`` (and, in that last case, ``ordered_sessions``)
  fall short, never any count exceed the truth; :func:`touch_link` reports each drop.

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
    customer's ring remembers (see the module docstring for the odds).
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


def _done(topic_ms: int | None, rec_t: int, window: int) -> bool:
    # The topic has moved `window` seconds past a link: no event of its session can follow.
    return topic_ms is not None and topic_ms // 1000 - window > rec_t


def touch_link(ring: bytes, key: bytes, flag: int, ts: float, *, now: int, ttl: int,
               clicks_ms: int | None, orders_ms: int | None, window: int,
               capacity: int) -> tuple[int | None, bytes, int]:
    """Set ``flag`` on a session's cart/order link: ``(flags before, ring, links dropped)``.

    ``clicks_ms`` and ``orders_ms`` are the newest event times of the two topics for
    this customer (None while a topic has none). Links that can go without loss are
    dropped first (see the module docstring). Flags before are None when the session
    could not be linked (the ring is full of links no count can spare): nothing is to
    be counted for it. Links dropped is 1 when a full ring cost a link, else 0.
    """
    kept, before, t, expiry = [], 0, _u32(ts), _u32(now + ttl)
    for at in range(0, len(ring), LINK_RECORD):
        rec = ring[at:at + LINK_RECORD]
        flags, rec_t = rec[8], int.from_bytes(rec[9:13], "big")
        rec_exp = int.from_bytes(rec[13:17], "big")
        if flags & SESSION_ORDER:
            gone = _done(orders_ms, rec_t, window) and bool(
                flags & SESSION_CART or _done(clicks_ms, rec_t, window) or rec_exp <= now)
        else:
            gone = _done(orders_ms, rec_t, window) or rec_exp <= now
        if gone:
            continue
        if rec[:8] == key:
            before = flags
            t, expiry = max(t, rec_t), max(expiry, rec_exp)
        else:
            kept.append(rec)
    # Sorted by event time, ties in arrival order: overflow looks at the oldest first.
    at = len(kept)
    while at > 0 and int.from_bytes(kept[at - 1][9:13], "big") > t:
        at -= 1
    new = key + bytes([before | flag]) + t.to_bytes(4, "big") + expiry.to_bytes(4, "big")
    kept.insert(at, new)
    if len(kept) <= capacity:
        return before, b"".join(kept), 0
    victim = next((rec for rec in kept if not rec[8] & SESSION_ORDER
                   or _done(orders_ms, int.from_bytes(rec[9:13], "big"), window)), new)
    kept.remove(victim)
    return (None if victim is new else before), b"".join(kept), 1
