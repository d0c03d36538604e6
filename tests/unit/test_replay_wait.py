"""When ``replay --wait`` counts a replay as processed: pure parts, plain data."""

from __future__ import annotations

from collections import Counter

import orjson

from streamproc.commands.replay import Produced
from streamproc.commands.replay_wait import (
    Observation,
    _count_dead_letter,
    outstanding,
    targets,
)

HOUR = 3600.0


def _produced() -> Produced:
    produced = Produced()
    # Partition 0 of both inputs, partition 1 of purchases only; acks in any order.
    produced.record("purchases", 0, 12, 1000 * HOUR)
    produced.record("purchases", 0, 10, 1200 * HOUR)
    produced.record("clickstream", 0, 3, 1300 * HOUR)
    produced.record("purchases", 1, 7, 900 * HOUR)
    return produced


def test_targets_are_each_partitions_last_event_time_minus_lateness() -> None:
    goals = targets(_produced(), lateness_s=HOUR)
    assert {p: (g.newest, g.watermark) for p, g in goals.items()} == {
        0: (1300 * HOUR, 1299 * HOUR), 1: (900 * HOUR, 899 * HOUR)}
    ranges = _produced().ranges
    assert (ranges["purchases", 0].first_offset, ranges["purchases", 0].last_offset) == (10, 12)


def _done() -> Observation:
    return Observation(
        committed={("purchases", 0): 13, ("clickstream", 0): 4, ("purchases", 1): 8},
        watermarks={0: 1299 * HOUR, 1: 950 * HOUR}, checks_due={0: 0, 1: 0},
        deferred={0: 0, 1: 0})


def test_done_only_when_committed_swept_and_nothing_due() -> None:
    produced = _produced()
    goals = targets(produced, lateness_s=HOUR)
    assert outstanding(produced, goals, _done()) == []
    done = _done()
    cases = {
        "purchases[0]: committed offset 12 of 13": Observation(
            {**done.committed, ("purchases", 0): 12}, done.watermarks, done.checks_due,
            done.deferred),
        "clickstream[0]: committed offset None of 4": Observation(
            {k: v for k, v in done.committed.items() if k[0] != "clickstream"},
            done.watermarks, done.checks_due, done.deferred),
        "partition 0: watermark 1970-02-24T02:00:00Z short of 1970-02-24T03:00": Observation(
            done.committed, {0: 1298 * HOUR, 1: 950 * HOUR}, done.checks_due, done.deferred),
        "partition 1: watermark none": Observation(
            done.committed, {0: 1299 * HOUR}, done.checks_due, done.deferred),
        "partition 1: 3 idle checks due": Observation(
            done.committed, done.watermarks, {0: 0, 1: 3}, done.deferred),
        "partition 0: 2 deferred scorings": Observation(
            done.committed, done.watermarks, done.checks_due, {0: 2, 1: 0}),
    }
    for expected, seen in cases.items():
        left = outstanding(produced, goals, seen)
        assert len(left) == 1, left
        assert left[0].startswith(expected), left


def test_only_dead_letters_of_replayed_offsets_count() -> None:
    produced = _produced()
    counts: Counter[str] = Counter()
    for topic, partition, offset in (("purchases", 0, 11), ("purchases", 0, 13),
                                     ("clickstream", 1, 3), ("purchases", 1, 7)):
        letter = {"source_topic": topic, "source_partition": partition,
                  "source_offset": offset, "reason": "late_event"}
        _count_dead_letter(orjson.dumps(letter), produced, counts)
    _count_dead_letter(b"not json", produced, counts)
    _count_dead_letter(orjson.dumps({"reason": "schema"}), produced, counts)
    assert counts == Counter({"late_event": 2})
