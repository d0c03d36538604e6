"""Which training records the trainer may ack, and which examples it still has to learn."""

from __future__ import annotations

import pytest

from streamproc.adapters.model_store import TrainerPosition
from streamproc.runtime.trainer import covered_prefix, first_to_learn


def _at(offset: int, index: int = 0) -> TrainerPosition:
    return TrainerPosition("training", offset, index)


@pytest.mark.parametrize(("offsets", "stored", "acked"), [
    ([3, 4, 5], None, 0),  # nothing stored yet
    ([3, 4, 5], _at(3), 0),
    ([3, 4, 5], _at(5), 2),  # record 5 not learned at all
    ([3, 4, 5], _at(5, 120), 2),  # record 5 partly in the stored state: it waits
    ([3, 4, 5], _at(6), 3),
    ([3, 4, 5], _at(40), 3),
    ([], _at(9), 0),
    # Redelivered after a rebalance: the older copies go first, acks stay in order.
    ([3, 4, 5, 3, 4, 5, 6], _at(5), 2),
    ([3, 4, 5, 3, 4, 5, 6], _at(6), 6),
])
def test_only_records_a_stored_state_holds_are_acked_in_order(
        offsets: list[int], stored: TrainerPosition | None, acked: int) -> None:
    assert covered_prefix(offsets, stored) == acked


@pytest.mark.parametrize(("offset", "next_offset", "next_index", "first"), [
    (0, None, 0, 0),  # no position: learn everything
    (7, None, 0, 0),
    (4, 7, 0, None),  # before the position: learned already
    (6, 7, 30, None),
    (7, 7, 0, 0),
    (7, 7, 30, 30),  # partly learned: the rest only
    (9, 7, 30, 0),  # past it (a gap in offsets): all of it
])
def test_first_example_to_learn(offset: int, next_offset: int | None, next_index: int,
                                first: int | None) -> None:
    assert first_to_learn(offset, next_offset, next_index) == first


def test_position_round_trips_as_json() -> None:
    position = TrainerPosition("training", 12, 34, 56)
    assert TrainerPosition.from_json(position.to_json()) == position
    assert TrainerPosition.from_json(position.to_json().encode()) == position


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"7", b'{"topic": "t", "offset": 1}',
                                 b'{"topic": "t", "offset": -1, "index": 0, "since_version": 0}',
                                 b'{"topic": "t", "offset": "x", "index": 0, "since_version": 0}'])
def test_a_malformed_position_is_refused(raw: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        TrainerPosition.from_json(raw)
