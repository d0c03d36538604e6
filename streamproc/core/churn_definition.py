"""What counts as "still a customer": the churn definition, a setting.

A customer has churned when no *qualifying* event happens within the horizon H. Which
events qualify is a business decision:

- ``"activity"`` (the default): any event but a refund (visits, views, searches, carts,
  orders). On a purchase-only stream it is the same as ``"order"``;
- ``"order"``: only orders. On order data a page view is not loyalty, and a refund is
  the opposite of it. Only qualifying events start a customer's scoring, so under this
  definition a visitor who never ordered gets no segment and no churn score.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

ChurnDefinition = Literal["order", "activity"]
DEFAULT_CHURN_DEFINITION: Final[ChurnDefinition] = "activity"


def is_qualifying(event_type: str, definition: ChurnDefinition = DEFAULT_CHURN_DEFINITION) -> bool:
    """True if an event of ``event_type`` keeps a customer from churning under ``definition``."""
    if definition == "order":
        return event_type == "order"
    if definition == "activity":
        return event_type != "refund"
    raise ValueError(f"churn definition must be one of {get_args(ChurnDefinition)}, "
                     f"got {definition!r}")
