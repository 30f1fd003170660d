"""The work invariants of supervisor.testing cover dependencies and idempotent keys
(issue 21): schedules with ``Submit(key=..., after=...)`` pass every check on the memory
queue, and queues that ignore either are caught."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import pytest
from hypothesis import given, settings

from supervisor import ControlError, ItemStatus, MemoryWorkQueue, WorkItem
from supervisor.testing import (
    InvalidSchedule,
    InvariantViolation,
    Schedule,
    Submit,
    SubmitApplied,
    SubmitRefused,
    Trace,
    WorkSnapshot,
    check_all,
    check_work_dependencies,
    check_work_keys,
    run_schedule,
    specs_and_work_schedules,
    work_schedules,
)
from supervisor.work import WorkAssigned, WorkDependencyEnded

from .test_work_properties import RESILIENT, explore_examples

# Two agents. 'a' takes 2 s and is submitted twice (the second answers the first); 'b'
# fails for good; w-3 waits for 'a' (priority 5), w-4 for 'a' and 'b', w-5 for 'b' and
# is submitted after 'b' failed.
SCHEDULE = Schedule(
    work=[
        Submit(0.5, "w", {"n": 1, "seconds": 2}, key="a"),
        Submit(0.5, "w", {"n": 2, "fail": "final"}, key="b"),
        Submit(1.0, "w", {"n": 3}, key="a"),
        Submit(1.0, "w", {"n": 4}, priority=5, after=("w:a",)),
        Submit(1.0, "w", {"n": 5}, after=("w:a", "w:b")),
        Submit(1.0, "w", {"n": 6, "seconds": 3}),
        Submit(5.0, "w", {"n": 7}, after=("w:b",)),
    ]
)


def applied(trace: Trace) -> list[SubmitApplied]:
    return [r for r in trace.log if isinstance(r, SubmitApplied)]


def quiesced(trace: Trace) -> dict[str, str]:
    snap = [r for r in trace.log if isinstance(r, WorkSnapshot) and r.quiesced][-1]
    return {s.id: s.status for s in snap.items}


def test_dependencies_and_keys_in_a_simulated_run_pass_every_check() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE)
    check_all(trace)

    subs = applied(trace)
    assert [(s.item_id, s.created) for s in subs] == [
        ("w-1", True),
        ("w-2", True),
        ("w-1", False),  # the kept key 'a' answered w-1: nothing made
        ("w-3", True),
        ("w-4", True),
        ("w-5", True),
        ("w-6", True),
    ]
    assert quiesced(trace) == {
        "w-1": "completed",
        "w-2": "failed",
        "w-3": "completed",  # once w-1 completed, ahead of w-5 (priority 5)
        "w-4": "cancelled",  # w-2 failed
        "w-5": "completed",
        "w-6": "cancelled",  # submitted after w-2 failed: cancelled at once
    }
    ends = [r.item_id for r in trace.log if isinstance(r, WorkDependencyEnded)]
    assert ends == ["w-4", "w-6"]
    assigned = [(r.at, r.item_id) for r in trace.events if isinstance(r, WorkAssigned)]
    assert (2.5, "w-3") in assigned  # at w-1's completion, not before


class ForgetsKeys(MemoryWorkQueue):
    """Makes a new item for every submit, key or not (a key names the newest)."""

    def keyed(self, agent_type: str, key: str) -> WorkItem | None:
        return None

    def get_dependency(self, item_id: str) -> WorkItem:
        agent_type, _, key = item_id.partition(":")
        return self._items[self._keys[(agent_type, key)]]


class IgnoresDependencies(MemoryWorkQueue):
    def submit(self, agent_type: str, payload: Any, **kw: Any) -> WorkItem:
        return super().submit(agent_type, payload, **{**kw, "after": ()})


class NeverCancelsDependents(MemoryWorkQueue):
    """A dependency that failed leaves its dependents waiting for ever."""

    def _settle_dependents(self, dep: WorkItem, now: float) -> None:
        if dep.status is ItemStatus.COMPLETED:
            super()._settle_dependents(dep, now)


class NeverReleasesDependents(MemoryWorkQueue):
    """A dependency that completed leaves its dependents waiting for ever."""

    def _settle_dependents(self, dep: WorkItem, now: float) -> None:
        if dep.status is not ItemStatus.COMPLETED:
            super()._settle_dependents(dep, now)


class ReleasesOnFailure(MemoryWorkQueue):
    """Treats a dependency's failure as a completion: its dependents run."""

    def _settle_dependents(self, dep: WorkItem, now: float) -> None:
        status, dep.status = dep.status, ItemStatus.COMPLETED
        try:
            super()._settle_dependents(dep, now)
        finally:
            dep.status = status


class NoDependencies(MemoryWorkQueue):
    """Refuses ``after``, as a backend without dependencies does."""

    def submit(self, agent_type: str, payload: Any, **kw: Any) -> WorkItem:
        if kw.get("after"):
            raise ControlError("--after: NoDependencies does not support dependencies")
        return super().submit(agent_type, payload, **kw)


def test_a_queue_that_forgets_keys_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE, queue=ForgetsKeys)
    with pytest.raises(
        InvariantViolation,
        match=r"\[work-keys\] a second submit with key 'a' .* answered with 'w-3' and "
        r"created \['w-3'\]; 'w-1' has that key",
    ):
        check_work_keys(trace)


def test_a_queue_that_ignores_dependencies_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE, queue=IgnoresDependencies)
    with pytest.raises(
        InvariantViolation,
        match=r"\[work-dependencies\] 'w-3' is queued ready while its dependency 'w-1' has "
        "not completed",
    ):
        check_work_dependencies(trace)


def test_a_queue_that_runs_an_item_whose_dependency_failed_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE, queue=ReleasesOnFailure)
    with pytest.raises(
        InvariantViolation,
        match=r"\[work-dependencies\] 'w-4' was assigned to 'w-agent-2' while its dependency "
        "'w-2' had ended failed",
    ):
        check_work_dependencies(trace)


def test_a_queue_that_never_cancels_dependents_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE, queue=NeverCancelsDependents)
    with pytest.raises(
        InvariantViolation, match=r"\[work-dependencies\] 'w-4' waits for 'w-2'.*must be cancelled"
    ):
        check_work_dependencies(trace)


def test_a_queue_that_never_releases_dependents_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE, queue=NeverReleasesDependents)
    with pytest.raises(
        InvariantViolation,
        match=r"\[work-dependencies\] 'w-3' still waits though its dependencies \['w-1'\] "
        "all completed",
    ):
        check_work_dependencies(trace)


def test_a_cancel_for_no_ended_dependency_is_caught() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE)
    log = list(trace.log)
    at = next(i for i, r in enumerate(log) if isinstance(r, SubmitApplied) and r.item_id == "w-3")
    log.insert(
        at + 1,
        WorkDependencyEnded(at=1.0, supervisor="", child_id="", item_id="w-3", reason="forged"),
    )
    with pytest.raises(
        InvariantViolation,
        match=r"\[work-dependencies\] 'w-3' was cancelled for a dependency \(forged\), but none",
    ):
        check_work_dependencies(attrs.evolve(trace, log=tuple(log)))


def test_a_refused_submit_is_recorded_and_the_run_goes_on() -> None:
    trace = run_schedule(RESILIENT, SCHEDULE, queue=NoDependencies)
    check_all(trace)
    refused = [r for r in trace.log if isinstance(r, SubmitRefused)]
    assert [r.submit.payload["n"] for r in refused] == [4, 5, 7]
    assert "NoDependencies does not support dependencies" in refused[0].error
    assert "refused" in trace.format()
    assert set(quiesced(trace).values()) == {"completed", "failed"}


def submit(**kw: Any) -> Submit:
    return Submit(1.0, "w", **kw)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"key": ""}, r"Submit.key must be a non-empty string.*got ''"),
        ({"key": "k" * 201}, r"Submit.key must be .* at most 200"),
        ({"key": 3}, r"Submit.key.*got 3\)"),
        ({"after": "w:a"}, r"Submit.after must be a sequence.*got 'w:a'.*after=\('worker:"),
        ({"after": ["a"]}, r"Submit.after names 'a'; name an earlier submit .* 'TYPE:KEY'"),
        ({"after": [":a"]}, r"Submit.after names ':a'"),
        ({"after": [3]}, r"Submit.after names 3;"),
        ({"after": [f"w:{n}" for n in range(101)]}, r"names 101 items; at most 100"),
    ],
)
def test_bad_keys_and_dependencies_are_invalid_schedules(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        submit(**kw)


@pytest.mark.parametrize(
    "work",
    [
        [Submit(1.0, "w", after=("w:a",))],
        [Submit(1.0, "w", after=("w:a",)), Submit(2.0, "w", key="a")],  # a later one
        [Submit(1.0, "v", key="a"), Submit(2.0, "w", after=("w:a",))],  # another type's
    ],
)
def test_after_must_name_an_earlier_keyed_submit(work: Iterable[Submit]) -> None:
    with pytest.raises(
        InvalidSchedule, match=r"after names 'w:a', which no earlier submit.*key='a'\)"
    ):
        Schedule(work=work)


def test_keys_and_dependencies_tell_submits_apart() -> None:
    assert submit(key="a") != submit()
    assert submit(after=["w:a"]) == submit(after=("w:a",))
    assert submit(after=["w:a"]) != submit()
    Schedule(work=[Submit(1.0, "w", key="a"), Submit(1.0, "w", after=["w:a"])])  # same time


# --------------------------------------------------------------------------------------
# The properties


@settings(max_examples=explore_examples(100), deadline=None)
@given(work_schedules(RESILIENT, hang=True, dependencies=True))
def test_dependencies_and_keys_hold_while_agents_keep_being_restarted(schedule: Schedule) -> None:
    trace = run_schedule(RESILIENT, schedule)
    check_all(trace)
    final = quiesced(trace)
    assert [] == [(i, s) for i, s in final.items() if s in ("queued", "assigned")]


@settings(max_examples=explore_examples(100), deadline=None)
@given(specs_and_work_schedules(max_depth=1, hang=True, dependencies=True))
def test_dependencies_and_keys_hold_on_random_trees(
    spec_and_schedule: tuple[Any, Schedule],
) -> None:
    check_all(run_schedule(*spec_and_schedule))
