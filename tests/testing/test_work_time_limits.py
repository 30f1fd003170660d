"""The work invariants of supervisor.testing cover time limits (issue 21): simulated
agents that run past ``Submit(time_limit=...)`` are timed out, told ``CANCEL`` and give
the attempt up (or are stopped after the grace), and traces or queues that break that
are caught."""

from __future__ import annotations

import tempfile
from typing import Any

import attrs
import pytest
from hypothesis import given, settings

from supervisor import ChildExited, MemoryWorkQueue, SqliteWorkQueue, Verdict
from supervisor.testing import (
    InvalidSchedule,
    InvariantViolation,
    Schedule,
    Submit,
    SubmitApplied,
    Trace,
    WireRecord,
    WorkSnapshot,
    check_all,
    check_work_deliveries,
    check_work_time_limits,
    run_schedule,
    specs_and_work_schedules,
    work_schedules,
)
from supervisor.work import WorkCompleted, WorkRefused, WorkTimedOut

from .test_work_properties import RESILIENT, explore_examples

# w-1 runs 5 s of work under a 2 s limit on every attempt (its agent gives up on CANCEL);
# w-2 too, with one delivery, and ignores CANCEL but finishes within the grace; w-3
# finishes in time; w-4's agent ignores CANCEL for 30 s and is stopped after the grace.
SCHEDULE = Schedule(
    work=[
        Submit(0.5, "w", {"n": 1, "seconds": 5}, time_limit=2),
        Submit(0.5, "w", {"n": 2, "seconds": 5, "ignore_cancel": True}, 1, time_limit=2),
        Submit(0.5, "w", {"n": 3, "seconds": 1}, time_limit=2),
        Submit(10, "w", {"n": 4, "seconds": 30, "ignore_cancel": True}, 1, time_limit=1),
    ]
)


def quiesced(trace: Trace) -> dict[str, str]:
    snap = [r for r in trace.log if isinstance(r, WorkSnapshot) and r.quiesced][-1]
    return {s.id: s.status for s in snap.items}


def wire(trace: Trace, word: str) -> list[tuple[float, str, Any]]:
    return [
        (r.at, r.child_id, (r.body or {}).get("item"))
        for r in trace.log
        if isinstance(r, WireRecord) and r.word == word
    ]


def test_time_limits_in_a_simulated_run_pass_every_check() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE)
    check_all(trace)

    assert quiesced(trace) == {
        "w-1": "dead",  # three attempts, each timed out
        "w-2": "dead",
        "w-3": "completed",
        "w-4": "dead",
    }
    timed = [
        (r.at, r.item_id, r.attempt, r.final) for r in trace.events if isinstance(r, WorkTimedOut)
    ]
    # both at 2.5 s, in either order (trio's scheduler orders tasks woken at one instant)
    assert sorted(timed[:2]) == [(2.5, "w-1", 1, False), (2.5, "w-2", 1, True)]
    assert (11.0, "w-4", 1, True) in timed
    cancels = wire(trace, "CANCEL")
    assert (2.5, "w-agent-2", "w-1") in cancels and (11.0, "w-agent-2", "w-4") in cancels
    # the agent gives w-1 up at once; w-2's agent answers late (refused); w-4's is stopped
    assert (2.5, "w-agent-2", "w-1") in wire(trace, "FAIL")
    refused = [(r.at, r.item_id) for r in trace.events if isinstance(r, WorkRefused)]
    assert (2.5, "w-1") in refused and (5.5, "w-2") in refused
    stopped = [
        (r.at, r.child_id) for r in trace.events if isinstance(r, ChildExited) and not r.expected
    ]
    assert stopped == [(21.0, "w-agent-2")]  # 11 + the 10 s cancel_grace


class NeverTimesOut(MemoryWorkQueue):
    def time_out(self, item_id: str, attempt: int, reason: str, now: float) -> Verdict:
        return Verdict(False, "this queue has no time limits")


class TimeOutRefunds(MemoryWorkQueue):
    """Gives the delivery of a timed-out attempt back (so the item never dies)."""

    def time_out(self, item_id: str, attempt: int, reason: str, now: float) -> Verdict:
        verdict = super().time_out(item_id, attempt, reason, now)
        item = self._items[item_id]
        if verdict.accepted and item.status.value == "queued":
            item.deliveries -= 1
        return verdict


def test_a_queue_that_never_times_out_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE, queue=NeverTimesOut)
    with pytest.raises(
        InvariantViolation,
        match=r"\[work-time-limits\] 'w-1' attempt 1 ran past its time limit: it was still "
        r"held by 'w-agent-2' at 3, its deadline was 2.5",
    ):
        check_work_time_limits(trace)


def test_a_time_out_that_gives_the_delivery_back_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE, queue=TimeOutRefunds)
    with pytest.raises(
        InvariantViolation,
        match=r"\[work-deliveries\] 'w-1' timed out and went back to the queue after using "
        "all its 3 deliveries; it should have been dead-lettered",
    ):
        check_work_deliveries(trace)


def test_a_result_accepted_after_the_time_out_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE)
    log = list(trace.log)
    i = next(i for i, r in enumerate(log) if isinstance(r, WorkTimedOut) and r.item_id == "w-1")
    late = WorkCompleted(
        at=2.5, supervisor="root/w-pool", child_id="w-agent-2", item_id="w-1", attempt=1
    )
    log.insert(i + 1, late)
    with pytest.raises(
        InvariantViolation,
        match=r"\[work-time-limits\] 'w-1' attempt 1 timed out, and then work_completed was "
        "accepted for it from 'w-agent-2'",
    ):
        check_work_time_limits(attrs.evolve(trace, log=tuple(log)))


def test_a_time_out_before_the_deadline_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE)
    log = [
        attrs.evolve(r, submit=attrs.evolve(r.submit, time_limit=4))
        if isinstance(r, SubmitApplied) and r.item_id == "w-1"
        else r
        for r in trace.log
    ]
    with pytest.raises(
        InvariantViolation,
        match=r"\[work-time-limits\] 'w-1' attempt 1 timed out at 2.5, before its deadline 4.5",
    ):
        check_work_time_limits(attrs.evolve(trace, log=tuple(log)))


def test_an_agent_not_stopped_within_the_grace_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE)
    with pytest.raises(
        InvariantViolation,
        match=r"\[work-time-limits\] 'w-agent-2' \(pid 10002\) neither gave up 'w-4' attempt 1 "
        r"nor was stopped within cancel_grace=1s",
    ):
        check_work_time_limits(attrs.evolve(trace, cancel_grace=1.0))


def test_an_agent_never_told_to_cancel_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE)
    log = [
        r
        for r in trace.log
        if not (isinstance(r, WireRecord) and r.word in ("CANCEL", "FAIL", "RESULT", "STOP"))
    ]
    with pytest.raises(
        InvariantViolation,
        # w-1 (pid 10002) or w-2 (pid 10001): both time out at 2.5 s, in either order
        match=r"\[work-time-limits\] 'w-[12]' attempt 1 timed out, but its agent \(pid 1000[12]\) "
        r"was never told CANCEL for it \(nor stopped\)",
    ):
        check_work_time_limits(attrs.evolve(trace, log=tuple(log)))


@pytest.mark.parametrize("value", [0, -1, float("inf"), "2", True])
def test_bad_time_limits_are_invalid_schedules(value: object) -> None:
    with pytest.raises(InvalidSchedule, match=r"Submit.time_limit must be seconds > 0 or None"):
        Submit(1.0, "w", time_limit=value)  # type: ignore[arg-type]
    assert Submit(1.0, "w", time_limit=2) != Submit(1.0, "w")


# --------------------------------------------------------------------------------------
# The properties


@settings(max_examples=explore_examples(100), deadline=None)
@given(work_schedules(RESILIENT, hang=True, time_limits=True))
def test_time_limits_hold_while_agents_keep_being_restarted(schedule: Schedule) -> None:
    trace = run_schedule(RESILIENT, schedule)
    check_all(trace)
    assert [] == [(i, s) for i, s in quiesced(trace).items() if s in ("queued", "assigned")]


@settings(max_examples=explore_examples(100), deadline=None)
@given(specs_and_work_schedules(max_depth=1, hang=True, time_limits=True, dependencies=True))
def test_every_control_holds_on_random_trees(spec_and_schedule: tuple[Any, Schedule]) -> None:
    check_all(run_schedule(*spec_and_schedule))


@settings(max_examples=explore_examples(30), deadline=None)
@given(work_schedules(RESILIENT, hang=True, time_limits=True, dependencies=True))
def test_every_control_holds_on_sqlite(schedule: Schedule) -> None:
    """Time limits, dependencies and keys on :class:`~supervisor.SqliteWorkQueue` (its
    writer thread may order one instant's tasks differently from run to run: invariants
    are checked, not exact traces)."""
    with tempfile.TemporaryDirectory() as state:
        made: list[SqliteWorkQueue] = []

        def queue() -> SqliteWorkQueue:
            made.append(SqliteWorkQueue(state))
            return made[-1]

        try:
            trace = run_schedule(RESILIENT, schedule, queue=queue)
        finally:
            for q in made:
                q.close()
    check_all(trace)
