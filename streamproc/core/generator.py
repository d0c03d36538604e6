"""Seeded synthetic customer traffic with planted personas.

The generator is ground truth for model tests (each customer has a known persona,
and churners stop at a known time) and the source of the load generator. It is
pure: stdlib only, event time only, plain JSON-ready dicts out.

Each customer's stream is produced lazily by its own ``random.Random``, so a
customer's events do not depend on how many other customers there are or on how
far the caller has read, and memory is O(customers), not O(events).
"""

from __future__ import annotations

import bisect
import copy
import heapq
import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

__all__ = [
    "PERSONAS",
    "CustomerTruth",
    "GeneratedEvent",
    "Topic",
    "TrafficGenerator",
    "batch_envelopes",
    "inject_faults",
]

Topic = Literal["clickstream", "purchases"]

PERSONAS: Final[tuple[str, ...]] = (
    "loyal_high_value",
    "bargain_hunter",
    "browser",
    "new_customer",
    "churner",
)

DEFAULT_PERSONA_MIX: Final[Mapping[str, float]] = {
    "loyal_high_value": 0.15,
    "bargain_hunter": 0.25,
    "browser": 0.30,
    "new_customer": 0.10,
    "churner": 0.20,
}

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS_PER_DAY: Final = 86_400_000
_MS: Final = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class CustomerTruth:
    """What the generator planted for one customer."""

    customer_id: str
    persona: str
    # Planned start of the first session; later than the period for customers who never show up.
    first_active: datetime
    # Churners only: every one of their events is strictly before this.
    churn_at: datetime | None
    # Time of the customer's last generated event; None if they produced none.
    last_event: datetime | None


@dataclass(frozen=True, slots=True)
class GeneratedEvent:
    """One record for a Kafka topic: key is the customer id, value the event dict."""

    topic: Topic
    key: str
    value: dict[str, Any]
    # The event time; equals ``value["timestamp"]`` parsed (unless that was corrupted on purpose).
    timestamp: datetime
    # Set by :func:`inject_faults` on events a validator must send to the dead-letter topic.
    invalid_reason: str | None = None


@dataclass(frozen=True, slots=True)
class _Profile:
    """Behaviour parameters of one persona (probabilities are per session)."""

    gap_days: tuple[float, float]  # range of the customer's mean gap between sessions
    browse_events: tuple[int, int]  # page/product views and searches per session
    browse_weights: tuple[float, float, float]  # page_view, product_view, search
    p_cart: float  # session adds something to the cart
    p_order: float  # session ends in an order (so p_order <= p_cart)
    basket_eur: tuple[float, float]  # order total range
    price_eur: tuple[float, float]  # prices of the products this persona looks at
    p_remove: float  # a carting session also adds and then removes an extra line
    p_refund: float  # an order is partly refunded a few days later
    max_sessions: int | None = None
    max_orders: int | None = None


_PROFILES: Final[Mapping[str, _Profile]] = {
    "loyal_high_value": _Profile(
        gap_days=(3.0, 5.0),
        browse_events=(1, 8),
        browse_weights=(0.3, 0.6, 0.1),
        p_cart=0.8,
        p_order=0.65,
        basket_eur=(80.0, 300.0),
        price_eur=(15.0, 150.0),
        p_remove=0.1,
        p_refund=0.03,
    ),
    "bargain_hunter": _Profile(
        gap_days=(1.5, 3.5),
        browse_events=(6, 15),
        browse_weights=(0.15, 0.45, 0.40),
        p_cart=0.8,
        p_order=0.35,
        basket_eur=(10.0, 40.0),
        price_eur=(2.0, 12.0),
        p_remove=0.4,
        p_refund=0.05,
    ),
    "browser": _Profile(
        gap_days=(2.0, 6.0),
        browse_events=(5, 15),
        browse_weights=(0.5, 0.4, 0.1),
        p_cart=0.25,
        p_order=0.02,
        basket_eur=(20.0, 150.0),
        price_eur=(5.0, 100.0),
        p_remove=0.3,
        p_refund=0.05,
    ),
    "new_customer": _Profile(
        gap_days=(0.3, 2.0),
        browse_events=(2, 10),
        browse_weights=(0.4, 0.4, 0.2),
        p_cart=0.4,
        p_order=0.3,
        basket_eur=(20.0, 120.0),
        price_eur=(5.0, 80.0),
        p_remove=0.2,
        p_refund=0.0,
        max_sessions=4,
        max_orders=1,
    ),
    "churner": _Profile(
        gap_days=(4.0, 8.0),
        browse_events=(2, 10),
        browse_weights=(0.35, 0.5, 0.15),
        p_cart=0.6,
        p_order=0.45,
        basket_eur=(30.0, 120.0),
        price_eur=(8.0, 60.0),
        p_remove=0.15,
        p_refund=0.05,
    ),
}

_CATEGORIES: Final = (
    "electronics",
    "fashion",
    "home",
    "beauty",
    "sports",
    "books",
    "toys",
    "grocery",
)
_CATALOG_SIZE: Final = 600
_MAX_ORDER_LINES: Final = 8
_QUERIES: Final = tuple(
    f"{word} {category}"
    for category in _CATEGORIES
    for word in ("cheap", "best", "new", "sale", "gift")
)
_PAGES: Final = (
    "/",
    "/deals",
    "/account",
    "/help",
    "/cart",
    "/new-arrivals",
    *(f"/category/{category}" for category in _CATEGORIES),
)


@dataclass(frozen=True, slots=True)
class _Product:
    product_id: str
    category: str
    price: float


class _Pool:
    """Products in a persona's price band, sorted by price for budget-bounded picks."""

    __slots__ = ("prices", "products")

    def __init__(self, products: Iterable[_Product]) -> None:
        self.products = sorted(products, key=lambda p: (p.price, p.product_id))
        self.prices = [p.price for p in self.products]


@dataclass(frozen=True, slots=True)
class _Plan:
    """Per-customer parameters drawn before any event is generated."""

    index: int
    customer_id: str
    persona: str
    first_ms: int
    churn_ms: int | None
    mean_gap_ms: float


# (event ms, customer index, per-customer sequence, topic, value, event datetime):
# the first three make the heap key unique, so merging never compares dicts.
_Raw = tuple[int, int, int, Topic, dict[str, Any], datetime]


def _utc_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("start must be timezone-aware (UTC)")
    return (moment - _EPOCH) // _MS


def _at(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _persona_counts(customers: int, mix: Mapping[str, float]) -> dict[str, int]:
    """Exact per-persona counts by largest remainder, so small populations match the mix."""
    total = sum(mix.values())
    quotas = {p: customers * mix.get(p, 0.0) / total for p in PERSONAS}
    counts = {p: math.floor(q) for p, q in quotas.items()}
    short = customers - sum(counts.values())
    by_remainder = sorted(PERSONAS, key=lambda p: (-(quotas[p] - counts[p]), PERSONAS.index(p)))
    for persona in by_remainder[:short]:
        counts[persona] += 1
    return counts


def _validated_mix(persona_mix: Mapping[str, float] | None) -> dict[str, float]:
    mix = dict(DEFAULT_PERSONA_MIX if persona_mix is None else persona_mix)
    unknown = set(mix) - set(PERSONAS)
    if unknown:
        raise ValueError(f"unknown personas in persona_mix: {sorted(unknown)}")
    if any(not math.isfinite(w) or w < 0 for w in mix.values()):
        raise ValueError("persona_mix weights must be finite and >= 0")
    if sum(mix.values()) <= 0:
        raise ValueError("persona_mix needs at least one positive weight")
    return mix


class TrafficGenerator:
    """Deterministic clickstream and purchase traffic for a population of personas.

    Same ``seed`` and arguments give the same events, ids and truths; each
    customer's events depend only on the seed and the customer's index.
    """

    def __init__(
        self,
        *,
        customers: int,
        seed: int,
        start: datetime,
        days: float,
        persona_mix: Mapping[str, float] | None = None,
    ) -> None:
        if customers < 0:
            raise ValueError("customers must be >= 0")
        if not (math.isfinite(days) and days > 0):
            raise ValueError("days must be a positive number")
        self._seed = seed
        self._start_ms = _utc_ms(start)
        self._period_ms = round(days * _MS_PER_DAY)
        self._end_ms = self._start_ms + self._period_ms
        mix = _validated_mix(persona_mix)
        counts = _persona_counts(customers, mix)
        personas = [p for p in PERSONAS for _ in range(counts[p])]
        random.Random(f"{seed}/personas").shuffle(personas)  # noqa: S311 - simulation, not crypto
        self._plans = [self._plan(i, persona) for i, persona in enumerate(personas)]
        self._pools = self._catalog(seed)
        self._truths: dict[str, CustomerTruth] | None = None

    @property
    def start(self) -> datetime:
        """First instant of the simulated period."""
        return _at(self._start_ms)

    @property
    def end(self) -> datetime:
        """End of the simulated period; every event is strictly before it."""
        return _at(self._end_ms)

    def truths(self) -> dict[str, CustomerTruth]:
        """Planted persona, first activity, churn time and last event per customer id.

        Computed by replaying each customer's stream on its own (O(events) time,
        O(1) extra memory), so it is complete whether or not ``events()`` was read.
        """
        if self._truths is None:
            truths: dict[str, CustomerTruth] = {}
            for plan in self._plans:
                last: int | None = None
                for raw in self._customer_stream(plan):
                    last = raw[0]
                truths[plan.customer_id] = CustomerTruth(
                    customer_id=plan.customer_id,
                    persona=plan.persona,
                    first_active=_at(plan.first_ms),
                    churn_at=None if plan.churn_ms is None else _at(plan.churn_ms),
                    last_event=None if last is None else _at(last),
                )
            self._truths = truths
        return dict(self._truths)

    def events(self) -> Iterator[GeneratedEvent]:
        """All events of all customers, ordered by event time (ties by customer, then sequence)."""
        streams = [self._customer_stream(plan) for plan in self._plans]
        for _ms, cidx, _seq, topic, value, moment in heapq.merge(*streams):
            yield GeneratedEvent(topic, self._plans[cidx].customer_id, value, moment)

    def count_estimate(self) -> int:
        """Rough expected number of events (for progress bars and load-test sizing)."""
        total = 0.0
        for plan in self._plans:
            profile = _PROFILES[plan.persona]
            stop = self._end_ms if plan.churn_ms is None else min(plan.churn_ms, self._end_ms)
            sessions = max(0.0, (stop - plan.first_ms) / plan.mean_gap_ms + 0.5)
            if profile.max_sessions is not None:
                sessions = min(sessions, (1 + profile.max_sessions) / 2)
            lo, hi = profile.browse_events
            # start + end, browsing, ~2.5 lines of product_view + add_to_cart, removals, orders.
            cart = profile.p_cart * (5 + 3 * profile.p_remove)
            per_session = 2 + (lo + hi) / 2 + cart + profile.p_order
            total += sessions * per_session
        return round(total)

    # -- planning ---------------------------------------------------------------

    def _plan(self, index: int, persona: str) -> _Plan:
        rng = random.Random(f"{self._seed}/{index}/plan")  # noqa: S311 - simulation, not crypto
        profile = _PROFILES[persona]
        mean_gap_ms = rng.uniform(*profile.gap_days) * _MS_PER_DAY
        churn_ms: int | None = None
        if persona == "new_customer":
            first_ms = self._start_ms + round(rng.uniform(0.8, 0.9) * self._period_ms)
        else:
            first_ms = self._start_ms + round(rng.uniform(0.0, min(mean_gap_ms, self._period_ms)))
        if persona == "churner":
            churn_ms = self._start_ms + round(rng.uniform(0.3, 0.7) * self._period_ms)
        return _Plan(index, f"c-{index:06d}", persona, first_ms, churn_ms, mean_gap_ms)

    @staticmethod
    def _catalog(seed: int) -> dict[str, _Pool]:
        rng = random.Random(f"{seed}/catalog")  # noqa: S311 - simulation, not crypto
        products = [
            _Product(
                product_id=f"p-{i:05d}",
                category=_CATEGORIES[i % len(_CATEGORIES)],
                # Log-uniform 2..250 EUR: many cheap items, a long tail of expensive ones.
                price=round(math.exp(rng.uniform(math.log(2.0), math.log(250.0))), 2),
            )
            for i in range(_CATALOG_SIZE)
        ]
        return {
            persona: _Pool(p for p in products if lo <= p.price <= hi)
            for persona, profile in _PROFILES.items()
            for lo, hi in [profile.price_eur]
        }

    # -- per-customer simulation -------------------------------------------------

    def _customer_stream(self, plan: _Plan) -> Iterator[_Raw]:
        """One customer's events in time order; every event is before the stop time.

        Each session is planned whole by its own RNG (so a session that would
        cross the stop time is dropped, and no RNG outlives its session), then
        turned into dicts one event at a time: the merge holds one dict per customer.
        """
        profile = _PROFILES[plan.persona]
        pool = self._pools[plan.persona]
        stop_ms = self._end_ms if plan.churn_ms is None else min(plan.churn_ms, self._end_ms)
        cidx = plan.index
        cid = plan.customer_id
        ids = _Ids(self._seed, cidx)
        # Heap of (ms, tiebreak, order value, refunded line index, refunded quantity).
        refunds: list[tuple[int, int, dict[str, Any], int, int]] = []
        seq = 0
        sessions = 0
        orders = 0
        t = plan.first_ms
        while t < stop_ms and (profile.max_sessions is None or sessions < profile.max_sessions):
            may_order = profile.max_orders is None or orders < profile.max_orders
            session_seed = f"{self._seed}/{cidx}/{sessions}"
            steps, lines, refund, gap = _plan_session(session_seed, profile, pool, t, may_order)
            if steps[-1][0] >= stop_ms:
                break  # a session never straddles the end of the period or the churn time
            sessions += 1
            sid = ids.session()
            for ms, step, product, n in steps:
                while refunds and refunds[0][0] < ms:
                    r_ms, _, order, line, qty = heapq.heappop(refunds)
                    r_moment = _at(r_ms)
                    yield (
                        r_ms,
                        cidx,
                        seq,
                        "purchases",
                        _refund(ids, order, line, qty, r_moment),
                        r_moment,
                    )
                    seq += 1
                moment = _at(ms)
                stamp = moment.isoformat(timespec="milliseconds")
                if step == _ORDER:
                    order = _order(ids, cid, sid, lines, stamp)
                    orders += 1
                    if refund is not None and ms + refund[0] < stop_ms:
                        heapq.heappush(refunds, (ms + refund[0], seq, order, refund[1], refund[2]))
                    yield ms, cidx, seq, "purchases", order, moment
                    seq += 1
                    continue
                value: dict[str, Any] = {
                    "event_id": ids.event(),
                    "customer_id": cid,
                    "event_type": _STEP_TYPES[step],
                    "timestamp": stamp,
                    "session_id": sid,
                }
                if product is not None:
                    value["product_id"] = product.product_id
                    value["category"] = product.category
                    value["price"] = product.price
                    if step != _PRODUCT_VIEW:
                        value["quantity"] = n
                elif step == _PAGE_VIEW:
                    value["url"] = _PAGES[n]
                elif step == _SEARCH:
                    value["query"] = _QUERIES[n]
                elif step == _SESSION_START:
                    value["channel"], value["device"] = _CHANNEL_DEVICE[n]
                yield ms, cidx, seq, "clickstream", value, moment
                seq += 1
            t = steps[-1][0] + round(plan.mean_gap_ms * gap)
        while refunds:
            r_ms, _, order, line, qty = heapq.heappop(refunds)
            r_moment = _at(r_ms)
            yield r_ms, cidx, seq, "purchases", _refund(ids, order, line, qty, r_moment), r_moment
            seq += 1


# Session steps: (ms, step code, product or None, small int: quantity or index into a table).
_Step = tuple[int, int, _Product | None, int]
_SESSION_START, _PAGE_VIEW, _PRODUCT_VIEW, _SEARCH = 0, 1, 2, 3
_ADD_TO_CART, _REMOVE_FROM_CART, _ORDER, _SESSION_END = 4, 5, 6, 7
_STEP_TYPES: Final = (
    "session_start",
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "order",
    "session_end",
)
_CHANNEL_DEVICE: Final = tuple(
    (channel, device)
    for channel in ("web", "app", "email")
    for device in ("desktop", "mobile", "tablet")
)


def _plan_session(
    seed: str, profile: _Profile, pool: _Pool, t: int, may_order: bool
) -> tuple[list[_Step], list[tuple[_Product, int]], tuple[int, int, int] | None, float]:
    """Steps of one session from ``t``, its order lines, refund and next-gap factor.

    The refund is ``(delay ms, line index, quantity)`` if the session's order is
    partly refunded one to seven days later.
    """
    rng = random.Random(seed)  # noqa: S311 - simulation, not crypto
    rand = rng.random  # int(rand() * n) instead of randrange: ~5x faster on this hot path
    r = rand()
    channel = 0 if r < 0.6 else 1 if r < 0.9 else 2
    r = rand()
    device = 1 if r < 0.55 else 0 if r < 0.9 else 2
    steps: list[_Step] = [(t, _SESSION_START, None, 3 * channel + device)]
    w_page, w_product, _ = profile.browse_weights
    products = pool.products
    for _ in range(rng.randint(*profile.browse_events)):
        t += 3_000 + int(rand() * 87_001)
        r = rand()
        if r < w_page:
            steps.append((t, _PAGE_VIEW, None, int(rand() * len(_PAGES))))
        elif r < w_page + w_product:
            steps.append((t, _PRODUCT_VIEW, products[int(rand() * len(products))], 0))
        else:
            steps.append((t, _SEARCH, None, int(rand() * len(_QUERIES))))
    lines: list[tuple[_Product, int]] = []
    refund: tuple[int, int, int] | None = None
    if rand() < profile.p_cart:
        lines = _basket(rng, pool, profile.basket_eur)
        extra = None
        if rand() < profile.p_remove:
            extra = products[int(rand() * len(products))]
        for product, qty in [*lines, *([(extra, 1)] if extra is not None else [])]:
            t += 3_000 + int(rand() * 57_001)
            steps.append((t, _PRODUCT_VIEW, product, 0))
            t += 2_000 + int(rand() * 28_001)
            steps.append((t, _ADD_TO_CART, product, qty))
        if extra is not None:
            t += 5_000 + int(rand() * 55_001)
            steps.append((t, _REMOVE_FROM_CART, extra, 1))
        if may_order and rand() < profile.p_order / profile.p_cart:
            t += 1_000 + int(rand() * 7_001)  # checkout, seconds after the last cart event
            steps.append((t, _ORDER, None, 0))
            if rand() < profile.p_refund:
                line = rng.randrange(len(lines))
                refund = (
                    rng.randint(_MS_PER_DAY, 7 * _MS_PER_DAY),
                    line,
                    rng.randint(1, lines[line][1]),
                )
        else:
            lines = []
    t += 1_000 + int(rand() * 29_001)
    steps.append((t, _SESSION_END, None, 0))
    return steps, lines, refund, rng.uniform(0.5, 1.5)


def _order(
    ids: _Ids, cid: str, sid: str, lines: list[tuple[_Product, int]], stamp: str
) -> dict[str, Any]:
    return {
        "event_id": ids.event(),
        "customer_id": cid,
        "order_id": ids.order(),
        "timestamp": stamp,
        "type": "order",
        "items": [
            {
                "product_id": p.product_id,
                "category": p.category,
                "quantity": qty,
                "unit_price": p.price,
            }
            for p, qty in lines
        ],
        "total": round(sum(qty * p.price for p, qty in lines), 2),
        "currency": "EUR",
        "session_id": sid,
    }


def _refund(
    ids: _Ids, order: dict[str, Any], line: int, qty: int, moment: datetime
) -> dict[str, Any]:
    """A refund of ``qty`` units of one line of ``order``: never more than the order total."""
    item = order["items"][line]
    return {
        "event_id": ids.event(),
        "customer_id": order["customer_id"],
        "order_id": order["order_id"],
        "timestamp": moment.isoformat(timespec="milliseconds"),
        "type": "refund",
        "items": [{**item, "quantity": qty}],
        "total": round(qty * item["unit_price"], 2),
        "currency": "EUR",
        "session_id": order["session_id"],
    }


class _Ids:
    """Deterministic, globally unique ids for one customer's events, sessions and orders."""

    __slots__ = ("_prefix", "n", "orders", "sessions")

    def __init__(self, seed: int, cidx: int) -> None:
        self._prefix = f"{seed}-{cidx}-"
        self.n = 0
        self.sessions = 0
        self.orders = 0

    def event(self) -> str:
        self.n += 1
        return f"e-{self._prefix}{self.n}"

    def session(self) -> str:
        self.sessions += 1
        return f"s-{self._prefix}{self.sessions}"

    def order(self) -> str:
        self.orders += 1
        return f"o-{self._prefix}{self.orders}"


def _basket(
    rng: random.Random, pool: _Pool, bounds: tuple[float, float]
) -> list[tuple[_Product, int]]:
    """Order lines whose total lands in ``bounds``: fill towards a target, never past the top."""
    lo, hi = bounds
    target = rng.uniform(lo, hi)
    quantities: dict[_Product, int] = {}
    total = 0.0
    while total < target and len(quantities) < _MAX_ORDER_LINES:
        budget = hi - total
        affordable = bisect.bisect_right(pool.prices, budget)
        if affordable == 0:
            break
        p = pool.products[rng.randrange(affordable)]
        qty = rng.randint(1, min(3, int(budget // p.price)))
        quantities[p] = quantities.get(p, 0) + qty
        total += qty * p.price
    return list(quantities.items())


def batch_envelopes(
    events: Iterable[GeneratedEvent], size: int, *, max_lag: int = 10_000
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Group one customer's events per topic into envelopes ``{"events": [...]}`` of <= ``size``.

    Yields ``(topic, key, message)``. With ``size=1`` every message is the bare
    event dict; otherwise a group is flushed when full, when its first event is
    more than ``max_lag`` events behind the input, or at the end, and a group of
    one is sent bare (trackers send both shapes). A customer's events keep their
    order within a topic; messages of different customers may interleave freely.
    """
    if size < 1:
        raise ValueError("size must be >= 1")
    if size == 1:
        for event in events:
            yield event.topic, event.key, event.value
        return
    # Insertion order == order of each group's first event, so the oldest group is first.
    groups: OrderedDict[tuple[str, str], tuple[int, list[dict[str, Any]]]] = OrderedDict()

    def message(values: list[dict[str, Any]]) -> dict[str, Any]:
        return values[0] if len(values) == 1 else {"events": values}

    for i, event in enumerate(events):
        group_key = (event.topic, event.key)
        group = groups.get(group_key)
        if group is None:
            groups[group_key] = (i, [event.value])
        else:
            group[1].append(event.value)
            if len(group[1]) >= size:
                del groups[group_key]
                yield event.topic, event.key, message(group[1])
        while groups:
            (topic, key), (first, values) = next(iter(groups.items()))
            if i - first < max_lag:
                break
            del groups[topic, key]
            yield topic, key, message(values)
    for (topic, key), (_, values) in groups.items():
        yield topic, key, message(values)


_INVALID_CLICK: Final = ("negative_price", "unknown_event_type", "missing_customer_id",
                         "bad_timestamp")  # fmt: skip
_INVALID_PURCHASE: Final = (
    "negative_price",
    "unknown_type",
    "missing_customer_id",
    "total_mismatch",
    "bad_timestamp",
)


def _corrupt(rng: random.Random, event: GeneratedEvent) -> GeneratedEvent:
    """A broken copy of ``event`` with a fresh event id, marked with why it is invalid."""
    value = copy.deepcopy(event.value)
    value["event_id"] = f"{value['event_id']}-x"
    if event.topic == "clickstream":
        kinds = [k for k in _INVALID_CLICK if k != "negative_price" or "price" in value]
    else:
        kinds = [k for k in _INVALID_PURCHASE if k != "total_mismatch" or value["type"] == "order"]
    reason = rng.choice(kinds)
    if reason == "negative_price":
        if event.topic == "clickstream":
            value["price"] = -abs(value["price"]) - 0.01
        else:
            item = value["items"][0]
            item["unit_price"] = -abs(item["unit_price"]) - 0.01
            value["total"] = round(
                sum(it["quantity"] * it["unit_price"] for it in value["items"]), 2
            )
    elif reason == "unknown_event_type":
        value["event_type"] = "teleport"
    elif reason == "unknown_type":
        value["type"] = "chargeback"
    elif reason == "missing_customer_id":
        del value["customer_id"]
    elif reason == "total_mismatch":
        # Well beyond any rounding or tolerance a validator may allow (it accepts ~1%).
        value["total"] = round(value["total"] * 1.25 + 5.0, 2)
    else:
        value["timestamp"] = "not-a-timestamp"
    return replace(event, value=value, invalid_reason=reason)


def inject_faults(
    events: Iterable[GeneratedEvent],
    *,
    seed: int,
    duplicate_rate: float = 0.0,
    shuffle_window: int = 0,
    invalid_rate: float = 0.0,
    duplicate_delay: int = 100,
) -> Iterator[GeneratedEvent]:
    """Add the faults a real pipeline sees, deterministically for ``seed``.

    - duplicates: with ``duplicate_rate`` an event is re-emitted (same event id,
      equal value) 1..``duplicate_delay`` events later, as at-least-once delivery does;
    - invalid events: with ``invalid_rate`` a corrupted copy with a fresh event id
      (``<id>-x``) follows the original, its ``invalid_reason`` set; the originals
      are kept, so the valid events still match the generator's truths;
    - shuffles: consecutive blocks of ``shuffle_window`` events are permuted, so
      no event moves by ``shuffle_window`` positions or more.
    """
    for name, rate in (("duplicate_rate", duplicate_rate), ("invalid_rate", invalid_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1]")
    if shuffle_window < 0 or duplicate_delay < 1:
        raise ValueError("shuffle_window must be >= 0 and duplicate_delay >= 1")
    rng = random.Random(f"{seed}/faults")  # noqa: S311 - simulation, not crypto

    def faulty() -> Iterator[GeneratedEvent]:
        due: list[tuple[int, int, GeneratedEvent]] = []  # heap of (release index, seq, copy)
        for i, event in enumerate(events):
            while due and due[0][0] <= i:
                yield heapq.heappop(due)[2]
            yield event
            if invalid_rate and rng.random() < invalid_rate:
                yield _corrupt(rng, event)
            if duplicate_rate and rng.random() < duplicate_rate:
                again = replace(event, value=copy.deepcopy(event.value))
                heapq.heappush(due, (i + rng.randint(1, duplicate_delay), i, again))
        while due:
            yield heapq.heappop(due)[2]

    if shuffle_window <= 1:
        yield from faulty()
        return
    block: list[GeneratedEvent] = []
    for event in faulty():
        block.append(event)
        if len(block) == shuffle_window:
            rng.shuffle(block)
            yield from block
            block = []
    rng.shuffle(block)
    yield from block
