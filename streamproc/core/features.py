"""Per-customer features as commutative update operations.

An event becomes a short list of *ops* (add, max, min, decayed add, session-flag-gated
add, cart/order link, category count). The ops are applied atomically in Redis by a small
Lua interpreter (``adapters/profile_update.lua``) and, for tests and the in-memory
twin, by :func:`apply_ops` here. Keeping the feature semantics in this module
and the interpreters generic means the Lua side never encodes business rules.

Every op except the category top-k and the last-session attribution commutes,
so the final profile does not depend on arrival order; session and cart/order
link records make session counting idempotent and order-independent too.

State per customer is a flat mapping of short field codes (see ``FIELDS``) to
numbers, plus ``k`` (a bounded category map), ``ls`` (last session id) and the
bounded dedupe, session and link rings of :mod:`streamproc.core.seen`. It is O(1)
in the number of events, and a customer is one Redis key. It is stored as a positional
array (``STORED_FIELDS``); both interpreters work on the mapping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from streamproc.core import seen
from streamproc.core.rhythm import FALLBACK_HORIZON_DAYS
from streamproc.core.rhythm_features import expected_gap_days
from streamproc.core.seen import SESSION_CART, SESSION_ORDER, SESSION_SEEN

DAY: Final = 86_400.0
TAU_7D: Final = 7 * DAY
TAU_30D: Final = 30 * DAY

# Op codes shared with the Lua interpreter: keep both in sync.
OP_ADD: Final = 1
OP_MAX: Final = 2
OP_MIN: Final = 3
OP_DECAY: Final = 4
OP_CATEGORY: Final = 5
OP_SESSION: Final = 6
OP_LAST: Final = 7
OP_LINK: Final = 8

Op = tuple[Any, ...]

#: Profile fields holding event-id rings, one per input topic (floors: ``<lane>f``).
LANE_CLICKSTREAM: Final = "jc"
LANE_PURCHASES: Final = "jp"
#: Profile fields that hold raw bytes (msgpack str from Lua; see ``adapters.redis_store``).
BINARY_FIELDS: Final = (LANE_CLICKSTREAM, LANE_PURCHASES, "ss", "lk", "lsd")

#: Storage code -> readable feature name. Short codes keep a profile well under 1 KB.
FIELDS: Final[dict[str, str]] = {
    "ev": "events",
    "o": "orders",
    "rv": "revenue",
    "it": "items_purchased",
    "rf": "refunds",
    "ra": "refund_amount",
    "fo": "first_order_at",
    "lo": "last_order_at",
    "fs": "first_seen_at",
    "la": "last_seen_at",
    "lq": "last_active_at",
    "se": "sessions",
    "pv": "page_views",
    "vv": "product_views",
    "sr": "searches",
    "ac": "add_to_cart",
    "rc": "remove_from_cart",
    "cs": "cart_sessions",
    "os": "ordered_sessions",
    "cc": "converted_cart_sessions",
    "v7": "views_7d",
    "v30": "views_30d",
    "c7": "carts_7d",
    "c30": "carts_30d",
    "o7": "orders_7d",
    "o30": "orders_30d",
    "s7": "spend_7d",
    "s30": "spend_30d",
    "dt": "decay_reference_at",
}

#: Format of a stored profile: the first element of its msgpack array (see STORED_FIELDS).
PROFILE_FORMAT: Final = 1

#: Every top-level field a profile can hold, in the order of the stored array, which is
#: ``[PROFILE_FORMAT, value of STORED_FIELDS[0], value of STORED_FIELDS[1], ...]``: a
#: positional array instead of a map saves every field's name (~110 B per profile). An
#: absent field is stored as ``false`` (a Lua array with nil holes packs as a map) and
#: absent fields at the end are left out, so the fields most customers lack come last.
#: APPEND ONLY: stored profiles are read by position, so a field never moves and a field
#: no longer written keeps its slot. The Lua interpreter gets this list with its config.
STORED_FIELDS: Final[tuple[str, ...]] = (
    # Every customer.
    "ev", "fs", "la", "lq", "dt", "se", "pv", "vv", "sr", "v7", "v30",
    "ls", "ls@", "lsd", "ss", LANE_CLICKSTREAM, "k", LANE_CLICKSTREAM + "f",
    # Customers who put something in a cart.
    "ac", "rc", "cs", "c7", "c30", "lk",
    # Customers who ordered.
    "o", "rv", "it", "fo", "lo", "o7", "o30", "s7", "s30", "os", "cc",
    LANE_PURCHASES, LANE_PURCHASES + "f",
    # Customers who returned something.
    "rf", "ra",
    # The currency of the customer's latest order (reasons state amounts in it).
    "cur", "cur@",
)

#: Decayed fields and their time constants (seconds of event time).
DECAY_TAUS: Final[dict[str, float]] = {
    "v7": TAU_7D,
    "v30": TAU_30D,
    "c7": TAU_7D,
    "c30": TAU_30D,
    "o7": TAU_7D,
    "o30": TAU_30D,
    "s7": TAU_7D,
    "s30": TAU_30D,
}

#: Category weights for affinity: a purchase says more than a view.
CATEGORY_WEIGHT_VIEW: Final = 1.0
CATEGORY_WEIGHT_CART: Final = 2.0
CATEGORY_WEIGHT_ORDER: Final = 4.0

#: Orders without a session id are attributed to the last session if it is this recent
#: (event time; the Lua interpreter gets it with its config).
ORDER_SESSION_WINDOW_S: Final = 4 * 3600.0

VIEW_TYPES: Final = frozenset({"page_view", "product_view"})


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """Tunables of the feature update that both interpreters need."""

    max_categories: int = 16
    #: Clickstream event ids remembered per customer (12 bytes each).
    dedupe_events: int = 20
    #: Purchase event ids remembered per customer (orders are rarer and arrive in order).
    dedupe_purchases: int = 8
    #: Most recently touched sessions remembered per customer for session counts (9 bytes each).
    sessions: int = 4
    #: Sessions with a cart or an order remembered per customer (17 bytes each): they
    #: count ordered sessions and link carts to orders (seen.touch_link).
    links: int = 64
    #: Event time a topic must move past a cart/order link before no event of its session
    #: can follow there (a session's events, orders included, lie within it).
    link_window_s: int = 86_400
    #: Wall-clock lifetime of a link whose other topic never catches up (a customer who
    #: never orders has no purchase time to settle against).
    link_ttl_s: int = 3 * 86_400

    def capacity(self, lane: str) -> int:
        """How many event ids the ring of ``lane`` keeps."""
        return self.dedupe_purchases if lane == LANE_PURCHASES else self.dedupe_events

    def as_wire(self) -> dict[str, Any]:
        """The config as sent to the Lua interpreter."""
        return {"taus": DECAY_TAUS, "maxcat": self.max_categories, "scap": self.sessions,
                "lcap": self.links, "lwin": self.link_window_s, "lttl": self.link_ttl_s,
                "swin": ORDER_SESSION_WINDOW_S,
                "icap": {LANE_CLICKSTREAM: self.dedupe_events,
                         LANE_PURCHASES: self.dedupe_purchases},
                "pfmt": PROFILE_FORMAT, "fields": list(STORED_FIELDS)}


class ProfileFormatError(ValueError):
    """A stored profile this version cannot read or write without losing a field."""


_SLOTTED: Final = frozenset(STORED_FIELDS)


def profile_row(state: Mapping[str, Any]) -> list[Any]:
    """A profile as stored: ``[PROFILE_FORMAT, value per STORED_FIELDS...]``.

    Absent fields are False and trailing ones are left out, as the Lua interpreter
    writes them. A field without a slot raises rather than being dropped.
    """
    unknown = state.keys() - _SLOTTED
    if unknown:
        raise ProfileFormatError(f"profile fields without a stored position: {sorted(unknown)}")
    row: list[Any] = [PROFILE_FORMAT, *(state.get(code, False) for code in STORED_FIELDS)]
    while len(row) > 1 and row[-1] is False:
        row.pop()
    return row


def profile_from_row(row: Sequence[Any]) -> dict[str, Any]:
    """The profile mapping of a stored row (the inverse of :func:`profile_row`).

    A row of another format, or longer than STORED_FIELDS (a newer version's), raises.
    """
    version = row[0] if row else None
    if type(version) is not int or version != PROFILE_FORMAT:
        raise ProfileFormatError(f"unknown profile format {version!r}")
    if len(row) - 1 > len(STORED_FIELDS):
        raise ProfileFormatError(f"profile has {len(row) - 1} fields, this version knows "
                                 f"{len(STORED_FIELDS)}: written by a newer version")
    return {code: value for code, value in zip(STORED_FIELDS, row[1:], strict=False)
            if value is not False and value is not None}


def clickstream_ops(event: Any, ts: float) -> list[Op]:
    """Ops for one clickstream event at event time ``ts`` (epoch seconds)."""
    kind: str = event.event_type
    ops: list[Op] = [
        (OP_ADD, "ev", 1.0),
        (OP_MIN, "fs", ts),
        (OP_MAX, "la", ts),
        (OP_MAX, "lq", ts),
    ]
    sid: str | None = event.session_id
    session = seen.session_digest(sid) if sid else b""
    if sid:
        ops.append((OP_SESSION, session, SESSION_SEEN, "se", 1.0))
        ops.append((OP_LAST, "ls", sid, "lsd", session))
    if kind in VIEW_TYPES:
        ops.append((OP_ADD, "pv" if kind == "page_view" else "vv", 1.0))
        ops.append((OP_DECAY, "v7", 1.0))
        ops.append((OP_DECAY, "v30", 1.0))
        if event.category:
            ops.append((OP_CATEGORY, event.category, CATEGORY_WEIGHT_VIEW))
    elif kind == "search":
        ops.append((OP_ADD, "sr", 1.0))
    elif kind == "add_to_cart":
        ops.append((OP_ADD, "ac", 1.0))
        ops.append((OP_DECAY, "c7", 1.0))
        ops.append((OP_DECAY, "c30", 1.0))
        if sid:
            # Cart sessions are counted in the clickstream's own session ring, so the
            # purchases topic running ahead cannot make them count twice; the link joins
            # the session to its order, whichever topic comes first.
            ops.append((OP_SESSION, session, SESSION_CART, "cs", 1.0))
            ops.append((OP_LINK, session, SESSION_CART, "", 0.0, SESSION_ORDER, "cc", 1.0))
        if event.category:
            ops.append((OP_CATEGORY, event.category, CATEGORY_WEIGHT_CART))
    elif kind == "remove_from_cart":
        ops.append((OP_ADD, "rc", 1.0))
    return ops


def purchase_ops(event: Any, ts: float) -> list[Op]:
    """Ops for one order or refund at event time ``ts`` (epoch seconds)."""
    ops: list[Op] = [(OP_ADD, "ev", 1.0), (OP_MIN, "fs", ts), (OP_MAX, "la", ts)]
    total = float(event.total)
    if event.type == "refund":
        ops.append((OP_ADD, "rf", 1.0))
        ops.append((OP_ADD, "ra", total))
        return ops
    ops += [
        (OP_MAX, "lq", ts),
        (OP_ADD, "o", 1.0),
        (OP_ADD, "rv", total),
        (OP_MIN, "fo", ts),
        (OP_MAX, "lo", ts),
        (OP_DECAY, "o7", 1.0),
        (OP_DECAY, "o30", 1.0),
        (OP_DECAY, "s7", total),
        (OP_DECAY, "s30", total),
        (OP_LAST, "cur", str(event.currency)),
    ]
    items = 0
    for item in event.items:
        items += int(item.quantity)
        if item.category:
            ops.append((OP_CATEGORY, item.category, CATEGORY_WEIGHT_ORDER))
    ops.append((OP_ADD, "it", float(items)))
    # An empty session means "the customer's last session" (resolved where the state is).
    session = seen.session_digest(event.session_id) if event.session_id else b""
    ops.append((OP_LINK, session, SESSION_ORDER, "os", 1.0, SESSION_CART, "cc", 1.0))
    return ops


def apply_ops(
    state: MutableMapping[str, Any],
    ops: Iterable[Op],
    ts: float,
    now: int,
    config: FeatureConfig,
) -> int:
    """Apply one event's ops to ``state`` in place (the Python twin of the Lua interpreter).

    ``now`` is the wall clock in whole seconds, for the expiry of cart/order links.
    Returns the cart/order links a full link ring cost (see :func:`seen.touch_link`).
    """
    dropped = 0
    for op in ops:
        code = op[0]
        if code == OP_ADD:
            state[op[1]] = state.get(op[1], 0.0) + op[2]
        elif code == OP_MAX:
            cur = state.get(op[1])
            if cur is None or op[2] > cur:
                state[op[1]] = op[2]
        elif code == OP_MIN:
            cur = state.get(op[1])
            if cur is None or op[2] < cur:
                state[op[1]] = op[2]
        elif code == OP_DECAY:
            _decay_add(state, op[1], op[2], ts)
        elif code == OP_CATEGORY:
            _category_add(state, op[1], op[2], config.max_categories)
        elif code == OP_SESSION:
            _count_session(state, op, ts, config)
        elif code == OP_LINK:
            dropped += _link(state, op, ts, now, config)
        elif code == OP_LAST and ts >= state.get(op[1] + "@", -math.inf):
            state[op[1]] = op[2]
            state[op[1] + "@"] = ts
            if len(op) > 3:
                state[op[3]] = op[4]
    return dropped


def _decay_add(state: MutableMapping[str, Any], field: str, value: float, ts: float) -> None:
    ref = state.get("dt")
    if ref is None:
        ref = ts
        state["dt"] = ts
    elif ts > ref:
        for name, tau in DECAY_TAUS.items():
            if name in state:
                state[name] = state[name] * math.exp(-(ts - ref) / tau)
        ref = ts
        state["dt"] = ts
    state[field] = state.get(field, 0.0) + value * math.exp(-(ref - ts) / DECAY_TAUS[field])


def _category_add(state: MutableMapping[str, Any], category: str, weight: float, cap: int) -> None:
    # Space-saving top-k: when full, the weakest category gives its slot to the newcomer.
    cats: dict[str, float] = state.setdefault("k", {})
    if category in cats or len(cats) < cap:
        cats[category] = cats.get(category, 0.0) + weight
        return
    weakest = min(cats, key=lambda c: (cats[c], c))
    floor = cats.pop(weakest)
    cats[category] = floor + weight


def _session_key(state: Mapping[str, Any], session: bytes, ts: float) -> bytes | None:
    # An empty session means "the customer's last session", if it is recent enough.
    if session:
        return session
    last: bytes | None = state.get("lsd")
    if last is None or ts - state.get("ls@", -math.inf) > ORDER_SESSION_WINDOW_S:
        return None
    return last


def _count_session(state: MutableMapping[str, Any], op: Op, ts: float,
                   config: FeatureConfig) -> None:
    # Counts of one topic, read in order: a small ring of recent sessions is exact.
    _, session, flag, counter, value = op
    key = _session_key(state, session, ts)
    if key is None:
        return
    before, state["ss"] = seen.touch_session(state.get("ss", b""), key, flag, config.sessions)
    if not before & flag:
        state[counter] = state.get(counter, 0.0) + value


def _link(state: MutableMapping[str, Any], op: Op, ts: float, now: int,
          config: FeatureConfig) -> int:
    # Cart and order links join the two topics, which may be far apart during a
    # catch-up: a link waits until the topics have moved past it (seen.touch_link).
    _, session, flag, counter, value, other, other_counter, other_value = op
    key = _session_key(state, session, ts)
    if key is None:
        return 0
    before, state["lk"], dropped = seen.touch_link(
        state.get("lk", b""), key, flag, ts, now=now, ttl=config.link_ttl_s,
        clicks_ms=seen.newest_ms(state.get(LANE_CLICKSTREAM, b"")),
        orders_ms=seen.newest_ms(state.get(LANE_PURCHASES, b"")),
        window=config.link_window_s, capacity=config.links)
    if before is not None and not before & flag:
        if counter:
            state[counter] = state.get(counter, 0.0) + value
        if before & other:
            state[other_counter] = state.get(other_counter, 0.0) + other_value
    return dropped


def _is_purchase(event: Any) -> bool:
    return getattr(event, "kind", None) == "purchase" or hasattr(event, "order_id")


def event_ops(event: Any, ts: float) -> list[Op]:
    """Ops for any input event (dispatches on the event's contract)."""
    return purchase_ops(event, ts) if _is_purchase(event) else clickstream_ops(event, ts)


def event_lane(event: Any) -> str:
    """The id ring an event is deduplicated in: one per input topic."""
    return LANE_PURCHASES if _is_purchase(event) else LANE_CLICKSTREAM


def apply_event(state: MutableMapping[str, Any], event_key: bytes, lane: str, ops: Iterable[Op],
                ts: float, now: int, config: FeatureConfig) -> tuple[int, int]:
    """Dedupe one event against its lane's id ring, then apply it.

    ``event_key`` is :func:`seen.event_digest` of the event id. Returns APPLIED,
    DUPLICATE or LATE, and the cart/order links a full link ring cost.
    """
    status, ring, floor = seen.admit_event(state.get(lane, b""), state.get(lane + "f"),
                                           event_key, ts, config.capacity(lane))
    if status != seen.APPLIED:
        return status, 0
    state[lane] = ring
    if floor is not None:
        state[lane + "f"] = floor
    return status, apply_ops(state, ops, ts, now, config)


@dataclass(slots=True)
class InMemoryProfiles:
    """The in-memory twin of the Redis feature store: same ops, same dedupe rule."""

    config: FeatureConfig
    states: dict[str, dict[str, Any]]
    #: Wall clock for link expiry (the Redis store passes the client's clock the same way).
    clock: Callable[[], float] = time.time
    #: Cart/order links a full link ring cost, per customer (CustomerUpdate.links_dropped).
    links_dropped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def empty(cls, config: FeatureConfig | None = None,
              clock: Callable[[], float] = time.time) -> InMemoryProfiles:
        """A store with no customers."""
        return cls(config or FeatureConfig(), {}, clock)

    def apply(self, customer_id: str, event_id: str, ops: Sequence[Op], ts: float,
              lane: str = LANE_CLICKSTREAM) -> int:
        """Apply one event unless it is a duplicate or late: APPLIED, DUPLICATE or LATE."""
        state = self.states.setdefault(customer_id, {})
        status, dropped = apply_event(state, seen.event_digest(event_id), lane, ops, ts,
                                      int(self.clock()), self.config)
        if dropped:
            self.links_dropped[customer_id] = self.links_dropped.get(customer_id, 0) + dropped
        return status


# ---------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class ProfileView:
    """A customer's profile with derived values as of an event time."""

    customer_id: str
    as_of: float
    raw: Mapping[str, Any]

    def get(self, code: str, default: float = 0.0) -> float:
        """A stored numeric field by its code."""
        value = self.raw.get(code)
        return default if value is None else float(value)

    def decayed(self, code: str) -> float:
        """A decayed counter brought forward to ``as_of`` (never backward)."""
        ref = self.raw.get("dt")
        value = self.get(code)
        if ref is None or self.as_of <= ref:
            return value
        return value * math.exp(-(self.as_of - float(ref)) / DECAY_TAUS[code])

    def _days_since(self, code: str) -> float | None:
        value = self.raw.get(code)
        if value is None:
            return None
        return max(0.0, (self.as_of - float(value)) / DAY)

    @property
    def recency_days(self) -> float:
        """Days since the last qualifying activity (any event but a refund)."""
        days = self._days_since("lq")
        return days if days is not None else 0.0

    @property
    def days_since_last_order(self) -> float | None:
        """Days since the last order, None if the customer never ordered."""
        return self._days_since("lo")

    @property
    def tenure_days(self) -> float:
        """Days since the customer was first seen."""
        days = self._days_since("fs")
        return days if days is not None else 0.0

    @property
    def currency(self) -> str | None:
        """The currency of the customer's latest order (None before any order)."""
        value = self.raw.get("cur")
        return None if value is None or value is False else str(value)

    @property
    def average_order_value(self) -> float:
        """Revenue per order."""
        orders = self.get("o")
        return self.get("rv") / orders if orders else 0.0

    @property
    def net_spend(self) -> float:
        """Revenue minus refunds: the customer's value to date."""
        return self.get("rv") - self.get("ra")

    @property
    def conversion_rate(self) -> float:
        """Share of sessions that contained an order."""
        sessions = self.get("se")
        return min(1.0, self.get("os") / sessions) if sessions else 0.0

    @property
    def cart_abandonment_rate(self) -> float:
        """Share of sessions with an add-to-cart that ended without an order."""
        carts = self.get("cs")
        return max(0.0, carts - self.get("cc")) / carts if carts else 0.0

    @property
    def refund_rate(self) -> float:
        """Refunded amount over revenue."""
        revenue = self.get("rv")
        return min(1.0, self.get("ra") / revenue) if revenue else 0.0

    @property
    def mean_days_between_orders(self) -> float | None:
        """Mean gap between consecutive orders, None with fewer than two orders."""
        orders = self.get("o")
        if orders < 2:
            return None
        return (self.get("lo") - self.get("fo")) / (orders - 1) / DAY

    @property
    def categories(self) -> dict[str, float]:
        """Tracked category affinity weights (bounded top-k)."""
        return dict(self.raw.get("k") or {})

    @property
    def top_category(self) -> tuple[str | None, float]:
        """The strongest category and its share of tracked weight."""
        cats = self.categories
        if not cats:
            return None, 0.0
        name = max(cats, key=lambda c: (cats[c], c))
        return name, cats[name] / sum(cats.values())

    def to_dict(self) -> dict[str, Any]:
        """Everything a person or a model would read, with readable names."""
        out: dict[str, Any] = {"customer_id": self.customer_id, "as_of": self.as_of}
        for code, name in FIELDS.items():
            if code in DECAY_TAUS:
                out[name] = self.decayed(code)
            elif code in self.raw:
                out[name] = float(self.raw[code])
        top, share = self.top_category
        out.update(
            recency_days=self.recency_days,
            days_since_last_order=self.days_since_last_order,
            tenure_days=self.tenure_days,
            average_order_value=self.average_order_value,
            net_spend=self.net_spend,
            conversion_rate=self.conversion_rate,
            cart_abandonment_rate=self.cart_abandonment_rate,
            refund_rate=self.refund_rate,
            mean_days_between_orders=self.mean_days_between_orders,
            distinct_categories=len(self.categories),
            top_category=top,
            top_category_share=share,
            categories=self.categories,
            last_session_id=self.raw.get("ls"),
        )
        return out


def model_features(view: ProfileView, *, typical_gap_days: float = FALLBACK_HORIZON_DAYS,
                   horizon_days: float = FALLBACK_HORIZON_DAYS) -> dict[str, float]:
    """The numeric features the segmentation, churn and value models read, as of ``view.as_of``.

    Heavy-tailed counts are log1p-compressed so a standard scaler treats them sensibly.
    The churn features (:data:`~streamproc.core.rhythm_features.CHURN_FEATURES`) need
    the base's purchase rhythm and the horizon in use, both from the model bundle: the
    customer's silence is measured against their own expected gap between orders, and
    the model reads log H so snapshots labelled under a shorter horizon (the learned one
    grows while long gaps complete) teach it how churn depends on H.
    """
    last_order = view.days_since_last_order
    gap = view.mean_days_between_orders
    silent = last_order if last_order is not None else view.tenure_days
    first, last = view.raw.get("fo"), view.raw.get("lo")
    span = (float(last) - float(first)) / DAY if first is not None and last is not None else 0.0
    since_first = (max(0.0, (view.as_of - float(first)) / DAY) if first is not None
                   else view.tenure_days)
    expected = expected_gap_days(view.get("o"), span, typical_gap_days)
    return {
        "recency_days": view.recency_days,
        "days_since_last_order": silent,
        "tenure_days": view.tenure_days,
        "log_orders": math.log1p(view.get("o")),
        "log_net_spend": math.log1p(max(0.0, view.net_spend)),
        "log_aov": math.log1p(max(0.0, view.average_order_value)),
        "log_sessions": math.log1p(view.get("se")),
        "log_views": math.log1p(view.get("pv") + view.get("vv")),
        "log_searches": math.log1p(view.get("sr")),
        "views_7d": math.log1p(view.decayed("v7")),
        "views_30d": math.log1p(view.decayed("v30")),
        "carts_30d": math.log1p(view.decayed("c30")),
        "orders_30d": math.log1p(view.decayed("o30")),
        "spend_30d": math.log1p(view.decayed("s30")),
        "conversion_rate": view.conversion_rate,
        "cart_abandonment_rate": view.cart_abandonment_rate,
        "refund_rate": view.refund_rate,
        "mean_days_between_orders": gap if gap is not None else 0.0,
        "orders_per_30d_tenure": view.get("o") / max(1.0, view.tenure_days / 30.0),
        "log_days_since_order": math.log1p(silent),
        "log_tenure_days": math.log1p(since_first),
        "log_overdue": math.log1p(silent / expected),
        "log_horizon_days": math.log(horizon_days),
    }


MODEL_FEATURES: Final[tuple[str, ...]] = tuple(
    model_features(ProfileView("", 0.0, {})).keys()
)
