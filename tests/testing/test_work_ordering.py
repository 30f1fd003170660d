"""The work invariants of supervisor.testing cover priorities and delays (issue 21): a
simulated run with both passes :func:`check_work_order`, and queues that ignore either
are caught."""

from __future__ import annotations

import pytest

from supervisor import MemoryWorkQueue, WorkItem
from supervisor.testing import (
    InvariantViolation,
    Schedule,
    Submit,
    check_all,
    check_work_order,
    run_schedule,
)
from supervisor.testing._errors import InvalidSchedule

from .test_work_properties import RESILIENT

# Two agents busy for 2 s with the first items; meanwhile items of priorities 0, 5 and 9
# queue, one of them delayed past the moment the agents free up.
SCHEDULE = Schedule(
    work=[
        Submit(0.5, "w", {"n": 1, "seconds": 2}),
        Submit(0.5, "w", {"n": 2, "seconds": 2}),
        Submit(1.0, "w", {"n": 3, "seconds": 1}, priority=0),
        Submit(1.0, "w", {"n": 4, "seconds": 1}, priority=5),
        Submit(1.0, "w", {"n": 5, "seconds": 1}, priority=9, delay=3.0),
        Submit(1.2, "w", {"n": 6, "seconds": 1}, priority=9),
    ]
)


class IgnoresPriorities(MemoryWorkQueue):
    def submit(self, *args: object, priority: int = 0, **kw: object) -> WorkItem:
        return super().submit(*args, **kw)  # type: ignore[arg-type]


class IgnoresDelays(MemoryWorkQueue):
    def submit(self, *args: object, not_before: float | None = None, **kw: object) -> WorkItem:
        return super().submit(*args, **kw)  # type: ignore[arg-type]


def test_priorities_and_delays_in_a_simulated_run_pass_every_check() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE)
    check_all(trace)
    check_work_order(trace)
    assigned = [r.item_id for r in trace.log if r.kind == "work_assigned"]
    assert assigned[2:] == ["w-6", "w-4", "w-3", "w-5"]  # w-5 only once its delay passed


def test_a_queue_that_ignores_priorities_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE, queue=IgnoresPriorities)
    with pytest.raises(InvariantViolation, match=r"\[work-order\].*higher priorities go first"):
        check_work_order(trace)


def test_a_queue_that_ignores_delays_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE, queue=IgnoresDelays)
    with pytest.raises(InvariantViolation, match=r"\[work-order\].*before its delay passed"):
        check_work_order(trace)


def test_bad_priorities_and_delays_are_invalid_schedules() -> None:
    with pytest.raises(InvalidSchedule, match="Submit.priority"):
        Submit(1.0, "w", priority=1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidSchedule, match="Submit.delay"):
        Submit(1.0, "w", delay=-1)
    assert Submit(1.0, "w", priority=2) != Submit(1.0, "w")
