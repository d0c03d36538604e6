"""The churn definition setting: which events keep a customer."""

from __future__ import annotations

import pytest

from streamproc.core.churn_definition import is_qualifying


@pytest.mark.parametrize(
    ("event_type", "order", "activity"),
    [("order", True, True), ("refund", False, False), ("page_view", False, True),
     ("session_start", False, True), ("add_to_cart", False, True)],
)
def test_definitions(event_type: str, order: bool, activity: bool) -> None:
    assert is_qualifying(event_type) is activity  # "activity" is the default
    assert is_qualifying(event_type, "order") is order
    assert is_qualifying(event_type, "activity") is activity


def test_unknown_definition_is_refused() -> None:
    with pytest.raises(ValueError, match="churn definition"):
        is_qualifying("order", "visits")  # type: ignore[arg-type]
