"""Hostile input: garbage on both input topics never blocks, crashes or bloats a real worker.

A seeded corpus (``random.Random``) plus hand-picked cases is produced to both topics,
interleaved with valid sentinel events. Every hostile message must come out on the
dead-letter topic with a reason, at exactly its own Kafka coordinates; every sentinel and
every valid-but-odd customer id must land in Redis under its correctly escaped key; the
worker must stay alive with bounded memory. A pure hypothesis test checks separately that
``decode_message`` never raises, whatever the bytes.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from streamproc.adapters import keys
from streamproc.adapters.redis_store import decode_blob
from streamproc.core.events import REJECT_REASONS, ValidationLimits, decode_message
from streamproc.core.outputs import DeadLetter
from streamproc.runtime.kafka import ensure_topics
from streamproc.settings import Settings
from tests.integration.kafka_io import consume_all, wait_until
from tests.integration.test_resilience import Workers, alive, workers

__all__ = ["workers"]  # the fixture, re-exported so pytest finds it here

pytestmark = pytest.mark.integration

PAYLOAD_LIMIT = 64 * 1024
SEED = 20260101
T0 = datetime(2026, 1, 1, tzinfo=UTC)

#: Odd but valid customer ids: each must be processed and stored under an escaped hash tag.
ODD_IDS = [
    "a{b}c", "{", "}", "}{", "{{}}", "*", "a:b", "x}:p", "%7B", "%", "%25", "sp:{x}:p",
    "*:{*}:*", "?[a-z]", "\\", "😀", "🇩🇪", "مرحبا", "שלום", "e\u0301", "a" * 128,
    "'; DROP TABLE x; --", "${jndi:ldap://x}", "<script>",
]
#: Ids the contract rejects (control/format characters, blank, too long, not a string).
BAD_IDS: list[Any] = [
    "", " a", "a ", "a\nb", "a\rb", "a\x00b", "a\tb", "zero\u200bwidth", "rtl\u202eover",
    "bom\ufeff", "lrm\u200e", "a" * 129, "b" * 10_000, 12, 1.5, None, True, ["a"], {"a": 1},
]


@dataclass
class Message:
    """One Kafka record to send and the dead letters it must produce."""

    topic: str  # "clickstream" | "purchases": mapped to the test's topic names
    key: bytes | None
    value: bytes
    dead: int  # dead letters this message must produce
    reason: str | None = None  # the expected reason, for hand-picked cases
    customer: str | None = None  # a valid event's customer (sentinels, odd ids)
    events: int = 0  # valid events inside


def _click(customer: str, n: int, **extra: Any) -> dict[str, Any]:
    event = {"event_id": f"h-{n}", "customer_id": customer,
             "event_type": "page_view", "timestamp": (T0 + timedelta(seconds=n)).isoformat(),
             "session_id": f"s-{n}", "category": "shoes", "url": "https://shop.example/x"}
    event.update(extra)
    return event


def _cart(customer: str, n: int) -> dict[str, Any]:
    return _click(customer, n, event_type="add_to_cart", product_id="p-1", price=19.5,
                  quantity=2)


def _order(customer: str, n: int) -> dict[str, Any]:
    return {"event_id": f"h-{n}", "customer_id": customer, "order_id": f"o-{n}",
            "timestamp": (T0 + timedelta(seconds=n)).isoformat(), "type": "order",
            "items": [{"product_id": "p-1", "quantity": 2, "unit_price": 10.0}],
            "total": 20.0, "currency": "EUR"}


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # integers beyond 64 bits: the stdlib writes them
        return json.dumps(value, separators=(",", ":")).encode()


def _deep(depth: int, kind: str = "list") -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


class Corpus:
    """Builds the hostile corpus deterministically from one seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.n = seed % 1000 * 100_000  # event ids of two corpora never collide
        self.messages: list[Message] = []
        self.expected_events: Counter[str] = Counter()

    def _next(self) -> int:
        self.n += 1
        return self.n

    def bad(self, topic: str, value: bytes, *, key: bytes | None = b"k", dead: int = 1,
            reason: str | None = None) -> None:
        self.messages.append(Message(topic, key, value, dead, reason))

    def good(self, topic: str, customer: str, events: list[dict[str, Any]], *,
             extra_raw: bytes | None = None) -> None:
        value = extra_raw if extra_raw is not None else _json(
            events[0] if len(events) == 1 else {"events": events})
        self.messages.append(Message(topic, customer.encode(), value, 0, None, customer,
                                     len(events)))
        self.expected_events[customer] += len(events)

    def sentinel(self) -> None:
        i = self._next()
        customer = f"sentinel-{i % 40}"
        if i % 3 == 0:
            self.good("purchases", customer, [_order(customer, i)])
        else:
            self.good("clickstream", customer, [_click(customer, i)])

    def build(self) -> list[Message]:
        self._hand_picked()
        self._random_bytes(120)
        self._malformed(60)
        self._wrong_types(120)
        self._bad_ids()
        self._odd_ids()
        hostile = self.messages
        self.messages = []
        out: list[Message] = []
        for message in self.rng.sample(hostile, len(hostile)):
            out.append(message)
            if self.rng.random() < 0.4:
                self.sentinel()
                out.extend(self.messages)
                self.messages = []
        return out

    def _hand_picked(self) -> None:
        c = "hp"
        for topic in ("clickstream", "purchases"):
            self.bad(topic, b"", reason="empty_value")
            self.bad(topic, b"\xff\xfe\x00garbage", reason="undecodable")
            self.bad(topic, b'{"customer_id": "\xed\xa0\x80"}', reason="undecodable")
            self.bad(topic, b"\xef\xbb\xbf" + _json(_click(c, 1)), reason="not_json")
            self.bad(topic, _deep(2500).encode(), reason="not_json")
            self.bad(topic, ('{"events":' + _deep(2000, "obj") + "}").encode(),
                     reason="not_json")
            self.bad(topic, b'{"customer_id": "\\ud800"}', reason="not_json")
            for raw in ("NaN", "Infinity", "-Infinity", "1e400"):
                text = _json(_click(c, 2)).decode().replace('"shoes"', raw)
                self.bad(topic, text.encode(), reason="not_json")
            self.bad(topic, _json(["an", "array"]), reason="not_object")
            self.bad(topic, b"42", reason="not_object")
            self.bad(topic, b'"string"', reason="not_object")
            self.bad(topic, b"null", reason="not_object")
            self.bad(topic, _json({"events": "x"}), reason="bad_envelope")
            self.bad(topic, _json({"events": None}), reason="bad_envelope")
            self.bad(topic, _json({"events": []}), reason="empty_batch")
            self.bad(topic, _json({"events": [{}] * 1001}), reason="too_many_events")
            # Beyond the payload limit: rejected before parsing.
            self.bad(topic, _json(_click(c, 3, url="u" * (2 * PAYLOAD_LIMIT))),
                     reason="oversized")
            self.bad(topic, b"[" * (PAYLOAD_LIMIT + 1), reason="oversized")
            # An envelope element nested deeper than orjson can re-serialise.
            self.bad(topic, ('{"events":[' + _deep(400) + "]}").encode(), reason="not_object")
        self.bad("clickstream", _json(_click(c, 4, url="u" * 3000)), reason="schema")
        deep_field = _json(_click(c, 5)).decode().replace('"shoes"', _deep(500))
        self.bad("clickstream", deep_field.encode(), reason="schema")
        self.bad("clickstream", _json(_click(c, 6, price=1e308)), reason="schema")
        self.bad("clickstream", _json(_click(c, 7, timestamp=1e308)), reason="schema")
        self.bad("clickstream", _json(_click(c, 8, event_type="teleport")),
                 reason="unknown_event_type")
        self.bad("clickstream", _json(_order(c, 9)), key=c.encode(), reason="wrong_topic")
        self.bad("purchases", _json(_click(c, 10)), key=c.encode(), reason="wrong_topic")
        self.bad("clickstream", _json(_click(c, 11)), key=b"someone-else",
                 reason="customer_mismatch")
        future = (datetime.fromtimestamp(time.time(), UTC) + timedelta(days=3)).isoformat()
        self.bad("clickstream", _json(_click(c, 12, timestamp=future)),
                 reason="future_timestamp")
        order = _order(c, 13)
        order["total"] = 999.0
        self.bad("purchases", _json(order), key=c.encode(), reason="total_mismatch")
        # A valid event may carry junk in fields the contract ignores: still processed.
        deep_ok = _json(_click("deep-ok", 14)).decode()[:-1] + ',"junk":' + _deep(900) + "}"
        self.good("clickstream", "deep-ok", [_click("deep-ok", 14)],
                  extra_raw=deep_ok.encode())
        # Envelopes mixing good and bad elements: one dead letter per bad element.
        mixed = [_click("mixed", 15), 5, "x", None, _click("mixed", 16, price=-1),
                 _click("mixed", 17)]
        text = _json({"events": mixed}).decode()[:-2] + "," + _deep(300) + "]}"
        self.messages.append(Message("clickstream", b"mixed", text.encode(), 5, None, "mixed",
                                     2))
        self.expected_events["mixed"] += 2

    def _random_bytes(self, count: int) -> None:
        for _ in range(count):
            size = self.rng.choice([0, 1, 2, 8, 64, 512, 4096, PAYLOAD_LIMIT + 10])
            topic = self.rng.choice(["clickstream", "purchases"])
            key = self.rng.choice([None, b"k", self.rng.randbytes(16)])
            value = self.rng.randbytes(size)
            if value[:1] in (b"{", b"["):  # keep it garbage, not a lucky JSON prefix
                value = b"\x00" + value
            self.bad(topic, value, key=key)

    def _malformed(self, count: int) -> None:
        for _ in range(count):
            n = self._next()
            topic = self.rng.choice(["clickstream", "purchases"])
            event = _click("mal", n) if topic == "clickstream" else _order("mal", n)
            text = _json(event).decode()
            how = self.rng.randrange(6)
            if how == 0:
                text = text[: self.rng.randrange(1, len(text))]
            elif how == 1:
                text = text[:-1] + ",}"
            elif how == 2:
                text = text.replace('"', "'")
            elif how == 3:
                text = text + self.rng.choice(["}", "]", "x", "{}", ","])
            elif how == 4:
                text = text.replace('"event_id"', "event_id")
            else:
                text = text.replace(":", "=", 1)
            self.bad(topic, text.encode(), key=b"mal")

    def _wrong_types(self, count: int) -> None:
        bad_values: dict[str, list[Any]] = {
            "event_id": BAD_IDS,
            "event_type": [None, 1, "PAGE_VIEW", "", [], {}, "page_view\x00"],
            "timestamp": [None, "yesterday", "2026-01-01T00:00:00", -1, True, [], {},
                          "1969-12-31T23:59:59Z", -86_400_000, "9" * 100, 1e308,
                          "2026-13-45T00:00:00Z"],
            "price": ["12.5", True, -1, -0.01, 1e308, 1e7, [], {}],
            "quantity": [0, -1, 1.5, "2", True, 10**6, 2**70],
            "session_id": [123, "", "a\tb", [], " s"],
            "product_id": [None, 7, "", "p\n"],
            "category": [5, "c" * 65, [], ""],
        }
        fields = sorted(bad_values)
        for _ in range(count):
            n = self._next()
            event = _cart("wt", n)
            field = self.rng.choice(fields)
            event[field] = self.rng.choice(bad_values[field])
            self.bad("clickstream", _json(event), key=b"wt")
        purchase_bad: dict[str, list[Any]] = {
            "type": [None, "chargeback", 1], "total": [0, -5, "20", None, 1e9],
            "currency": ["eur", "EURO", 978, None], "items": [None, {}, "x", [], [1]],
            "order_id": BAD_IDS,
        }
        for field, values in purchase_bad.items():
            for value in values:
                n = self._next()
                order = _order("wtp", n)
                order[field] = value
                self.bad("purchases", _json(order), key=b"wtp")

    def _bad_ids(self) -> None:
        for bad in BAD_IDS:
            n = self._next()
            for topic, make in (("clickstream", _click), ("purchases", _order)):
                event = make("placeholder", n)
                event["customer_id"] = bad
                key = bad.encode("utf-8", "surrogatepass") if isinstance(bad, str) else b"x"
                self.bad(topic, _json(event), key=key)

    def _odd_ids(self) -> None:
        for customer in ODD_IDS:
            clicks = [_click(customer, self._next()), _cart(customer, self._next())]
            self.good("clickstream", customer, clicks)
            self.good("purchases", customer, [_order(customer, self._next())])


async def _produce(bootstrap: str, messages: Iterable[Message],
                   topic_of: dict[str, str]) -> list[tuple[Message, str, int, int]]:
    """Send raw records; returns each with the (topic, partition, offset) the broker gave it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        futures = []
        sent = []
        for message in messages:
            topic = topic_of[message.topic]
            futures.append(await producer.send(topic, message.value, key=message.key))
            sent.append((message, topic))
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m, t, meta.partition, meta.offset) for (m, t), meta in zip(sent, metas, strict=True)]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def _stored_events(settings: Settings, customers: Iterable[str]) -> dict[str, float]:
    """customer -> stored event count, read at exactly ``keys.profile_key``."""
    r = aioredis.Redis.from_url(settings.redis.url)
    try:
        ids = list(customers)
        blobs = await r.mget([keys.profile_key(settings.redis.key_prefix, c) for c in ids])
        return {c: float(decode_blob(b).get("ev", 0.0)) for c, b in zip(ids, blobs, strict=True)
                if b}
    finally:
        await r.aclose()


async def _stored_customers(settings: Settings) -> set[str]:
    r = aioredis.Redis.from_url(settings.redis.url)
    prefix = settings.redis.key_prefix
    try:
        return {keys.customer_from_key(prefix, k.decode())
                async for k in r.scan_iter(match=keys.profile_pattern(prefix), count=1000)}
    finally:
        await r.aclose()


async def test_hostile_messages_are_dead_lettered_and_the_worker_survives(
        make_settings: Callable[..., Settings], workers: Workers) -> None:
    settings = make_settings(ingest={"max_payload_bytes": PAYLOAD_LIMIT})
    await ensure_topics(settings)
    bootstrap = settings.kafka.bootstrap_servers
    topic_of = {"clickstream": settings.topics.clickstream,
                "purchases": settings.topics.purchases}
    worker = workers.start(settings)

    # Warm up with valid traffic, then take the RSS baseline.
    warm = Corpus(SEED + 1)
    for _ in range(200):
        warm.sentinel()
    await _produce(bootstrap, warm.messages, topic_of)

    async def warmed() -> bool:
        got = await _stored_events(settings, warm.expected_events)
        return got == {c: float(n) for c, n in warm.expected_events.items()}

    await wait_until(warmed, timeout=60, what="warm-up sentinels in Redis")
    rss_before = _rss_kb(worker.pid)

    corpus = Corpus(SEED)
    messages = corpus.build()
    hostile = [m for m in messages if m.dead]
    assert len(hostile) > 400
    started = time.monotonic()
    sent = await _produce(bootstrap, messages, topic_of)

    expected_dead = Counter({(t, p, o): m.dead for m, t, p, o in sent if m.dead})
    expected_reason = {(t, p, o): m.reason for m, t, p, o in sent if m.reason}
    total_dead = sum(expected_dead.values())
    dead = await consume_all(bootstrap, settings.topics.dead_letter, expect=total_dead,
                             timeout=60)
    got_dead: Counter[tuple[str, int, int]] = Counter()
    for _, value in dead:
        letter = DeadLetter.from_bytes(value)
        coords = (letter.source_topic, letter.source_partition, letter.source_offset)
        got_dead[coords] += 1
        assert letter.reason in REJECT_REASONS
        assert letter.detail
        want = expected_reason.get(coords)
        assert want is None or letter.reason == want, (want, letter.reason, letter.detail[:200])
    missing = {c: n for c, n in expected_dead.items() if got_dead[c] < n}
    unexpected = {c: n for c, n in got_dead.items() if n > expected_dead.get(c, 0)}
    assert not missing, f"{len(missing)} hostile messages not dead-lettered: {list(missing)[:5]}"
    assert not unexpected, f"dead letters for valid input: {list(unexpected)[:5]}"
    whole = {(t, p, o): m.value for m, t, p, o in sent if m.dead == 1 and m.reason}
    for _, value in dead:
        letter = DeadLetter.from_bytes(value)
        coords = (letter.source_topic, letter.source_partition, letter.source_offset)
        if coords in whole and letter.batch_index is None:
            assert letter.original_bytes() == whole[coords], "dead letter keeps original bytes"

    want_events = {c: float(n) for c, n in
                   (corpus.expected_events + warm.expected_events).items()}

    async def all_valid_stored() -> bool:
        return await _stored_events(settings, want_events) == want_events

    await wait_until(all_valid_stored, timeout=30,
                     what="every sentinel and odd-id event under its escaped key")
    assert await _stored_customers(settings) == set(want_events), "no key outside the schema"
    took = time.monotonic() - started

    assert alive(worker), workers.log(0)[-3000:]
    rss_after = _rss_kb(worker.pid)
    assert rss_after < 2 * rss_before + 100 * 1024, (rss_before, rss_after)
    log = workers.log(0)
    assert "Traceback" not in log, log[-3000:]
    print(f"\nhostile: {len(hostile)} hostile messages -> {total_dead} dead letters, "
          f"{len(messages) - len(hostile)} valid messages, {took:.1f}s, "
          f"RSS {rss_before // 1024} -> {rss_after // 1024} MB")


# --- pure property: the decoder never raises ------------------------------------------------------

def _json_text(value: Any) -> bytes:
    """JSON text of any generated value, NaN, infinities, big ints and lone surrogates included."""
    return json.dumps(value, ensure_ascii=True).encode()


_any_text = st.text(st.characters(exclude_categories=[]), max_size=40)  # surrogates too
_json_leaf = (st.none() | st.booleans() | st.integers() | st.floats() | _any_text
              | st.sampled_from(ODD_IDS + [b for b in BAD_IDS if isinstance(b, str)]))
_json_value = st.recursive(
    _json_leaf, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["event_id", "customer_id", "event_type", "timestamp",
                                       "events", "items", "price", "quantity", "total",
                                       "type", "order_id", "currency", "session_id",
                                       "product_id", "unit_price", "x"]), inner, max_size=8),
    max_leaves=30)
_texts = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "1e308", '"\\ud800"',
                          "[" * 3000, '{"a":' * 1100, "\ufeff{}", '{"events":[]}'])
_values = (st.binary(max_size=512)
           | _json_value.map(_json_text)
           | _texts.map(str.encode)
           | _any_text.map(lambda s: s.encode("utf-8", "surrogatepass")))



@hsettings(max_examples=300, deadline=None, derandomize=True,
           suppress_health_check=[HealthCheck.too_slow])
@given(value=st.none() | _values, key=st.none() | st.binary(max_size=20),
       source=st.sampled_from(["clickstream", "purchases"]))
def test_decode_message_never_raises(value: bytes | None, key: bytes | None,
                                     source: str) -> None:
    limits = ValidationLimits(max_payload_bytes=4096)
    decoded = decode_message(value, key, source,  # type: ignore[call-overload]
                             limits=limits, now=T0)
    assert decoded.events or decoded.rejections
    for rejection in decoded.rejections:
        assert rejection.reason in REJECT_REASONS
        assert rejection.detail
