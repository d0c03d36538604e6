"""An independent reference for customer profiles: a plain loop over event dicts.

Written separately from streamproc.core.features on purpose (no shared code,
no ops): if both agree on a messy stream, the production path is right.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

DAY = 86_400.0
TAUS = {"7d": 7 * DAY, "30d": 30 * DAY}


def _ts(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value) / 1000.0
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def reference_profiles(events: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Profiles by customer from valid event dicts (duplicates by event_id count once)."""
    seen: set[str] = set()
    per_customer: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for event in events:
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        per_customer[event["customer_id"]].append(event)
    return {cid: _profile(evs) for cid, evs in per_customer.items()}


def _profile(events: list[Mapping[str, Any]]) -> dict[str, Any]:
    times = [_ts(e["timestamp"]) for e in events]
    clicks = [e for e in events if "event_type" in e]
    orders = [e for e in events if e.get("type") == "order"]
    refunds = [e for e in events if e.get("type") == "refund"]
    kinds = defaultdict(int)
    for e in clicks:
        kinds[e["event_type"]] += 1
    sessions = {e["session_id"] for e in clicks if e.get("session_id")}
    cart_sessions = {e["session_id"] for e in clicks
                     if e["event_type"] == "add_to_cart" and e.get("session_id")}
    order_sessions = {e["session_id"] for e in orders if e.get("session_id")}
    active = [_ts(e["timestamp"]) for e in events if e.get("type") != "refund"]
    order_times = [_ts(e["timestamp"]) for e in orders]
    as_of = max(times)
    out: dict[str, Any] = {
        "events": float(len(events)),
        "orders": float(len(orders)),
        "revenue": sum(float(e["total"]) for e in orders),
        "items_purchased": float(sum(int(i["quantity"]) for e in orders for i in e["items"])),
        "refunds": float(len(refunds)),
        "refund_amount": sum(float(e["total"]) for e in refunds),
        "first_seen_at": min(times),
        "last_seen_at": as_of,
        "sessions": float(len(sessions)),
        "page_views": float(kinds["page_view"]),
        "product_views": float(kinds["product_view"]),
        "searches": float(kinds["search"]),
        "add_to_cart": float(kinds["add_to_cart"]),
        "remove_from_cart": float(kinds["remove_from_cart"]),
        "cart_sessions": float(len(cart_sessions)),
        "ordered_sessions": float(len(order_sessions)),
        "converted_cart_sessions": float(len(cart_sessions & order_sessions)),
    }
    if active:
        out["last_active_at"] = max(active)
    if order_times:
        out["first_order_at"] = min(order_times)
        out["last_order_at"] = max(order_times)
    views = [_ts(e["timestamp"]) for e in clicks
             if e["event_type"] in ("page_view", "product_view")]
    carts = [_ts(e["timestamp"]) for e in clicks if e["event_type"] == "add_to_cart"]
    for suffix, tau in TAUS.items():
        out[f"views_{suffix}"] = sum(math.exp(-(as_of - t) / tau) for t in views)
        out[f"carts_{suffix}"] = sum(math.exp(-(as_of - t) / tau) for t in carts)
        out[f"orders_{suffix}"] = sum(math.exp(-(as_of - t) / tau) for t in order_times)
        out[f"spend_{suffix}"] = sum(float(e["total"]) * math.exp(-(as_of - _ts(e["timestamp"]))
                                                                   / tau) for e in orders)
    cats: dict[str, float] = defaultdict(float)
    for e in clicks:
        if e.get("category") and e["event_type"] in ("page_view", "product_view"):
            cats[e["category"]] += 1.0
        elif e.get("category") and e["event_type"] == "add_to_cart":
            cats[e["category"]] += 2.0
    for e in orders:
        for item in e["items"]:
            if item.get("category"):
                cats[item["category"]] += 4.0
    out["categories"] = dict(cats)
    return out


def compare(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Differences between a reference profile and ``ProfileView.to_dict()`` output."""
    problems = []
    for name, want in expected.items():
        got = actual.get(name, 0.0 if not isinstance(want, dict) else {})
        if isinstance(want, dict):
            if set(want) != set(got) or any(not math.isclose(want[k], got[k], rel_tol=1e-9)
                                            for k in want):
                problems.append(f"{name}: want {want} got {got}")
        elif not math.isclose(float(want), float(got or 0.0), rel_tol=1e-9, abs_tol=1e-6):
            problems.append(f"{name}: want {want} got {got}")
    return problems
