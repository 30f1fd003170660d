"""MemoryWorkQueue (and SqliteWorkQueue) against a small, independent model of issue 8's delivery guarantees.

:class:`WorkQueueMachine` drives one :class:`~supervisor.MemoryWorkQueue` with two agent
types and three agents (``worker-1``, ``worker-2``, ``qc-1``). Rules: submit (max
deliveries 1..4); assign to an idle agent; answer the held item (RESULT, FAIL with or
without retry, HANDBACK, PROGRESS with a checkpoint); crash (exit, hang: the delivery is
spent) and stop (stop, unreachable: refunded), after which a fresh incarnation comes back
under the same agent id — the case fencing exists for; retry a dead or failed item;
``late_answer`` (the same agent id answering an older attempt of the item it holds now)
and ``refused`` (an old or future attempt, an item another agent holds, an unknown or
forgotten item, an assignment to a busy agent, a retry of a live item, a reclaim of an
idle agent): each must be refused and change nothing observable; ``quiesce``: every
agent finishes what it holds and then drains every queue — every submitted item ends
completed, failed or dead, none lost.

The model keeps, per item: status, attempt (= the number of assignments), the deliveries
spent (an assignment spends one; a hand-back, stop or unreachable refunds it; exit, hang
and FAIL keep it), the agent given each attempt, the released attempts in order, the last
checkpoint reported and, once completed, the result of its final attempt; per type, the
queue in the order the next assignments must follow (new and retried items at the back,
re-queued ones at the front); which finished items are kept. Every step is checked
against it, and the invariants run after each step. :class:`BoundedWorkQueueMachine` is
the same with ``keep_finished=3``. :class:`SqliteWorkQueueMachine` and its bounded twin
run the same model against :class:`~supervisor.SqliteWorkQueue`, with a flush and a
reopen (after a flush, or a crash that loses what was not written) as rules.

The plain tests after the machines cover FIFO order, the keep_finished bound, the errors
a user sees, and the fencing and dead-letter stories of issue 8 as short scripts.
"""

from __future__ import annotations

import copy
import itertools
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from supervisor import ItemStatus, MemoryWorkQueue, SqliteWorkQueue, WorkItem, WorkQueue
from supervisor._errors import ControlError
from supervisor.work import Verdict
from supervisor.work.sqlite._codec import RESTART_REASON

QUEUED = ItemStatus.QUEUED
ASSIGNED = ItemStatus.ASSIGNED
COMPLETED = ItemStatus.COMPLETED
FAILED = ItemStatus.FAILED
DEAD = ItemStatus.DEAD
CANCELLED = ItemStatus.CANCELLED
FINAL = (COMPLETED, FAILED, DEAD, CANCELLED)

TYPES = ("worker", "qc")
AGENTS = {"worker-1": "worker", "worker-2": "worker", "qc-1": "qc"}
REASONS = ("exit", "hang", "stop", "unreachable")
SPENDS = {"exit": True, "hang": True, "stop": False, "unreachable": False}
KINDS = ("result", "fail", "handback", "progress")
HISTORY_KEPT = 20  # attempts an item keeps in its history (the oldest are dropped)

CHECKPOINTS = st.one_of(
    st.none(), st.integers(0, 50), st.dictionaries(st.just("at"), st.integers())
)


@attrs.define
class ModelItem:
    id: str
    agent_type: str
    payload: Any
    max_deliveries: int
    status: ItemStatus = QUEUED
    attempt: int = 0  # the number of assignments so far
    deliveries: int = 0  # spent deliveries since submit or the last retry
    agent: str | None = None
    holders: dict[int, str] = attrs.field(factory=dict)  # attempt -> agent given it
    history: list[tuple[int, str, str, str]] = attrs.field(factory=list)
    checkpoint: Any = None
    progress: Any = None
    result: Any = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    key: str | None = None
    after: list[str] = attrs.field(factory=list)
    waiting: list[str] = attrs.field(factory=list)  # those of after not completed yet


@attrs.define
class ModelAgent:
    name: str
    agent_type: str
    incarnation: int = 1
    holding: str | None = None


def snapshot(q: WorkQueue) -> Any:
    """Everything observable about the queue, to check that a refused step changed nothing."""
    items = []
    for item in q.items():
        state = item.to_json()
        state["checkpoint"] = item.checkpoint
        items.append(state)
    held = {a: (h.id if (h := q.held_by(a)) is not None else None) for a in AGENTS}
    depths = {t: q.depth(t) for t in TYPES}
    return items, held, depths


class WorkQueueMachine(RuleBasedStateMachine):
    KEEP: int | None = None  # the queue's keep_finished (None: the default, never reached)

    def __init__(self) -> None:
        super().__init__()
        self.q: WorkQueue = self.make_queue()
        self.finished: list[str] = []  # finished items kept, oldest first
        self.forgotten: dict[str, tuple[int, str]] = {}  # id -> (last attempt, its agent)
        self.now = 0.0
        self.items: dict[str, ModelItem] = {}
        self.queues: dict[str, list[str]] = {t: [] for t in TYPES}  # front first
        self.agents = {name: ModelAgent(name, t) for name, t in AGENTS.items()}
        self.seen_attempt: dict[str, int] = {}
        self.completed: dict[str, tuple[int, Any]] = {}  # id -> (final attempt, result)
        self.tokens = itertools.count(1)
        self.steps_since_quiesce = 0
        self.ever: set[str] = set()  # every id handed out: none is handed out twice
        self.completed_ever: set[str] = set()  # ids that completed (kept or not)

    def make_queue(self) -> WorkQueue:
        """The queue under test."""
        return MemoryWorkQueue() if self.KEEP is None else MemoryWorkQueue(keep_finished=self.KEEP)

    # helpers ---------------------------------------------------------------------------

    def tick(self) -> float:
        self.steps_since_quiesce += 1
        self.now += 1.0
        return self.now

    def idle_agents(self) -> list[str]:
        return [a.name for a in self.agents.values() if a.holding is None]

    def busy_agents(self) -> list[str]:
        return [a.name for a in self.agents.values() if a.holding is not None]

    def release(self, m: ModelItem, agent: str, outcome: str, reason: str) -> None:
        m.history.append((m.attempt, agent, outcome, reason))
        m.agent = None
        self.agents[agent].holding = None

    def finish(self, m: ModelItem, status: ItemStatus, now: float, cascade: bool = True) -> None:
        m.status = status
        m.finished_at = now
        if status is COMPLETED:
            self.completed_ever.add(m.id)
        self.finished.append(m.id)
        while self.KEEP is not None and len(self.finished) > self.KEEP:
            old = self.items.pop(self.finished.pop(0))
            self.completed.pop(old.id, None)
            if old.attempt in old.holders:  # never assigned (cancelled queued): no answer
                self.forgotten[old.id] = (old.attempt, old.holders[old.attempt])
        if cascade:
            self.settle(m, now)

    def real_error(self, m: ModelItem) -> str | None:
        """The queue's error of ``m`` (its wording), or the model's once it was pruned."""
        try:
            return self.q.get(m.id).error
        except ControlError:
            return m.error

    def settle(self, first: ModelItem, now: float) -> None:
        """``first`` ended: its dependents stop waiting for it, or are cancelled, and
        theirs in turn (first ended first)."""
        todo = [first]
        while todo:
            dep = todo.pop(0)
            for m in list(self.items.values()):
                if m.status is QUEUED and dep.id in m.waiting:
                    self.settle_one(dep, m, now, todo)

    def settle_one(self, dep: ModelItem, m: ModelItem, now: float, todo: list[ModelItem]) -> None:
        if dep.status is COMPLETED:
            m.waiting.remove(dep.id)
            if not m.waiting:
                event("a dependent was released")
                self.queues[m.agent_type].append(m.id)
        else:
            event("a dependency's end cancelled its dependent")
            m.waiting = []
            real = self.real_error(dep)  # the queue's wording of the dep's own end
            why = f": {real}" if real else ""
            m.error = f"dependency {dep.id} ended {dep.status}{why}"[:500]
            self.finish(m, CANCELLED, now, cascade=False)
            todo.append(m)

    def requeue_front(self, m: ModelItem) -> None:
        m.status = QUEUED
        self.queues[m.agent_type].insert(0, m.id)

    def unchanged(self, action: Callable[[], Any]) -> Any:
        before = snapshot(self.q)
        out = action()
        assert snapshot(self.q) == before, "a refused step changed the queue"
        return out

    def do_assign(self, agent: str) -> WorkItem | None:
        a = self.agents[agent]
        queue = self.queues[a.agent_type]
        expected = queue[0] if queue else None
        now = self.tick()
        got = self.q.assign(a.agent_type, agent, now)
        if expected is None:
            assert got is None
            return None
        assert got is not None, f"{expected} was queued for {a.agent_type}"
        assert got.id == expected, f"assigned {got.id}, but {expected} was first in line"
        m = self.items[expected]
        queue.pop(0)
        before = m.deliveries
        m.status, m.agent, m.started_at = ASSIGNED, agent, now
        m.progress = None  # each attempt reports its own progress
        m.attempt += 1
        m.deliveries += 1
        m.holders[m.attempt] = agent
        a.holding = m.id
        assert got.status is ASSIGNED
        assert got.attempt == m.attempt
        assert got.agent == agent
        assert got.deliveries == before + 1 <= got.max_deliveries
        # the next attempt carries the last checkpoint reported by any earlier one
        assert got.checkpoint == m.checkpoint
        assert got.payload == m.payload
        # no item runs before its dependencies completed
        assert all(d in self.completed_ever for d in got.after), (got.id, got.after)
        assert not got.waiting_on
        return got

    def do_answer(
        self, agent: str, kind: str, *, retry: bool = True, checkpoint: Any = None
    ) -> None:
        a = self.agents[agent]
        assert a.holding is not None
        m = self.items[a.holding]
        attempt = m.attempt
        before = m.deliveries
        now = self.tick()
        verdict: Verdict
        if kind == "result":
            result = {"item": m.id, "attempt": attempt, "token": next(self.tokens)}
            verdict = self.q.complete(m.id, attempt, agent, result, now)
            self.release(m, agent, "completed", "")
            m.result = result
            m.error = None  # an earlier attempt's failure is history once it completes
            self.completed[m.id] = (attempt, result)
            self.finish(m, COMPLETED, now)
        elif kind == "fail":
            error = f"boom {next(self.tokens)}"
            verdict = self.q.fail(m.id, attempt, agent, error, retry, now)
            self.release(m, agent, "failed", error)
            m.error = error
            if not retry:
                self.finish(m, FAILED, now)
            elif m.deliveries >= m.max_deliveries:
                self.finish(m, DEAD, now)
                # dead: the error sums up every delivery spent, this failure last
                m.error = self.q.get(m.id).error
                assert m.error is not None
                assert m.error.startswith(f"used all {m.max_deliveries} deliveries: ")
                assert m.error.endswith(f"failed ({error})")
            else:
                self.requeue_front(m)
        elif kind == "handback":
            verdict = self.q.hand_back(m.id, attempt, agent, now)
            self.release(m, agent, "handed_back", "")
            m.deliveries -= 1
            self.requeue_front(m)
        else:
            progress = {"done": next(self.tokens)}
            verdict = self.q.progress(m.id, attempt, agent, progress, checkpoint)
            m.progress = progress
            if checkpoint is not None:
                m.checkpoint = checkpoint
        assert verdict.accepted, verdict.reason
        assert verdict.reason == ""
        assert verdict.item is self.q.get(m.id)
        got = verdict.item
        assert got.status is m.status
        if kind == "handback":
            assert got.deliveries == before - 1, "a hand-back must not spend a delivery"
        else:
            assert got.deliveries == before, f"{kind} changed the deliveries"

    # rules -----------------------------------------------------------------------------

    @initialize(
        first=st.lists(
            st.tuples(st.sampled_from(TYPES), st.integers(1, 4), st.integers(0, 9)),
            min_size=1,
            max_size=4,
        )
    )
    def some_work(self, first: list[tuple[str, int, int]]) -> None:
        for agent_type, max_deliveries, n in first:
            self.submit(agent_type, max_deliveries, n)

    @precondition(lambda self: sum(map(len, self.queues.values())) < 4)
    @rule(
        agent_type=st.sampled_from(TYPES),
        max_deliveries=st.integers(1, 4),
        n=st.integers(0, 9),
    )
    def submit(self, agent_type: str, max_deliveries: int, n: int) -> None:
        payload = {"n": n, "seq": next(self.tokens)}
        now = self.tick()
        item = self.q.submit(
            agent_type, payload, max_deliveries=max_deliveries, source="test", now=now
        )
        assert item.id not in self.ever, f"id {item.id} reused"
        self.ever.add(item.id)
        assert (item.status, item.attempt, item.deliveries) == (QUEUED, 0, 0)
        assert item.agent is None and item.agent_type == agent_type
        assert item.max_deliveries == max_deliveries and item.created_at == now
        self.items[item.id] = ModelItem(item.id, agent_type, payload, max_deliveries)
        self.queues[agent_type].append(item.id)

    @precondition(lambda self: sum(m.status is QUEUED for m in self.items.values()) < 6)
    @rule(
        agent_type=st.sampled_from(TYPES),
        key=st.sampled_from([None, "a", "b"]),
        data=st.data(),
    )
    def submit_controlled(self, agent_type: str, key: str | None, data: st.DataObject) -> None:
        """A submit with an idempotency key and/or dependencies on kept items: a key
        never creates two kept items of a type; the item waits for its dependencies."""
        kept = list(self.items)
        after = data.draw(
            st.lists(st.sampled_from(kept), max_size=2, unique=True) if kept else st.just([]),
            label="after",
        )
        payload = {"seq": next(self.tokens)}
        now = self.tick()
        existing = next(
            (
                m
                for m in self.items.values()
                if key is not None and (m.agent_type, m.key) == (agent_type, key)
            ),
            None,
        )
        if existing is not None:
            item = self.unchanged(
                lambda: self.q.submit(
                    agent_type,
                    payload,
                    max_deliveries=2,
                    source="test",
                    now=now,
                    key=key,
                    after=after,
                )  # type: ignore[call-arg]
            )
            assert item.id == existing.id, "a key created a second item"
            event("a key answered the kept item")
            return
        item = self.q.submit(
            agent_type, payload, max_deliveries=2, source="test", now=now, key=key, after=after
        )  # type: ignore[call-arg]
        assert item.id not in self.ever, f"id {item.id} reused"
        self.ever.add(item.id)
        m = ModelItem(item.id, agent_type, payload, 2, key=key, after=list(after))
        self.items[item.id] = m
        deps = [self.items[d] for d in after]
        bad = next((d for d in deps if d.status in (FAILED, DEAD, CANCELLED)), None)
        if bad is not None:
            real = self.real_error(bad)
            why = f": {real}" if real else ""
            m.error = f"dependency {bad.id} ended {bad.status}{why}"[:500]
            self.finish(m, CANCELLED, now)
            return
        m.waiting = [d.id for d in deps if d.status is not COMPLETED]
        if not m.waiting:
            self.queues[agent_type].append(item.id)

    def can_take(self) -> list[str]:
        return [a for a in self.idle_agents() if self.queues[AGENTS[a]]]

    @precondition(lambda self: self.can_take())
    @rule(data=st.data())
    def assign(self, data: st.DataObject) -> None:
        """An idle agent takes the first item of its type (an empty queue: see quiesce)."""
        agent = data.draw(st.sampled_from(self.can_take()), label="agent")
        self.do_assign(agent)

    @precondition(lambda self: self.busy_agents())
    @rule(data=st.data())
    def result(self, data: st.DataObject) -> None:
        agent = data.draw(st.sampled_from(self.busy_agents()), label="agent")
        self.do_answer(agent, "result")

    @precondition(lambda self: self.busy_agents())
    @rule(data=st.data(), retry=st.booleans())
    def fail(self, data: st.DataObject, retry: bool) -> None:
        agent = data.draw(st.sampled_from(self.busy_agents()), label="agent")
        self.do_answer(agent, "fail", retry=retry)

    @precondition(lambda self: self.busy_agents())
    @rule(data=st.data())
    def hand_back(self, data: st.DataObject) -> None:
        agent = data.draw(st.sampled_from(self.busy_agents()), label="agent")
        self.do_answer(agent, "handback")

    @precondition(lambda self: self.busy_agents())
    @rule(data=st.data(), checkpoint=CHECKPOINTS)
    def progress(self, data: st.DataObject, checkpoint: Any) -> None:
        agent = data.draw(st.sampled_from(self.busy_agents()), label="agent")
        self.do_answer(agent, "progress", checkpoint=checkpoint)

    @rule(
        data=st.data(),
        what=st.sampled_from(["answer", "assign", "retry", "reclaim"]),
        kind=st.sampled_from(KINDS),
        retry=st.booleans(),
        reason=st.sampled_from(REASONS),
    )
    def refused(self, data: st.DataObject, what: str, kind: str, retry: bool, reason: str) -> None:
        """Something the queue must refuse, changing nothing: a stale answer, an
        assignment to a busy agent, a retry of a live item, a reclaim of an idle agent."""
        busy, idle = self.busy_agents(), self.idle_agents()
        live = [i for i in self.items if i not in self.ended()]
        if what == "assign" and busy:
            agent = data.draw(st.sampled_from(busy), label="agent")
            held = self.agents[agent].holding

            def assign() -> None:
                with pytest.raises(ControlError, match=f"already holds {held!r}"):
                    self.q.assign(AGENTS[agent], agent, self.now)

            self.unchanged(assign)
        elif what == "retry" and live:
            item_id = data.draw(st.sampled_from(live), label="item")
            status = self.items[item_id].status

            def retry_it() -> None:
                with pytest.raises(ControlError, match=f"{item_id!r} is {status}; only dead"):
                    self.q.retry(item_id, self.now)

            self.unchanged(retry_it)
        elif what == "reclaim" and idle:
            agent = data.draw(st.sampled_from(idle), label="agent")
            verdict = self.unchanged(lambda: self.q.reclaim(agent, reason, self.now))  # type: ignore[arg-type]
            assert not verdict.accepted and "holds nothing" in verdict.reason
        else:
            self.stale_answer(data, kind, retry)

    def own_old_attempts(self) -> list[tuple[str, int, str]]:
        """(item, attempt, agent): an older attempt of an item the same agent id holds now
        — a late answer from an incarnation whose item was reclaimed and given back."""
        return [
            (m.id, attempt, holder)
            for m in self.items.values()
            if m.status is ASSIGNED
            for attempt, holder in m.holders.items()
            if attempt < m.attempt and holder == m.agent
        ]

    @precondition(lambda self: self.own_old_attempts())
    @rule(data=st.data(), kind=st.sampled_from(KINDS), retry=st.booleans())
    def late_answer(self, data: st.DataObject, kind: str, retry: bool) -> None:
        stale = data.draw(st.sampled_from(self.own_old_attempts()), label="stale")
        self.send_stale(*stale, "own old attempt", kind, retry)

    def stale_answer(self, data: st.DataObject, kind: str, retry: bool) -> None:
        # what makes it stale -> [(item id, attempt, agent)]
        stale: dict[str, list[tuple[str, int, str]]] = {"unknown": [("worker-0", 1, "worker-1")]}
        for item_id, (attempt, holder) in self.forgotten.items():
            stale.setdefault("forgotten", []).append((item_id, attempt, holder))
        for m in self.items.values():
            for attempt, holder in m.holders.items():
                if m.status is ASSIGNED and attempt == m.attempt:
                    continue
                # the sharpest case: the same agent id, now holding a newer attempt
                why = "own old attempt" if holder == m.agent else "old attempt"
                stale.setdefault(why, []).append((m.id, attempt, holder))
            if m.status is ASSIGNED:
                assert m.agent is not None
                stale.setdefault("future attempt", []).append((m.id, m.attempt + 1, m.agent))
                for other in AGENTS:
                    if other != m.agent:
                        stale.setdefault("not held", []).append((m.id, m.attempt, other))
        if len(stale) > 1:
            del stale["unknown"]  # only when nothing sharper can be sent: it is easy
        why = data.draw(st.sampled_from(sorted(stale)), label="why")
        item_id, attempt, agent = data.draw(st.sampled_from(stale[why]), label="stale")
        self.send_stale(item_id, attempt, agent, why, kind, retry)

    def send_stale(
        self, item_id: str, attempt: int, agent: str, why: str, kind: str, retry: bool
    ) -> None:
        now = self.now

        def send() -> Verdict:
            if kind == "result":
                return self.q.complete(item_id, attempt, agent, "forged", now)
            if kind == "fail":
                return self.q.fail(item_id, attempt, agent, "forged", retry, now)
            if kind == "handback":
                return self.q.hand_back(item_id, attempt, agent, now)
            return self.q.progress(item_id, attempt, agent, "forged", "forged")

        verdict = self.unchanged(send)
        assert not verdict.accepted, f"{why} {kind} for {item_id} attempt {attempt} taken"
        assert verdict.item is None
        expected = {
            "unknown": "no item",
            "forgotten": "no item",
            "old attempt": "stale",
            "own old attempt": "stale",
            "future attempt": "stale",
            "not held": "held by",
        }[why]
        assert expected in verdict.reason, verdict.reason
        if why in ("unknown", "forgotten"):
            with pytest.raises(ControlError, match="`hubvisor work list`"):
                self.q.get(item_id)

    @precondition(lambda self: self.busy_agents())
    @rule(data=st.data(), reason=st.sampled_from(["exit", "hang"]))
    def crash(self, data: st.DataObject, reason: str) -> None:
        """The agent exits or hangs: the delivery is spent."""
        self.reclaim(data, reason)

    @precondition(lambda self: self.busy_agents())
    @rule(data=st.data(), reason=st.sampled_from(["stop", "unreachable"]))
    def stop(self, data: st.DataObject, reason: str) -> None:
        """The agent is stopped or cannot be reached: the delivery is refunded."""
        self.reclaim(data, reason)

    def reclaim(self, data: st.DataObject, reason: str) -> None:
        """Take back what a busy agent holds; a fresh incarnation of it comes back under
        the same id (the old one, if it hung, may still answer: see stale_answer)."""
        agent = data.draw(st.sampled_from(self.busy_agents()), label="agent")
        a = self.agents[agent]
        a.incarnation += 1
        assert a.holding is not None
        m = self.items[a.holding]
        before = m.deliveries
        now = self.tick()
        verdict = self.q.reclaim(agent, reason, now)  # type: ignore[arg-type]
        self.release(m, agent, f"reclaimed:{reason}", reason)
        if not SPENDS[reason]:
            m.deliveries -= 1
        if m.deliveries >= m.max_deliveries:
            self.finish(m, DEAD, now)
        else:
            self.requeue_front(m)
        assert verdict.accepted, verdict.reason
        got = verdict.item
        assert got is self.q.get(m.id)
        assert got.deliveries == (before if SPENDS[reason] else before - 1)
        assert got.status is m.status
        if got.status is DEAD:
            assert got.error is not None and reason in got.error
            m.error = got.error
            # dead-lettered with its exit history
            assert got.history and got.history[-1].outcome == f"reclaimed:{reason}"

    def ended(self) -> list[str]:
        return [m.id for m in self.items.values() if m.status in (DEAD, FAILED)]

    @precondition(lambda self: self.ended())
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        item_id = data.draw(st.sampled_from(self.ended()), label="item")
        m = self.items[item_id]
        item = self.q.retry(item_id, self.tick())
        m.status, m.deliveries, m.error, m.finished_at = QUEUED, 0, None, None
        self.finished.remove(item_id)
        self.queues[m.agent_type].append(item_id)
        assert item is self.q.get(item_id)
        assert (item.status, item.deliveries, item.attempt) == (QUEUED, 0, m.attempt)

    # cancel and time limits (issue 21) ------------------------------------------------

    @precondition(lambda self: self.items)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """Cancel any item: a queued one leaves its queue, an assigned one's attempt is
        released (``cancelled``; its agent's later answers are stale), both end
        cancelled; an ended one is refused, changing nothing."""
        item_id = data.draw(st.sampled_from(list(self.items)), label="item")
        m = self.items[item_id]
        if m.status in FINAL:

            def cancel_ended() -> None:
                with pytest.raises(ControlError, match="has ended"):
                    self.q.cancel(item_id, "why", self.now)

            self.unchanged(cancel_ended)
            return
        now = self.tick()
        before = m.deliveries
        got = self.q.cancel(item_id, "not needed", now)
        if m.status is QUEUED:
            if m.waiting:  # waiting for its dependencies: not in a ready queue
                event("a waiting item was cancelled")
                m.waiting = []
            else:
                self.queues[m.agent_type].remove(item_id)
        else:
            assert m.agent is not None
            self.release(m, m.agent, "cancelled", "not needed")
        m.error = "cancelled: not needed"
        self.finish(m, CANCELLED, now)
        assert got is self.q.get(item_id)
        assert (got.status, got.deliveries, got.error) == (CANCELLED, before, m.error)

    @precondition(lambda self: self.busy_agents())
    @rule(data=st.data())
    def time_out(self, data: st.DataObject) -> None:
        """The held attempt ran past its time limit: ``timed_out``, its delivery spent;
        queued again at the front, or dead with no delivery left. Its agent's later
        answers are stale."""
        agent = data.draw(st.sampled_from(self.busy_agents()), label="agent")
        m = self.items[self.agents[agent].holding or ""]
        before = m.deliveries
        now = self.tick()
        verdict = self.q.time_out(m.id, m.attempt, "time limit 5s", now)
        assert verdict.accepted, verdict.reason
        self.release(m, agent, "timed_out", "time limit 5s")
        if m.deliveries >= m.max_deliveries:
            m.error = self.q.get(m.id).error  # before finish: its dependents name it
            assert m.error is not None and "time limit 5s" in m.error
            self.finish(m, DEAD, now)
        else:
            m.error = "timed out: time limit 5s"
            self.requeue_front(m)
        got = verdict.item
        assert got is self.q.get(m.id)
        assert (got.status, got.deliveries) == (m.status, before)

    @precondition(lambda self: any(m.holders for m in self.items.values()))
    @rule(data=st.data())
    def stale_time_out(self, data: st.DataObject) -> None:
        """A time limit that fires for an attempt that is not the current one (it ended
        first) is refused, changing nothing."""
        stale = [
            (m.id, attempt)
            for m in self.items.values()
            for attempt in m.holders
            if not (m.status is ASSIGNED and attempt == m.attempt)
        ]
        if not stale:
            return
        item_id, attempt = data.draw(st.sampled_from(stale), label="stale")
        verdict = self.unchanged(lambda: self.q.time_out(item_id, attempt, "late", self.now))
        assert not verdict.accepted

    # ------------------------------------------------------------------------------------

    @precondition(lambda self: self.steps_since_quiesce >= 15)
    @rule()
    def quiesce(self) -> None:
        """Every agent finishes what it holds and then everything queued: none is lost."""
        self.steps_since_quiesce = 0
        for agent in self.busy_agents():
            self.do_answer(agent, "result")
        for _ in range(10 * len(self.items) + 1):
            if not any(self.queues.values()):
                break
            for agent in AGENTS:
                if self.do_assign(agent) is not None:
                    self.do_answer(agent, "result")
        assert not any(self.queues.values())
        assert {i.id for i in self.q.items()} == set(self.items), "an item was lost"
        for m in self.items.values():
            assert self.q.get(m.id).status in FINAL, f"{m.id} did not end"
        for agent in AGENTS:
            assert self.q.held_by(agent) is None
        for t in TYPES:
            assert not self.q.has_work(t) and self.q.depth(t) == 0
        # and with nothing queued, an idle agent gets nothing
        assert self.do_assign("qc-1") is None

    # invariants ------------------------------------------------------------------------

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert [i.id for i in self.q.items()] == list(self.items), "items lost or reordered"
        for m in self.items.values():
            item = self.q.get(m.id)
            assert item.status is m.status, m.id
            assert item.attempt == m.attempt == len(m.holders), "attempt = assignments"
            assert item.deliveries == m.deliveries, m.id
            assert item.max_deliveries == m.max_deliveries
            assert item.agent == m.agent
            assert item.payload == m.payload
            assert item.checkpoint == m.checkpoint
            assert item.progress == m.progress
            assert item.started_at == m.started_at
            assert item.finished_at == m.finished_at
            history = [(h.attempt, h.agent, h.outcome, h.reason) for h in item.history]
            assert history == m.history[-HISTORY_KEPT:], "history: every released attempt, in order"
            if m.status in (FAILED, DEAD, CANCELLED) and m.error is not None:
                if m.error.startswith("dependency "):  # the model may not know dep's error
                    assert (item.error or "").startswith(m.error), (item.error, m.error)
                else:
                    assert item.error == m.error
            assert item.key == m.key and item.after == m.after
            assert item.waiting_on == m.waiting, m.id
            if m.status is CANCELLED:
                assert item.error is not None and item.error.startswith(m.error or "?"), item.error
        finished = [i.id for i in self.q.items() if i.status in FINAL]
        assert sorted(finished) == sorted(self.finished)
        if self.KEEP is not None:
            assert len(finished) <= self.KEEP
        for t in TYPES:
            assert self.q.depth(t) == len(self.queues[t])
            assert self.q.has_work(t) == bool(self.queues[t])
            waiting = [m for m in self.items.values() if m.agent_type == t and m.waiting]
            assert self.q.blocked(t) == len(waiting)  # type: ignore[attr-defined]

    @invariant()
    def one_holder_each_way(self) -> None:
        holders: dict[str, str] = {}
        for agent, a in self.agents.items():
            held = self.q.held_by(agent)
            assert (held.id if held is not None else None) == a.holding
            if held is not None:
                assert held.id not in holders, f"{held.id} held by {holders[held.id]} and {agent}"
                holders[held.id] = agent
                assert held.status is ASSIGNED and held.agent == agent
        for item in self.q.items():
            if item.status is ASSIGNED:
                assert item.agent is not None and holders.get(item.id) == item.agent
            else:
                assert item.agent is None and item.id not in holders

    @invariant()
    def counters(self) -> None:
        for item in self.q.items():
            assert 0 <= item.deliveries <= item.max_deliveries
            assert item.attempt >= self.seen_attempt.get(item.id, 0), "attempt went back"
            self.seen_attempt[item.id] = item.attempt
            assert item.attempt >= item.deliveries
            if item.status is QUEUED:
                assert item.deliveries < item.max_deliveries, "queued with no delivery left"
            if item.status is DEAD:
                # dead exactly when the deliveries ran out through exit, hang or FAIL
                assert item.deliveries == item.max_deliveries
                assert item.history[-1].outcome in (
                    "failed",
                    "timed_out",
                    "reclaimed:exit",
                    "reclaimed:hang",
                )
            if item.status is CANCELLED:
                assert item.id not in self.completed, "a cancelled item completed"
            if item.status is COMPLETED:
                final_attempt, result = self.completed[item.id]
                assert item.result == result, "a completed result changed"
                assert item.attempt == final_attempt
                assert item.history[-1].outcome == "completed"
                assert item.history[-1].attempt == final_attempt


WorkQueueMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
TestWorkQueueMachine = WorkQueueMachine.TestCase


class BoundedWorkQueueMachine(WorkQueueMachine):
    """The same with keep_finished=3: the oldest finished items are forgotten (a late
    answer for one is refused as unknown), queued and assigned ones never are."""

    KEEP = 3


BoundedWorkQueueMachine.TestCase.settings = settings(
    max_examples=75, stateful_step_count=40, deadline=None
)
TestBoundedWorkQueueMachine = BoundedWorkQueueMachine.TestCase


@attrs.define
class Saved:
    """The model as of the last write to the file: what a crash goes back to."""

    items: dict[str, ModelItem] = attrs.field(factory=dict)
    queues: dict[str, list[str]] = attrs.field(factory=lambda: {t: [] for t in TYPES})
    finished: list[str] = attrs.field(factory=list)
    forgotten: dict[str, tuple[int, str]] = attrs.field(factory=dict)
    completed: dict[str, tuple[int, Any]] = attrs.field(factory=dict)


class SqliteWorkQueueMachine(WorkQueueMachine):
    """The same against :class:`~supervisor.SqliteWorkQueue` on a file of its own, driven
    synchronously, with two more rules: ``flush`` writes every change, and ``reopen``
    closes the file (after a flush, or not: a crash that loses what was not written) and
    opens it again in a new queue. The model then goes back to its state at the last
    write, and the items an agent held come back at the front of their queue (the oldest
    first) with the attempt counted (``reclaimed:exit``, the hub restarted), dead if it
    was their last delivery; ids are never handed out twice."""

    def make_queue(self) -> WorkQueue:
        self.dir = tempfile.mkdtemp(prefix="hubvisor-machine-")
        self.saved = Saved()
        return self.open_queue()

    def open_queue(self) -> SqliteWorkQueue:
        keep = 10_000 if self.KEEP is None else self.KEEP
        return SqliteWorkQueue(self.dir, max_held=1000, keep_finished=keep)

    @property
    def file(self) -> SqliteWorkQueue:
        assert isinstance(self.q, SqliteWorkQueue)
        return self.q

    def teardown(self) -> None:
        self.file.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule()
    def flush(self) -> None:
        """Every change is written: a crash from now on goes back here."""
        self.file.flush_sync()
        self.saved = Saved(
            *copy.deepcopy((self.items, self.queues, self.finished, self.forgotten, self.completed))
        )

    @rule(flushed=st.booleans())
    def reopen(self, flushed: bool) -> None:
        """The hub stops (having written everything, or dying first) and a new one opens
        the file: its agents went with the old one."""
        if flushed:
            self.flush()
        self.file.close()
        saved = copy.deepcopy(self.saved)
        for m in self.items.values():  # not written: gone, and an answer for it refused
            if m.id not in saved.items and m.holders:
                saved.forgotten[m.id] = (m.attempt, m.holders[m.attempt])
        self.items, self.queues, self.finished = saved.items, saved.queues, saved.finished
        self.forgotten, self.completed = saved.forgotten, saved.completed
        self.seen_attempt = {}  # an attempt not written is handed out again
        for a in self.agents.values():
            a.holding = None
            a.incarnation += 1
        self.q = self.open_queue()
        held = [m for m in self.items.values() if m.status is ASSIGNED]
        dead: list[ModelItem] = []
        for m in sorted(held, key=lambda m: int(m.id.rsplit("-", 1)[1]), reverse=True):
            assert m.agent is not None
            m.history.append((m.attempt, m.agent, "reclaimed:exit", RESTART_REASON))
            m.agent = None
            if m.deliveries >= m.max_deliveries:
                self.finish(m, DEAD, 0.0, cascade=False)
                dead.append(m)
                if m.id in self.items:  # the restart's time and the deliveries it used
                    got = self.q.get(m.id)
                    m.finished_at, m.error = got.finished_at, got.error
                    assert m.error is not None and RESTART_REASON in m.error
            else:
                self.requeue_front(m)
        # their dependents are cancelled once the file is read, the dead ones in order
        for m in dead:
            before = {i for i, x in self.items.items() if x.status is CANCELLED}
            self.settle(m, 0.0)
            for i, x in self.items.items():
                if x.status is CANCELLED and i not in before:
                    x.finished_at = self.q.get(i).finished_at
        self.flush()  # the restart wrote what it took back: a crash now keeps it


SqliteWorkQueueMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestSqliteWorkQueueMachine = SqliteWorkQueueMachine.TestCase


class BoundedSqliteWorkQueueMachine(SqliteWorkQueueMachine):
    """SQLite with keep_finished=3: what was pruned stays pruned across a reopen."""

    KEEP = 3


BoundedSqliteWorkQueueMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None
)
TestBoundedSqliteWorkQueueMachine = BoundedSqliteWorkQueueMachine.TestCase


# ---------------------------------------------------------------------------------------
# Plain tests


def ids(q: MemoryWorkQueue, agent_type: str, agents: list[str]) -> list[str | None]:
    """Assign one item to each of ``agents`` in turn; the ids they got."""
    got = []
    for agent in agents:
        item = q.assign(agent_type, agent, 0.0)
        got.append(item.id if item is not None else None)
    return got


def test_the_memory_queue_is_a_work_queue() -> None:
    assert isinstance(MemoryWorkQueue(), WorkQueue)


def test_each_type_is_first_in_first_out() -> None:
    q = MemoryWorkQueue()
    w1 = q.submit("worker", 1, max_deliveries=3, source="t", now=0.0)
    qc1 = q.submit("qc", 2, max_deliveries=3, source="t", now=0.0)
    w2 = q.submit("worker", 3, max_deliveries=3, source="t", now=0.0)
    w3 = q.submit("worker", 4, max_deliveries=3, source="t", now=0.0)
    assert (q.depth("worker"), q.depth("qc"), q.depth("review")) == (3, 1, 0)
    assert ids(q, "worker", ["a", "b", "c", "d"]) == [w1.id, w2.id, w3.id, None]
    assert ids(q, "qc", ["e", "f"]) == [qc1.id, None]
    assert not q.has_work("worker") and not q.has_work("qc")


def test_requeued_items_go_to_the_front_and_retried_ones_to_the_back() -> None:
    q = MemoryWorkQueue()
    a, b, c, d = (q.submit("w", n, max_deliveries=1, source="t", now=0.0) for n in range(4))
    assert ids(q, "w", ["x", "y", "z"]) == [a.id, b.id, c.id]
    # queue: d
    assert q.hand_back(b.id, 1, "y", 1.0).accepted  # front: b d
    assert q.fail(a.id, 1, "x", "flaky", True, 1.0).accepted  # no delivery left: dead
    assert q.get(a.id).status is DEAD
    assert q.reclaim("z", "stop", 1.0).accepted  # refunded, front: c b d
    q.retry(a.id, 2.0)  # back: c b d a
    assert ids(q, "w", ["x", "y", "z", "v", "u"]) == [c.id, b.id, d.id, a.id, None]
    assert [q.get(i.id).attempt for i in (a, b, c, d)] == [2, 2, 2, 1]


def test_keep_finished_forgets_the_oldest_finished_items_only() -> None:
    q = MemoryWorkQueue(keep_finished=2)
    items = [q.submit("w", n, max_deliveries=1, source="t", now=0.0) for n in range(6)]
    a, b, c, d, e, f = items
    assert ids(q, "w", ["1", "2", "3", "4"]) == [a.id, b.id, c.id, d.id]
    assert q.complete(a.id, 1, "1", "ra", 1.0).accepted
    assert q.fail(b.id, 1, "2", "no", False, 2.0).accepted
    assert q.reclaim("3", "exit", 3.0).accepted  # c: dead, the third finished
    with pytest.raises(ControlError, match="`hubvisor work list`"):
        q.get(a.id)
    assert q.get(b.id).status is FAILED and q.get(c.id).status is DEAD
    # a retried item leaves the finished list; finishing again makes it the newest
    q.retry(b.id, 4.0)  # queue: e f b
    g = q.submit("w", 6, max_deliveries=1, source="t", now=4.0)  # queue: e f b g
    assert ids(q, "w", ["2", "5", "6"]) == [e.id, f.id, b.id]
    assert q.complete(b.id, 2, "6", "rb", 5.0).accepted  # finished: c b
    assert q.complete(d.id, 1, "4", "rd", 6.0).accepted  # finished: b d, c forgotten
    with pytest.raises(ControlError):
        q.get(c.id)
    assert q.get(b.id).result == "rb" and q.get(d.id).result == "rd"
    # assigned (e, f) and queued (g) items are never forgotten, however small the bound
    assert [i.id for i in q.items()] == [b.id, d.id, e.id, f.id, g.id]
    assert [q.get(i.id).status for i in (e, f, g)] == [ASSIGNED, ASSIGNED, QUEUED]


def test_keep_finished_zero_keeps_only_live_items() -> None:
    q = MemoryWorkQueue(keep_finished=0)
    a, b, c = (q.submit("w", n, max_deliveries=2, source="t", now=0.0) for n in range(3))
    assert ids(q, "w", ["x", "y"]) == [a.id, b.id]
    verdict = q.complete(a.id, 1, "x", "done", 1.0)
    assert verdict.accepted and verdict.item is not None and verdict.item.result == "done"
    assert [i.id for i in q.items()] == [b.id, c.id]
    assert q.held_by("y") is q.get(b.id)
    # a late answer for the forgotten item is refused, not a crash
    assert not q.complete(a.id, 1, "x", "again", 2.0).accepted


@pytest.mark.parametrize("status", ["queued", "assigned", "completed"])
def test_only_dead_or_failed_items_can_be_retried(status: str) -> None:
    q = MemoryWorkQueue()
    item = q.submit("w", {}, max_deliveries=3, source="t", now=0.0)
    if status != "queued":
        q.assign("w", "x", 0.0)
    if status == "completed":
        q.complete(item.id, 1, "x", "r", 1.0)
    assert q.get(item.id).status == status
    with pytest.raises(ControlError, match=f"{item.id!r} is {status}; only dead or failed"):
        q.retry(item.id, 2.0)
    assert q.get(item.id).status == status


def test_retry_of_an_unknown_item_and_get_name_the_list_command() -> None:
    q = MemoryWorkQueue()
    with pytest.raises(ControlError, match=r"no work item 'w-7'; `hubvisor work list`"):
        q.get("w-7")
    with pytest.raises(ControlError, match="`hubvisor work list`"):
        q.retry("w-7", 0.0)


def test_assigning_to_an_agent_that_holds_an_item_raises() -> None:
    q = MemoryWorkQueue()
    a = q.submit("w", 1, max_deliveries=3, source="t", now=0.0)
    b = q.submit("w", 2, max_deliveries=3, source="t", now=0.0)
    assert ids(q, "w", ["x"]) == [a.id]
    with pytest.raises(ControlError, match=f"agent 'x' already holds {a.id!r}"):
        q.assign("w", "x", 1.0)
    # nothing moved: b is still first in line, x still holds a
    assert q.get(b.id).status is QUEUED and q.get(b.id).attempt == 0
    assert q.held_by("x") is q.get(a.id)
    assert ids(q, "w", ["y"]) == [b.id]


def test_a_late_result_from_a_reclaimed_incarnation_never_lands() -> None:
    q = MemoryWorkQueue()
    item = q.submit("w", 1, max_deliveries=3, source="t", now=0.0)
    q.assign("w", "x", 0.0)
    assert q.progress(item.id, 1, "x", {"pct": 50}, {"line": 7}).accepted
    assert q.reclaim("x", "hang", 1.0).accepted  # x hung; the same id comes back
    again = q.assign("w", "x", 2.0)
    assert again is not None and again.attempt == 2 and again.checkpoint == {"line": 7}
    late = q.complete(item.id, 1, "x", "late", 3.0)
    assert not late.accepted and "stale" in late.reason
    assert q.complete(item.id, 2, "x", "real", 4.0).accepted
    twice = q.complete(item.id, 2, "x", "twice", 5.0)
    assert not twice.accepted
    assert q.get(item.id).result == "real" and q.get(item.id).deliveries == 2


def test_crashes_dead_letter_with_their_history_and_stops_never_do() -> None:
    q = MemoryWorkQueue()
    item = q.submit("w", 1, max_deliveries=2, source="t", now=0.0)
    for n in range(5):  # graceful stops and hand-backs never use up deliveries
        q.assign("w", "x", float(n))
        if n % 2:
            assert q.reclaim("x", "stop", float(n)).accepted
        else:
            assert q.hand_back(item.id, n + 1, "x", float(n)).accepted
        assert (q.get(item.id).status, q.get(item.id).deliveries) == (QUEUED, 0)
    q.assign("w", "x", 10.0)
    assert q.reclaim("x", "exit", 10.0).accepted
    assert q.get(item.id).status is QUEUED
    q.assign("w", "y", 11.0)
    verdict = q.reclaim("y", "hang", 11.0)
    assert verdict.accepted and verdict.item is not None
    dead = q.get(item.id)
    assert (dead.status, dead.deliveries, dead.attempt) == (DEAD, 2, 7)
    assert dead.error is not None and "hang" in dead.error
    assert [(h.attempt, h.agent, h.outcome) for h in dead.history[-2:]] == [
        (6, "x", "reclaimed:exit"),
        (7, "y", "reclaimed:hang"),
    ]
    assert not q.has_work("w")
    retried = q.retry(item.id, 12.0)
    assert (retried.status, retried.deliveries, retried.error) == (QUEUED, 0, None)
