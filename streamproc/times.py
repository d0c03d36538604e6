"""The one time format of streamproc's documents, and the instants people may type.

Kept apart from ``streamproc.api`` so that commands which only print times (``replay``)
do not import the scoring stack.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

#: Event times start here (the store keeps them as unsigned integers).
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def iso_utc(moment: datetime | float) -> str:
    """The one time format of every document streamproc prints or serves.

    ISO-8601 in UTC with a ``Z``, as the output topics write it (pydantic's rendering):
    ``2026-03-01T00:00:00Z``, microseconds only when there are some.
    """
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime | None:
    """An instant given as ``now`` (None: the current event time), epoch milliseconds or
    ISO-8601 (an offset or ``Z``; without one it is UTC). ValueError with the reason."""
    value = text.strip()
    if value.lower() == "now":
        return None
    try:
        if value.isdigit():
            moment = datetime.fromtimestamp(int(value) / 1000, UTC)
        else:
            moment = datetime.fromisoformat(value)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"not a time: {text!r} (ISO-8601 such as 2026-03-01T00:00:00Z, "
                         "epoch milliseconds, or now)") from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if moment < EPOCH:
        raise ValueError(f"time before 1970-01-01T00:00:00Z: {text!r}")
    return moment


__all__ = ["EPOCH", "iso_utc", "parse_time"]
