"""The Redis key schema: one place, pure and unit-tested.

Every per-customer key carries the customer id as a hash tag (``{...}``) so all
of a customer's keys share one Redis Cluster slot and one Lua call can touch
them atomically. Braces and ``%`` inside ids are percent-encoded so an id can
never break out of its tag.
"""

from __future__ import annotations

from typing import Final

PROFILE_SUFFIX: Final = "p"


def _tag(customer_id: str) -> str:
    return customer_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _untag(tag: str) -> str:
    return tag.replace("%7D", "}").replace("%7B", "{").replace("%25", "%")


def customer_base(prefix: str, customer_id: str) -> str:
    """The shared start of every key of one customer: ``<prefix>:{<id>}:``."""
    return f"{prefix}:{{{_tag(customer_id)}}}:"


def profile_key(prefix: str, customer_id: str) -> str:
    """Key of the customer's feature profile and scoring state (``redis_store.split_value``)."""
    return customer_base(prefix, customer_id) + PROFILE_SUFFIX


def profile_pattern(prefix: str) -> str:
    """SCAN pattern matching every profile key."""
    return f"{prefix}:{{*}}:{PROFILE_SUFFIX}"


def customer_from_key(prefix: str, key: str) -> str:
    """Invert :func:`profile_key` (or any per-customer key)."""
    start = len(prefix) + 2
    end = key.rindex("}:")
    return _untag(key[start:end])


def event_time_key(prefix: str) -> str:
    """Sorted set of each input partition's watermark as of its latest idle sweep."""
    return f"{prefix}:event_time"


def schedule_key(prefix: str, schedule: str) -> str:
    """Sorted set of a scoring schedule (``core.store.schedule_name``), by due event time."""
    return f"{prefix}:{schedule}"


def model_key(prefix: str, name: str) -> str:
    """Key of a signed model snapshot (``current``, ``trainer`` or a version number).

    Every model key shares the ``{model}`` hash tag: one slot, so the store's
    transactions and fenced scripts also run on Redis Cluster.
    """
    return f"{prefix}:{{model}}:{name}"


def deployment_key(prefix: str) -> str:
    """Key of the deployment marker: which Redis this deployment's state lives in."""
    return f"{prefix}:deployment"


def deployment_copy_key(prefix: str, tag: str) -> str:
    """A copy of the deployment marker in the slot of hash tag ``tag`` (Redis Cluster).

    A script may only read keys of the slot it writes; each slot holds its own copy.
    """
    return f"{prefix}:deployment:{{{tag}}}"
