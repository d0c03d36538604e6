import math

from streamproc.core.eventclock import InputProgress, partition_clock

DAY = 86_400.0


def test_caught_up_inputs_hold_nothing_back() -> None:
    clock = partition_clock([InputProgress(100 * DAY, 0), InputProgress(90 * DAY, 0)], DAY)
    assert clock.gate == math.inf
    assert clock.watermark == 99 * DAY


def test_a_lagging_input_bounds_watermark_and_gate() -> None:
    # purchases ran ahead to day 150 and caught up; clickstream is still at day 10 with a backlog
    clock = partition_clock([InputProgress(10 * DAY, 5000), InputProgress(150 * DAY, 0)], DAY)
    assert clock.watermark == 9 * DAY
    assert clock.gate == 9 * DAY


def test_unknown_or_unseen_inputs_block_until_they_report() -> None:
    clock = partition_clock([InputProgress(None, None), InputProgress(5 * DAY, 0)], 0.0)
    assert clock.gate == -math.inf
    assert clock.watermark == -math.inf


def test_no_inputs_seen_at_all() -> None:
    clock = partition_clock([InputProgress(None, 0)], DAY)
    assert clock.watermark == -math.inf
    assert clock.gate == math.inf



def test_messages_in_flight_on_a_live_stream_are_not_a_backlog() -> None:
    inputs = [InputProgress(100 * DAY, 3), InputProgress(90 * DAY, 2)]
    assert partition_clock(inputs, DAY, backlog=500).gate == math.inf
    assert partition_clock(inputs, DAY, backlog=0).gate == 89 * DAY
