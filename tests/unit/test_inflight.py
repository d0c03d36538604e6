"""Batches in flight: overlapping work, completions in order, a failure raised once."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from streamproc.runtime.inflight import InFlight, Step


class Log:
    """Records what ran, in order, and lets a test release each batch's work by hand."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.running = 0
        self.most_running = 0

    def batch(self, n: int, *, fails: bool = False) -> tuple[Step, Step]:
        gate = self.gates.setdefault(n, asyncio.Event())

        async def work() -> None:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            try:
                await gate.wait()
                self.order.append(f"work {n}")
                if fails:
                    raise RuntimeError(f"batch {n} failed")
            finally:
                self.running -= 1

        async def complete() -> None:
            self.order.append(f"complete {n}")

        return work, complete


def _catch(errors: list[dict[str, Any]]) -> None:
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_work_overlaps_but_completions_follow_dispatch_order() -> None:
    log, inflight = Log(), InFlight(3)
    for n in (1, 2, 3):
        await inflight.dispatch(*log.batch(n))
    await _settle()
    assert log.most_running == 3  # all three batches' work under way at once
    log.gates[3].set()
    log.gates[2].set()
    await _settle()
    assert log.order == ["work 3", "work 2"]  # done, but waiting for batch 1
    log.gates[1].set()
    await inflight.drain(1.0)
    assert log.order == ["work 3", "work 2", "work 1", "complete 1", "complete 2", "complete 3"]


async def test_dispatch_waits_while_depth_batches_are_in_flight() -> None:
    log, inflight = Log(), InFlight(2)
    await inflight.dispatch(*log.batch(1))
    await inflight.dispatch(*log.batch(2))
    third = asyncio.ensure_future(inflight.dispatch(*log.batch(3)))
    await _settle()
    assert not third.done()
    log.gates[1].set()
    await third
    assert log.most_running == 2
    log.gates[2].set()
    log.gates[3].set()
    await inflight.drain(1.0)
    assert [e for e in log.order if e.startswith("complete")] == [
        "complete 1", "complete 2", "complete 3"]


async def test_a_failed_batch_is_raised_once_and_later_batches_stay_uncompleted() -> None:
    errors: list[dict[str, Any]] = []
    _catch(errors)
    log, inflight = Log(), InFlight(2)
    await inflight.dispatch(*log.batch(1, fails=True))
    await inflight.dispatch(*log.batch(2))
    log.gates[1].set()
    log.gates[2].set()
    await _settle()
    with pytest.raises(RuntimeError, match="batch 1 failed"):
        await inflight.dispatch(*log.batch(3))
    await inflight.drain(1.0)
    # Batch 2's work ran (it was under way), but its offsets must not be acknowledged
    # past an unacknowledged batch 1; batch 3 never started.
    assert log.order == ["work 1", "work 2"]
    del inflight
    gc.collect()
    await _settle()
    assert errors == []  # no "Task exception was never retrieved"


async def test_drain_logs_a_failure_nobody_else_will_see(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    errors: list[dict[str, Any]] = []
    _catch(errors)
    log, inflight = Log(), InFlight(2)
    await inflight.dispatch(*log.batch(1, fails=True))
    log.gates[1].set()
    await _settle()
    await inflight.drain(1.0)
    assert "a batch failed while the agent stopped" in caplog.text
    gc.collect()
    await _settle()
    assert errors == []


async def test_drain_cancels_what_does_not_finish_in_time() -> None:
    log, inflight = Log(), InFlight(2)
    await inflight.dispatch(*log.batch(1))
    await inflight.dispatch(*log.batch(2))
    log.gates[1].set()
    await inflight.drain(0.05)
    assert log.order == ["work 1", "complete 1"]
    assert len(inflight) == 0
    await _settle()
    assert log.running == 0  # batch 2's work was cancelled


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InFlight(0)
