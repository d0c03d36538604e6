"""The CDNOW 1/10 sample as purchase events, its calibration/holdout split and churn labels.

``CDNOW_sample.txt`` ships in the ``lifetimes==0.11.3`` wheel: 6,919 orders of 2,357
customers who first bought from CDNOW in 1997-Q1, observed to 1998-06-30. Columns, without
a header: master customer id, sample id, date (YYYYMMDD), CDs bought, dollars. Only this
file is read here; the wheel's larger log is held out to judge the work, never opened.

Pure: standard library only (the file is located without importing ``lifetimes``).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

DAY: Final = 86_400.0
SAMPLE_FILE: Final = "CDNOW_sample.txt"
#: The split every figure uses: calibration = orders up to and including this day.
CUTOFF_DAY: Final = date(1997, 9, 30)
#: Holdout length for the long churn label (39 weeks: the sample ends 1998-06-30).
HOLDOUT_DAYS: Final = 273
#: Orders are placed at noon UTC on their day, same-day orders a minute apart.
ORDER_HOUR: Final = 12


def sample_path() -> Path:
    """``CDNOW_sample.txt`` inside the installed lifetimes package (not imported)."""
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("lifetimes is not installed: pip install -e '.[eval]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / SAMPLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the lifetimes package")
    return path


@dataclass(frozen=True, slots=True)
class Order:
    """One row of the log: ``seq`` numbers a customer's orders within one day (0, 1, ...)."""

    customer_id: str
    day: date
    seq: int
    cds: int
    usd: float

    @property
    def at(self) -> datetime:
        """Event time: noon UTC of its day, plus ``seq`` minutes (distinct, ordered)."""
        return datetime(self.day.year, self.day.month, self.day.day, ORDER_HOUR,
                        tzinfo=UTC) + timedelta(minutes=self.seq)

    @property
    def event_id(self) -> str:
        """Stable across runs and files: customer, day and position within the day."""
        return f"cdnow-{self.customer_id}-{self.day:%Y%m%d}-{self.seq}"


def parse_orders(lines: Iterable[str]) -> list[Order]:
    """Orders in file order; several orders of one customer on one day get seq 0, 1, ..."""
    orders: list[Order] = []
    seen: dict[tuple[str, date], int] = {}
    for number, line in enumerate(lines, start=1):
        cells = line.split()
        if not cells:
            continue
        if len(cells) != 5:
            raise ValueError(f"line {number}: expected 5 columns, got {len(cells)}")
        customer, _sample, ymd, cds, usd = cells
        day = date(int(ymd[:4]), int(ymd[4:6]), int(ymd[6:]))
        seq = seen.get((customer, day), 0)
        seen[(customer, day)] = seq + 1
        orders.append(Order(customer, day, seq, int(cds), float(usd)))
    return orders


def read_orders(path: Path | None = None) -> list[Order]:
    """Every order of the sample file."""
    with (path or sample_path()).open(encoding="ascii") as handle:
        return parse_orders(handle)


def order_event(order: Order) -> dict[str, Any]:
    """The streamproc purchase event of one order: one line item of ``cds`` CDs, in USD.

    A free order (0 dollars: promotions, replacements) is an order with items priced 0.
    """
    return {
        "event_id": order.event_id,
        "customer_id": order.customer_id,
        "order_id": order.event_id,
        "type": "order",
        "timestamp": order.at.isoformat().replace("+00:00", "Z"),
        "currency": "USD",
        "total": order.usd,
        "items": [{"product_id": "cd", "category": "music", "quantity": order.cds,
                   "unit_price": order.usd / order.cds}],
    }


def replay_order(orders: Iterable[Order]) -> list[Order]:
    """Orders as a backfill sends them: by event time, then customer (deterministic)."""
    return sorted(orders, key=lambda o: (o.at, o.customer_id))


@dataclass(frozen=True, slots=True)
class Split:
    """Calibration up to the end of ``cutoff_day``; holdout for ``holdout_days`` after it."""

    cutoff_day: date = CUTOFF_DAY
    holdout_days: int = HOLDOUT_DAYS

    @property
    def cutoff(self) -> datetime:
        """The scoring instant: the end of the cutoff day (00:00 UTC the day after)."""
        day = self.cutoff_day + timedelta(days=1)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    def calibration(self, orders: Iterable[Order]) -> list[Order]:
        """Orders on or before the cutoff day."""
        return [o for o in orders if o.day <= self.cutoff_day]


@dataclass
class Customer:
    """One customer's orders, as times (seconds) and dollars, split at the cutoff."""

    customer_id: str
    calibration: list[tuple[float, float]] = field(default_factory=list)
    later: list[tuple[float, float]] = field(default_factory=list)

    @property
    def value(self) -> float:
        """What the customer spent in the calibration period (the value an alert protects)."""
        return sum(usd for _, usd in self.calibration)

    def orders_between(self, start: float, end: float) -> bool:
        """Whether an order falls in ``(start, end]`` (calibration or later)."""
        return any(start < t <= end for t, _ in self.calibration) or \
            any(start < t <= end for t, _ in self.later)

    def spend_between(self, start: float, end: float) -> float:
        """Dollars of the orders in ``(start, end]`` (calibration or later)."""
        return sum(usd for t, usd in (*self.calibration, *self.later) if start < t <= end)


def customers(orders: Iterable[Order], split: Split) -> dict[str, Customer]:
    """Customers with at least one calibration order (the population scored at the cutoff)."""
    out: dict[str, Customer] = {}
    later: list[Order] = []
    for order in orders:
        if order.day <= split.cutoff_day:
            cust = out.setdefault(order.customer_id, Customer(order.customer_id))
            cust.calibration.append((order.at.timestamp(), order.usd))
        else:
            later.append(order)
    for order in later:
        if order.customer_id in out:
            out[order.customer_id].later.append((order.at.timestamp(), order.usd))
    for cust in out.values():
        cust.calibration.sort()
        cust.later.sort()
    return out


def churn_labels(population: Sequence[Customer], since: datetime, days: float) -> list[int]:
    """1 where the customer placed no order in ``(since, since + days]``, else 0."""
    start = since.timestamp()
    end = start + days * DAY
    return [0 if c.orders_between(start, end) else 1 for c in population]


def jsonl(orders: Iterable[Order]) -> Iterator[str]:
    """One JSON line per order event."""
    for order in orders:
        yield json.dumps(order_event(order), separators=(",", ":")) + "\n"
