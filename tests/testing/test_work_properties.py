"""supervisor.testing with work: simulated agents take and finish work under crash and
hang schedules, and the work invariants judge the queue and the work service.

Every example is one whole run (tree, submissions, crashes, hangs, settle, stop) under
one ``trio.run`` with ``MockClock(autojump_threshold=0)``. The ``TestChecksCatch...``
class shows each work check fires on a deliberately broken queue or trace.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable
from typing import Any, Literal

import attrs
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings

import supervisor.testing as testing
from strategies import Intensity, OneForAll, OneForOne, RestForOne
from supervisor import (
    ChildSpec,
    ItemStatus,
    MemoryWorkQueue,
    PoolSpec,
    SqliteWorkQueue,
    SupervisorSpec,
    Verdict,
    WorkItem,
)
from supervisor.testing import (
    Crash,
    Exit,
    Hang,
    InvalidSchedule,
    InvariantViolation,
    Kill,
    Schedule,
    SimWork,
    Submit,
    SubmitApplied,
    Trace,
    WireRecord,
    WorkSnapshot,
    agent_specs,
    agent_types,
    check_all,
    check_work,
    check_work_completions,
    check_work_deliveries,
    check_work_holders,
    check_work_outcomes,
    check_work_reclaim,
    run_schedule,
    sim_result,
    specs_and_work_schedules,
    work_schedules,
)


def explore_examples(n: int) -> int:
    """``n`` examples, or the count ``pytest --explore`` asks for (see tests/conftest.py)."""
    return int(os.environ.get("HUBVISOR_EXPLORE_EXAMPLES", n))


def agent(cid: str, agent_type: str = "w", **kw: Any) -> ChildSpec:
    return ChildSpec(id=cid, argv=["simulated"], agent_type=agent_type, **kw)


def pool(size: int = 2, **kw: Any) -> PoolSpec:
    template = ChildSpec(id="t", argv=["simulated"], heartbeat_timeout=3.0, **kw)
    return PoolSpec(agent_type="w", template=template, size=size)


# A pool of two watched agents that are always restarted.
RESILIENT = SupervisorSpec(name="root", children=[pool(2)], intensity=Intensity(1000, 1))


def final(trace: Trace) -> dict[str, testing.ItemState]:
    snaps = [r for r in trace.log if isinstance(r, WorkSnapshot) and r.final]
    assert snaps, "a run with work ends with a final work snapshot"
    return {s.id: s for s in snaps[-1].items}


def kinds(trace: Trace, item: str) -> list[str]:
    out = []
    for e in trace.events:
        if getattr(e, "item_id", None) == item:
            reason = getattr(e, "reason", None) if e.kind == "work_reclaimed" else None
            out.append(e.kind + (f":{reason}" if reason else ""))
    return out


# --------------------------------------------------------------------------------------
# The properties


class TestWorkInvariantsHold:
    @settings(max_examples=explore_examples(150), deadline=None)
    @given(specs_and_work_schedules(max_depth=2))
    def test_random_trees_and_schedules(self, spec_and_schedule: tuple[Any, Schedule]) -> None:
        spec, schedule = spec_and_schedule
        check_all(run_schedule(spec, schedule))

    @settings(max_examples=explore_examples(100), deadline=None)
    @given(specs_and_work_schedules(max_depth=1, hang=True))
    def test_random_trees_with_hangs(self, spec_and_schedule: tuple[Any, Schedule]) -> None:
        spec, schedule = spec_and_schedule
        check_all(run_schedule(spec, schedule))

    @settings(max_examples=explore_examples(100), deadline=None)
    @given(work_schedules(RESILIENT, hang=True))
    def test_nothing_is_lost_while_agents_keep_being_restarted(self, schedule: Schedule) -> None:
        """With agents that are always restarted, every item ends completed, failed or
        dead once the schedule quiesces, and the hub's stop leaves nothing assigned."""
        trace = run_schedule(RESILIENT, schedule)
        check_all(trace)

        quiesced = [r for r in trace.log if isinstance(r, WorkSnapshot) and r.quiesced]
        assert [] == [
            (s.id, s.status)
            for s in quiesced[-1].items
            if s.status not in ("completed", "failed", "dead")
        ]
        assert len(schedule.work) == len(quiesced[-1].items)


class TestWorkInvariantsHoldOnSqlite:
    """The same runs with :class:`~supervisor.SqliteWorkQueue`. Its writer runs in a
    worker thread, whose rounds end at real times: under the mock clock the order of
    tasks at one instant may differ from run to run (the traces of two runs of one
    example can differ in order, never in outcome), so these examples check invariants,
    not exact traces."""

    @settings(max_examples=explore_examples(50), deadline=None)
    @given(work_schedules(RESILIENT, hang=True))
    def test_nothing_is_lost_and_the_file_agrees(self, schedule: Schedule) -> None:
        """Every invariant holds, every item ends completed, failed or dead, and the file
        (read again after the stop) holds every item as the queue last had it."""
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
            quiesced = [r for r in trace.log if isinstance(r, WorkSnapshot) and r.quiesced]
            assert [] == [
                (s.id, s.status)
                for s in quiesced[-1].items
                if s.status not in ("completed", "failed", "dead")
            ]
            again = SqliteWorkQueue(state)
            try:
                kept = {i.id: (str(i.status), i.attempt, i.deliveries) for i in again.items()}
                assert again.opened is not None and again.opened.clean
            finally:
                again.close()
            assert {
                s.id: (s.status, s.attempt, s.deliveries) for s in final(trace).values()
            } == kept


# --------------------------------------------------------------------------------------
# Scenarios, exactly


class TestSimulatedAgents:
    def test_an_item_is_assigned_worked_on_and_completed(self) -> None:
        spec = SupervisorSpec(name="root", children=[agent("a")])
        trace = run_schedule(spec, Schedule(work=[Submit(1.0, "w", {"n": 7, "seconds": 2.5})]))

        check_all(trace)
        (done,) = final(trace).values()
        assert ("completed", 1, 1) == (done.status, done.attempt, done.deliveries)
        assert sim_result({"n": 7, "seconds": 2.5}, 1, "a") == done.result
        completed = next(e for e in trace.events if e.kind == "work_completed")
        assert 3.5 == completed.at
        words = [(r.sender, r.word) for r in trace.log if isinstance(r, WireRecord)]
        # STOP: the hub's stop at the end of the run tells the agent on its channel.
        expected = [("agent", "HELLO"), ("hub", "ASSIGN"), ("agent", "RESULT"), ("hub", "STOP")]
        assert expected == words

    def test_a_crash_mid_item_is_reclaimed_at_the_exit_and_done_after_the_restart(
        self,
    ) -> None:
        spec = SupervisorSpec(name="root", children=[agent("b", "q"), agent("a")])
        schedule = Schedule(
            crashes=[Crash(1.5, "a", Kill(signal.SIGKILL))],
            work=[Submit(1.0, "w", {"n": 1, "seconds": 2})],
        )
        trace = run_schedule(spec, schedule)

        check_all(trace)
        exited = next(e for e in trace.events if e.kind == "exited")
        reclaimed = next(e for e in trace.events if e.kind == "work_reclaimed")
        assert (1.5, "exit") == (exited.at, reclaimed.reason)  # type: ignore[attr-defined]
        item = final(trace)["w-1"]
        assert ("completed", 2, 2) == (item.status, item.attempt, item.deliveries)
        assert ["work_submitted", "work_assigned", "work_reclaimed:exit"] == kinds(trace, "w-1")[:3]

    def test_a_hang_mid_item_is_reclaimed_when_caught(self) -> None:
        # Both agents hang: whichever holds the item (the dispatch order of two agents
        # ready at the same instant is the scheduler's), its hang is the one that counts.
        schedule = Schedule(
            crashes=[Crash(2.0, f"w-agent-{n}", Hang()) for n in (1, 2)],
            work=[Submit(1.0, "w", {"n": 1, "seconds": 5})],
        )
        trace = run_schedule(RESILIENT, schedule)

        check_all(trace)
        hung = next(e for e in trace.events if e.kind == "hung")
        reclaimed = next(e for e in trace.events if e.kind == "work_reclaimed")
        assert hung.at == reclaimed.at == 5.0  # last heartbeat at 2, timeout 3
        assert "hang" == reclaimed.reason  # type: ignore[attr-defined]
        assert ("completed", 2) == (final(trace)["w-1"].status, final(trace)["w-1"].attempt)

    def test_the_hubs_stop_hands_held_items_back_without_spending_them(self) -> None:
        spec = SupervisorSpec(name="root", children=[agent("a")])
        trace = run_schedule(
            spec, Schedule(work=[Submit(1.0, "w", {"n": 1, "seconds": 1000})]), settle=5
        )

        check_all(trace)
        assert "work_reclaimed:handback" == kinds(trace, "w-1")[-1]
        item = final(trace)["w-1"]
        assert ("queued", 0) == (item.status, item.deliveries)

    def test_stale_and_repeated_results_are_refused(self) -> None:
        spec = SupervisorSpec(name="root", children=[agent("a")])
        trace = run_schedule(
            spec, Schedule(work=[Submit(0.0, "w", {"n": 1, "stale": True, "twice": True})])
        )

        check_all(trace)
        assert [
            "work_submitted",
            "work_assigned",
            "work_refused",  # the forged RESULT for attempt 2
            "work_completed",
            # The same RESULT again is refused too, but reported with the agent's next
            # refusal (one report per agent per 10 s: a flood cannot flood the bus).
        ] == kinds(trace, "w-1")
        assert sim_result({"n": 1, "stale": True, "twice": True}, 1, "a") == (
            final(trace)["w-1"].result
        )

    def test_failures_retry_until_the_deliveries_are_used_then_dead_letter(self) -> None:
        spec = SupervisorSpec(name="root", children=[agent("a")])
        schedule = Schedule(
            work=[
                Submit(0.0, "w", {"n": 1, "fail": 1}, max_deliveries=2),
                Submit(0.0, "w", {"n": 2, "fail": "retry"}, max_deliveries=2),
                Submit(0.0, "w", {"n": 3, "fail": "final"}),
            ]
        )
        trace = run_schedule(spec, schedule)

        check_all(trace)
        items = final(trace)
        assert ("completed", 2) == (items["w-1"].status, items["w-1"].attempt)
        assert ("dead", 2) == (items["w-2"].status, items["w-2"].deliveries)
        assert ("failed", 1) == (items["w-3"].status, items["w-3"].attempt)

    def test_an_item_that_kills_every_agent_dead_letters(self) -> None:
        schedule = Schedule(
            crashes=[Crash(t, f"w-agent-{n}") for t in (1.5, 3.0) for n in (1, 2)],
            work=[Submit(1.0, "w", {"n": 1, "seconds": 10}, max_deliveries=2)],
        )
        trace = run_schedule(RESILIENT, schedule)

        check_all(trace)
        assert [
            "work_submitted",
            "work_assigned",
            "work_reclaimed:exit",
            "work_assigned",
            "work_dead",
        ] == kinds(trace, "w-1")
        assert ("dead", 2) == (final(trace)["w-1"].status, final(trace)["w-1"].deliveries)

    def test_one_for_all_restarts_hand_back_and_reassign(self) -> None:
        """A sibling's crash stops the holder for a restart: it hands its item back, and
        the item is finished after the restart."""
        spec = SupervisorSpec(
            name="root",
            strategy=OneForAll(),
            intensity=Intensity(10, 10),
            children=[agent("a"), agent("b", agent_type="q")],
        )
        schedule = Schedule(
            crashes=[Crash(1.5, "b", Exit(1))], work=[Submit(1.0, "w", {"n": 1, "seconds": 2})]
        )
        trace = run_schedule(spec, schedule)

        check_all(trace)
        assert "work_reclaimed:handback" in kinds(trace, "w-1")
        assert ("completed", 1) == (final(trace)["w-1"].status, final(trace)["w-1"].deliveries)

    def test_run_schedule_takes_work_and_a_queue_factory(self) -> None:
        made: list[MemoryWorkQueue] = []

        def queue() -> MemoryWorkQueue:
            made.append(MemoryWorkQueue())
            return made[-1]

        spec = SupervisorSpec(name="root", children=[agent("a")])
        trace = run_schedule(
            spec,
            [Crash(5.0, "a")],
            work=[Submit(1.0, "w", {"n": 1})],
            queue=queue,
            agent_work=SimWork(duration=0.5),
        )

        check_all(trace)
        assert 1 == len(made)
        assert "completed" == made[0].get("w-1").status
        assert 1.5 == next(e.at for e in trace.events if e.kind == "work_completed")
        applied = next(r for r in trace.log if isinstance(r, SubmitApplied))
        assert ("w-1", 3) == (applied.item_id, applied.max_deliveries)

    def test_runs_without_work_are_unchanged(self) -> None:
        """No work: no agent messages, no work snapshots, and the work checks are skipped."""
        spec = SupervisorSpec(name="root", children=[agent("a", heartbeat_timeout=3.0)])
        trace = run_schedule(spec, [Crash(1.0, "a")])

        assert not trace.has_work
        assert not [r for r in trace.log if isinstance(r, WireRecord | WorkSnapshot)]
        check_all(trace)

    def test_same_inputs_same_trace(self) -> None:
        spec = SupervisorSpec(name="root", children=[pool(3), agent("x", heartbeat_timeout=1.5)])
        schedule = Schedule(
            crashes=[
                Crash(1.0, "w-agent-2"),
                Crash(1.0, "x", Hang()),
                Crash(2.25, "w-agent-1", Hang()),
                Crash(3.0, "w-agent-3", Kill(signal.SIGKILL)),
            ],
            stubborn={"w-agent-1"},
            work=[Submit(at, "w", {"n": n, "seconds": 1.5}) for n, at in enumerate([0, 1, 1, 2])],
        )
        first = run_schedule(spec, schedule, seed=3)

        for _ in range(3):
            again = run_schedule(spec, schedule, seed=3)
            assert first.format() == again.format()
            assert first.log == again.log
        check_all(first)

    def test_bad_submissions_are_invalid_schedules(self) -> None:
        with pytest.raises(InvalidSchedule, match="Submit.at"):
            Submit(-1.0, "w")
        with pytest.raises(InvalidSchedule, match="agent_type"):
            Submit(1.0, "")
        with pytest.raises(InvalidSchedule, match="must be JSON"):
            Submit(1.0, "w", {1, 2})
        with pytest.raises(InvalidSchedule, match="max_deliveries"):
            Submit(1.0, "w", max_deliveries=0)
        with pytest.raises(InvalidSchedule, match="Schedule.work"):
            Schedule(work=[Crash(1.0, "a")])  # type: ignore[list-item]
        with pytest.raises(InvalidSchedule, match="SimWork.duration"):
            SimWork(duration=-1)
        assert Submit(1.0, "w", {"a": [1]}) == Submit(1.0, "w", {"a": [1]})
        assert 2.0 == Schedule([Crash(1.0, "a")], work=[Submit(2.0, "w")]).end


def test_agent_specs_give_every_worker_a_type_and_the_channel() -> None:
    spec = find(agent_specs(max_depth=1), lambda s: len(agent_types(s)) > 1)

    def workers(s: Any) -> list[ChildSpec]:
        if isinstance(s, ChildSpec):
            return [s]
        if isinstance(s, PoolSpec):
            return [s.member(1)]
        return [w for c in s.children for w in workers(c)]

    assert all(w.agent_type is not None and w.notify for w in workers(spec))


# --------------------------------------------------------------------------------------
# The checks are not vacuous


class ForgetsToReclaim(MemoryWorkQueue):
    """Never takes an item back from a gone agent."""

    def reclaim(
        self, agent: str, reason: Literal["exit", "hang", "stop", "unreachable"], now: float
    ) -> Verdict:
        return Verdict(False, "forgot")


class AssignsWithoutDequeuing(MemoryWorkQueue):
    """Hands the oldest item out but leaves it at the head of the queue."""

    def assign(self, agent_type: str, agent: str, now: float) -> WorkItem | None:
        item = super().assign(agent_type, agent, now)
        if item is not None:
            self._queues[agent_type].appendleft(item.id)
        return item


class Unfenced(MemoryWorkQueue):
    """Takes any answer naming an item the agent was given, current or not."""

    def _fence(self, item_id: str, attempt: int, agent: str) -> WorkItem | str:
        item = self._items.get(item_id)
        return item if item is not None else f"no item {item_id!r}"


class NeverDeadLetters(MemoryWorkQueue):
    """Reclaims by queueing again whatever the deliveries used."""

    def reclaim(
        self, agent: str, reason: Literal["exit", "hang", "stop", "unreachable"], now: float
    ) -> Verdict:
        item = self.held_by(agent)
        if item is None:
            return Verdict(False, "holds nothing")
        self._release(item, agent, f"reclaimed:{reason}", reason, now)
        self._requeue(item, front=True)
        return Verdict(True, item=item)


class DropsReclaimed(MemoryWorkQueue):
    """Marks a reclaimed item queued but never puts it back in line."""

    def _requeue(self, item: WorkItem, *, front: bool) -> None:
        if item.history and item.history[-1].outcome.startswith("reclaimed"):
            item.status = ItemStatus.QUEUED
            return
        super()._requeue(item, front=front)


class RefundsCrashes(MemoryWorkQueue):
    """Counts a crash like a graceful stop: the delivery is given back."""

    def reclaim(
        self, agent: str, reason: Literal["exit", "hang", "stop", "unreachable"], now: float
    ) -> Verdict:
        return super().reclaim(agent, "stop" if reason == "exit" else reason, now)


# Both agents are killed mid-item, so the holder is killed whichever of the two agents,
# ready at the same instant, the scheduler let the dispatcher see first.
CRASH_MID_ITEM = Schedule(
    crashes=[Crash(1.5, f"w-agent-{n}", Kill(signal.SIGKILL)) for n in (1, 2)],
    work=[Submit(1.0, "w", {"n": 1, "seconds": 2})],
)


def broken(queue: Callable[[], MemoryWorkQueue], schedule: Schedule = CRASH_MID_ITEM) -> Trace:
    return run_schedule(RESILIENT, schedule, queue=queue)


class TestChecksCatchBrokenRuntimes:
    def test_a_queue_that_forgets_to_reclaim(self) -> None:
        trace = broken(ForgetsToReclaim)

        with pytest.raises(InvariantViolation, match=r"\[work-reclaim\] 'w-1' was not reclaimed"):
            check_work_reclaim(trace)
        with pytest.raises(InvariantViolation, match=r"\[work-outcomes\].*lost"):
            check_work_outcomes(trace)

    def test_a_queue_that_hands_one_item_to_two_agents(self) -> None:
        schedule = Schedule(work=[Submit(1.0, "w", {"n": 1, "seconds": 2})])

        with pytest.raises(InvariantViolation, match=r"\[work-holders\] 'w-1' was assigned to"):
            check_work_holders(broken(AssignsWithoutDequeuing, schedule))

    def test_a_queue_that_completes_twice(self) -> None:
        schedule = Schedule(work=[Submit(1.0, "w", {"n": 1, "twice": True})])

        with pytest.raises(InvariantViolation, match=r"\[work-completions\].*completed again"):
            check_work_completions(broken(Unfenced, schedule))

    def test_a_queue_that_takes_a_stale_result(self) -> None:
        schedule = Schedule(work=[Submit(1.0, "w", {"n": 1, "stale": True})])

        with pytest.raises(InvariantViolation, match=r"\[work-completions\].*stale answer"):
            check_work_completions(broken(Unfenced, schedule))

    def test_a_queue_that_never_dead_letters(self) -> None:
        schedule = Schedule(
            crashes=[Crash(t, f"w-agent-{n}") for t in (1.5, 3.0) for n in (1, 2)],
            work=[Submit(1.0, "w", {"n": 1, "seconds": 10}, max_deliveries=2)],
        )

        with pytest.raises(InvariantViolation, match=r"\[work-deliveries\].*dead-lettered"):
            check_work_deliveries(broken(NeverDeadLetters, schedule))

    def test_a_queue_that_refunds_crashes(self) -> None:
        # (caught while the item waits out its retry delay: one delivery short)
        with pytest.raises(InvariantViolation, match=r"\[work-deliveries\] the queue counts \d"):
            check_work_deliveries(broken(RefundsCrashes))

    def test_a_queue_that_loses_reclaimed_items(self) -> None:
        with pytest.raises(InvariantViolation, match=r"\[work-outcomes\] 'w-1' waits in the"):
            check_work_outcomes(broken(DropsReclaimed))

    def test_a_reclaim_that_comes_late(self) -> None:
        """A trace whose reclaim is published a moment after the exit is caught."""
        trace = run_schedule(RESILIENT, CRASH_MID_ITEM)
        check_work(trace)
        log = [
            attrs.evolve(r, at=r.at + 0.25) if r.kind == "work_reclaimed" else r for r in trace.log
        ]

        with pytest.raises(InvariantViolation, match=r"\[work-reclaim\].*not reclaimed when"):
            check_work_reclaim(attrs.evolve(trace, log=tuple(log)))

    def test_a_completed_result_that_changes(self) -> None:
        trace = run_schedule(RESILIENT, CRASH_MID_ITEM)
        log = [
            attrs.evolve(r, items=tuple(attrs.evolve(s, result="other") for s in r.items))
            if isinstance(r, WorkSnapshot) and r.final
            else r
            for r in trace.log
        ]

        with pytest.raises(InvariantViolation, match=r"holds the result 'other'"):
            check_work_completions(attrs.evolve(trace, log=tuple(log)))

    def test_random_schedules_find_the_forgotten_reclaim(self) -> None:
        """Over random trees and schedules, the broken queue is found and shrunk to one
        crash of an agent holding one item."""

        def fails(spec_and_schedule: tuple[SupervisorSpec, Schedule]) -> bool:
            spec, schedule = spec_and_schedule
            try:
                check_work_reclaim(run_schedule(spec, schedule, queue=ForgetsToReclaim))
            except InvariantViolation:
                return True
            return False

        spec, schedule = find(
            specs_and_work_schedules(max_depth=1, max_crashes=4, max_items=3),
            fails,
            settings=settings(
                max_examples=500,
                deadline=None,
                phases=[Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
            ),
        )
        assert 1 == len(schedule.crashes) and 1 == len(schedule.work)


# --------------------------------------------------------------------------------------
# Found by these tools


def test_an_agent_stopped_for_a_restart_is_not_given_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One-for-all: ``b`` crashes, so ``a`` (holding an item, taking 0.5 s to exit, like
    a BaseAgent finishing up) is stopped for the restart. It hands its item back, as a
    stopping BaseAgent does, and hands back any ASSIGN it gets while stopping. The hub
    must not assign to it again (it did, in a loop that never let the virtual clock
    advance; cut here after 20 rounds by making the channel look broken)."""
    import trio

    sent_while_stopping: list[str] = []
    send = testing.SimulatedNotify.send_nowait

    def guarded(self: testing.SimulatedNotify, message: Any, *, verify: bool = True) -> bool:
        if message.kind == "assign" and self._stopping:
            sent_while_stopping.append(message.value)
            if len(sent_while_stopping) >= 20:
                raise trio.BrokenResourceError("cut the loop")
        return send(self, message, verify=verify)

    monkeypatch.setattr(testing.SimulatedNotify, "send_nowait", guarded)
    spec = SupervisorSpec(
        name="root",
        strategy=OneForAll(),
        intensity=Intensity(10, 10),
        children=[agent("a"), agent("b", "q")],
    )
    trace = run_schedule(
        spec,
        Schedule(crashes=[Crash(1.5, "b")], work=[Submit(1.0, "w", {"n": 1, "seconds": 5})]),
        behaviours={"a": testing.SimBehaviour(work=SimWork(), ready_after=0.0, stop_delay=0.5)},
    )

    assert [] == sent_while_stopping
    check_all(trace)


def test_two_members_of_a_rest_for_one_pool_hung_at_once() -> None:
    """Found exploring (shrunk by Hypothesis): both members of a rest-for-one pool are
    found hung and exit at the same instant. The first one's restart leaves the second
    (whose exit the pool has not handled yet) to its own exit report, which restarts it
    and counts against the intensity, as the checker expects."""

    def child(cid: str) -> ChildSpec:
        return ChildSpec(id=cid, argv=["sim"], shutdown=1.0, start_period=1.0, agent_type="w")

    def pool(agent_type: str, size: int, **kw: Any) -> PoolSpec:
        template = ChildSpec(id="t", argv=["sim"], shutdown=1.0, start_period=1.0, **kw)
        return PoolSpec(
            agent_type=agent_type,
            template=template,
            size=size,
            max_size=size,
            strategy=RestForOne() if size == 2 else OneForOne(),
            intensity=Intensity(1 if size == 2 else 0, 0.5),
        )

    spec = SupervisorSpec(
        name="root",
        intensity=Intensity(0, 0.5),
        children=[
            child("c1"),
            pool("p1", 1),
            pool("p2", 2, heartbeat_timeout=3.0),
            SupervisorSpec(
                name="s1",
                intensity=Intensity(0, 0.5),
                children=[child(c) for c in ("c2", "c3", "c4", "c5")],
            ),
        ],
    )
    schedule = Schedule(
        crashes=[Crash(0.0, "p2-agent-1", how=Hang()), Crash(0.0, "p2-agent-2", how=Hang())],
        work=[Submit(0.0, "p1", {"n": 0})],
    )
    check_all(run_schedule(spec, schedule))
