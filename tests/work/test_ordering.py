"""Priorities, delayed items and retry delays (issue 21) in the queue alone: a state
machine on MemoryWorkQueue and SqliteWorkQueue against a small model, and plain tests.

The model keeps, per type, the ready items in the order the next assignments must
follow (higher priority first; new items at the back of their priority, re-queued ones
at the front of it) and the delayed ones with their time; a fake wall clock advances by
rules. Every assignment must be the model's first ready item ("priorities respected
among ready items") and no item is ever handed out before its time ("no item runs before
its delay passed"); a quiesce drains everything: none lost, none done twice.
"""

from __future__ import annotations

import datetime
import itertools
import json
import shutil
import tempfile
import time
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from strategies import ExponentialBackoff, FixedBackoff
from supervisor import ItemStatus, MemoryWorkQueue, SqliteWorkQueue, WorkItem
from supervisor._errors import ControlError
from supervisor.work._item import not_before_of
from supervisor.work._ordering import RetryDelays

TYPES = ("worker", "qc")
AGENTS = {"worker-1": "worker", "worker-2": "worker", "qc-1": "qc"}
FINAL = (ItemStatus.COMPLETED, ItemStatus.FAILED, ItemStatus.DEAD)


def set_clock(q: Any, clock: Any) -> None:
    """Point the queue's wall clock (the local one's, for SQLite) at ``clock``."""
    (q._local if isinstance(q, SqliteWorkQueue) else q).clock = clock


class OrderingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.wall = 1_000.0
        self.q: Any = self.make_queue()
        set_clock(self.q, lambda: self.wall)
        self.prio: dict[str, int] = {}
        self.ready: dict[str, list[str]] = {t: [] for t in TYPES}
        self.delayed: dict[str, tuple[float, int, bool]] = {}  # id -> (at, seq, front)
        self.seq = itertools.count()
        self.held: dict[str, str] = {}  # agent -> item
        self.done: set[str] = set()
        self.ever: list[str] = []

    def make_queue(self) -> Any:
        return MemoryWorkQueue()

    def teardown(self) -> None:
        pass

    # the model -------------------------------------------------------------------------

    def place(self, item_id: str, *, front: bool) -> None:
        queue, p = self.ready[self.type_of(item_id)], self.prio[item_id]
        if front:
            i = next((k for k, o in enumerate(queue) if self.prio[o] <= p), len(queue))
        else:
            i = next((k for k, o in enumerate(queue) if self.prio[o] < p), len(queue))
        queue.insert(i, item_id)

    def wait_or_place(self, item_id: str, at: float | None, *, front: bool) -> None:
        if at is not None and at > self.wall:
            self.delayed[item_id] = (at, next(self.seq), front)
        else:
            self.place(item_id, front=front)

    def promote(self) -> None:
        due = sorted((v, k) for k, v in self.delayed.items() if v[0] <= self.wall)
        for (_at, _seq, front), item_id in due:
            del self.delayed[item_id]
            self.place(item_id, front=front)

    def type_of(self, item_id: str) -> str:
        return item_id.rsplit("-", 1)[0]

    # rules -----------------------------------------------------------------------------

    @precondition(lambda self: len(self.ever) < 12)
    @rule(
        agent_type=st.sampled_from(TYPES),
        priority=st.integers(-2, 2),
        delay=st.one_of(st.none(), st.integers(1, 5)),
    )
    def submit(self, agent_type: str, priority: int, delay: int | None) -> None:
        at = None if delay is None else self.wall + delay
        item = self.q.submit(
            agent_type, {}, max_deliveries=3, source="t", now=0.0, priority=priority, not_before=at
        )
        self.ever.append(item.id)
        self.prio[item.id] = priority
        self.wait_or_place(item.id, at, front=False)

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 5.0]))
    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.promote()

    @precondition(lambda self: any(a not in self.held for a in AGENTS))
    @rule(data=st.data())
    def assign(self, data: st.DataObject) -> None:
        agent = data.draw(st.sampled_from([a for a in AGENTS if a not in self.held]))
        queue = self.ready[AGENTS[agent]]
        got = self.q.assign(AGENTS[agent], agent, 0.0)
        if not queue:
            assert got is None, f"{got and got.id} handed out before its time"
            return
        assert got is not None and got.id == queue[0], (got and got.id, queue)
        assert got.not_before is None or got.not_before <= self.wall
        queue.pop(0)
        self.held[agent] = got.id

    @precondition(lambda self: self.held)
    @rule(
        data=st.data(),
        how=st.sampled_from(["result", "fail", "handback", "exit", "stop"]),
        after=st.one_of(st.none(), st.integers(0, 4)),
    )
    def answer(self, data: st.DataObject, how: str, after: int | None) -> None:
        agent = data.draw(st.sampled_from(sorted(self.held)))
        item_id = self.held.pop(agent)
        item: WorkItem = self.q.get(item_id)
        attempt = item.attempt
        if how == "result":
            assert self.q.complete(item_id, attempt, agent, 1, 0.0).accepted
        elif how == "fail":
            assert self.q.fail(item_id, attempt, agent, "x", True, 0.0).accepted
        elif how == "handback":
            assert self.q.hand_back(item_id, attempt, agent, 0.0).accepted
        else:
            assert self.q.reclaim(agent, how, 0.0).accepted
        if item.status in FINAL:
            self.done.add(item_id)
            return
        if how in ("fail", "exit") and after is not None:  # what the dispatch does then
            self.q.retry_later(item_id, after)
        delayed = how in ("fail", "exit") and after
        self.wait_or_place(item_id, self.wall + after if delayed else None, front=True)  # type: ignore[operator]

    @precondition(lambda self: len(self.ever) >= 6)
    @rule()
    def quiesce(self) -> None:
        """Time passes and everything is done: none lost, none left waiting."""
        for agent in list(self.held):
            item = self.q.get(self.held.pop(agent))
            assert self.q.complete(item.id, item.attempt, agent, 1, 0.0).accepted
            self.done.add(item.id)
        self.wall += 100.0
        self.promote()
        for t in TYPES:
            while self.ready[t]:
                got = self.q.assign(t, f"{t}-drain", 0.0)
                assert got is not None and got.id == self.ready[t].pop(0)
                assert self.q.complete(got.id, got.attempt, f"{t}-drain", 1, 0.0).accepted
                self.done.add(got.id)
        assert set(self.done) == set(self.ever), "an item was lost"
        self.ever.clear()
        self.done.clear()

    # invariants ------------------------------------------------------------------------

    @invariant()
    def counts_agree(self) -> None:
        for t in TYPES:
            assert self.q.depth(t) == len(self.ready[t])
            assert self.q.delayed(t) == sum(1 for i in self.delayed if self.type_of(i) == t)
            assert self.q.has_work(t) == bool(self.ready[t])
        soonest = min((v[0] for v in self.delayed.values()), default=None)
        assert self.q.next_ready() == soonest


class SqliteOrderingMachine(OrderingMachine):
    def make_queue(self) -> Any:
        self.dir = tempfile.mkdtemp(prefix="hubvisor-order-")
        return SqliteWorkQueue(self.dir, max_held=1000)

    def teardown(self) -> None:
        self.q.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestOrdering = OrderingMachine.TestCase
TestOrdering.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestSqliteOrdering = SqliteOrderingMachine.TestCase
TestSqliteOrdering.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)


# plain tests -----------------------------------------------------------------------


def test_priority_order_and_fifo_within() -> None:
    q = MemoryWorkQueue()
    ids = [
        q.submit("w", n, max_deliveries=3, source="t", now=0.0, priority=p).id
        for n, p in enumerate([0, 5, 0, 5, -1])
    ]
    order = [q.assign("w", f"a{n}", 0.0) for n in range(5)]
    assert [i.id for i in order if i] == [ids[1], ids[3], ids[0], ids[2], ids[4]]


def test_a_requeued_item_goes_to_the_front_of_its_priority_only() -> None:
    q = MemoryWorkQueue()
    low = q.submit("w", 1, max_deliveries=3, source="t", now=0.0, priority=0)
    assert q.assign("w", "a", 0.0) is low
    high = q.submit("w", 2, max_deliveries=3, source="t", now=0.0, priority=9)
    other = q.submit("w", 3, max_deliveries=3, source="t", now=0.0, priority=0)
    q.reclaim("a", "stop", 0.0)
    assert [q.assign("w", f"b{n}", 0.0) for n in range(3)] == [high, low, other]


def test_a_delayed_item_waits_for_its_time_and_a_sqlite_restart_keeps_it(tmp_path: Any) -> None:
    start = time.time()  # the reopened queue reads the real clock until the test sets it
    wall = [start]
    q = SqliteWorkQueue(tmp_path, max_held=10)
    q._local.clock = lambda: wall[0]
    later = q.submit("w", 1, max_deliveries=3, source="t", now=0.0, not_before=start + 3600)
    urgent = q.submit("w", 2, max_deliveries=3, source="t", now=0.0, priority=3)
    assert (q.depth("w"), q.delayed("w"), q.next_ready()) == (1, 1, start + 3600)
    q.flush_sync()
    q.close()
    q = SqliteWorkQueue(tmp_path, max_held=10)
    try:
        q._ready()
        q._local.clock = lambda: wall[0]
        assert (q.depth("w"), q.delayed("w")) == (1, 1)
        assert q.get(later.id).not_before == start + 3600 and q.get(urgent.id).priority == 3
        assert q.assign("w", "a", 0.0).id == urgent.id  # type: ignore[union-attr]
        assert q.assign("w", "b", 0.0) is None
        wall[0] = start + 3600
        assert q.assign("w", "b", 0.0).id == later.id  # type: ignore[union-attr]
    finally:
        q.close()


def test_not_before_parses_iso_times_unix_times_and_refuses_bad_ones() -> None:
    now = 1_800_000_000.0 - 3600  # an hour before 2027-01-15T08:00Z
    assert not_before_of(30, None, now) == now + 30
    assert not_before_of(0, None, now) is None
    utc = datetime.datetime(2027, 1, 15, 8, tzinfo=datetime.UTC).timestamp()
    assert not_before_of(None, "2027-01-15T08:00:00+00:00", now) == utc
    at = not_before_of(None, "2027-01-15T09:00:00+01:00", now)
    assert at == not_before_of(None, "2027-01-15T08:00:00Z", now)
    naive = not_before_of(None, "2027-01-15T08:00:00", now)
    assert naive == time.mktime((2027, 1, 15, 8, 0, 0, 0, 0, -1))  # local time
    assert not_before_of(None, now - 5, now) is None  # past: ready at once
    assert not_before_of(None, now + 5, now) == now + 5  # a Unix time
    for bad, match in [
        ((5, "2027-01-01T00:00:00Z"), "either delay or not_before"),
        ((-1, None), "delay must be seconds"),
        ((float("nan"), None), "delay must be seconds"),
        ((None, "tomorrow"), "ISO 8601"),
        ((None, "2099-01-01T00:00:00Z"), "more than a year ahead"),
    ]:
        with pytest.raises(ControlError, match=match):
            not_before_of(*bad, now)


def test_retry_delays_per_type_and_retry_after() -> None:
    delays = RetryDelays({"worker": FixedBackoff(7.0), "*": ExponentialBackoff(initial=1, cap=4)})
    item = WorkItem(id="w-1", agent_type="worker", payload=None, max_deliveries=9, created_at=0)
    assert delays(item) == 7.0
    assert delays(item, 2.5) == 2.5  # the agent's retry_after wins
    qc = WorkItem(id="q-1", agent_type="qc", payload=None, max_deliveries=9, created_at=0)
    seen = []
    for n in (1, 2, 3, 4):
        qc.deliveries = n
        seen.append(delays(qc))
    assert seen == [1.0, 2.0, 4.0, 4.0]
    assert RetryDelays(None)(item) is None
    with pytest.raises(Exception, match="backoff policy"):
        RetryDelays("fast")  # type: ignore[arg-type]


def test_fail_records_carry_an_optional_retry_after_checked_by_the_table() -> None:
    from agents import _protocol as proto

    table = proto.MESSAGES
    ok = table.parse(proto.fail("w-1", 1, "slow down", retry=True, retry_after=2.5))
    assert ok.value is not None and json.loads(ok.value)["retry_after"] == 2.5
    plain = proto.fail("w-1", 1, "x", retry=True)
    assert b"retry_after" not in plain
    for bad in ('"soon"', "-1", "true"):
        record = f'FAIL={{"item":"w-1","attempt":1,"error":"x","retry_after":{bad}}}'.encode()
        with pytest.raises(proto.InvalidNotifyMessage, match="retry_after"):
            table.parse(record)


def test_next_ready_is_never_in_the_past_so_dispatch_does_not_spin() -> None:
    """An item whose time came but that no agent takes yet is ready, not "due": the
    dispatch's one timer is set only for times still ahead."""
    wall = [100.0]
    q = MemoryWorkQueue()
    q.clock = lambda: wall[0]
    q.submit("w", 1, max_deliveries=3, source="t", now=0.0, not_before=105.0)
    q.submit("w", 2, max_deliveries=3, source="t", now=0.0, not_before=110.0)
    assert q.next_ready() == 105.0
    wall[0] = 106.0
    assert q.next_ready() == 110.0 and q.depth("w") == 1
    wall[0] = 120.0
    assert q.next_ready() is None and q.depth("w") == 2
