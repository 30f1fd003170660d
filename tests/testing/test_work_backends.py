"""The work invariants of tests/testing/test_work_properties.py against RedisWorkQueue.

``run_schedule(spec, schedule, queue=...)`` runs a tree on simulated processes under
trio's ``MockClock``; here its queue is a :class:`~supervisor.work.redis.RedisWorkQueue`
on a real redis-server, and :func:`~supervisor.testing.check_all` judges the trace.

Two things make that run faithful and deterministic:

* **Redis rounds take virtual time, not real time.** The store sends each round from a
  worker thread (``trio.to_thread``); under ``MockClock(autojump_threshold=0)`` the
  virtual clock would jump ahead whenever every task waits, a round in a thread
  included, so how far it jumped during a round would depend on the machine's speed.
  Here (:func:`rounds_in_virtual_time`) the store's calls run in trio's thread, and each
  then takes :data:`LATENCY` of virtual time before its replies are applied: Redis acts
  when the round is sent, and the hub goes on deciding (agents answer, crash, are
  reclaimed) while the round is in flight, as it does with a real network, in an order
  the seeded scheduler fixes.
* **The record is read where it lives.** A hub on Redis holds only the items it took;
  an item it handed back waits in the stream for any hub. :class:`RecordedRedisQueue`
  lists, for the trace's snapshots, every item in Redis: those this hub holds as it has
  them (its writes go behind its decisions), the others as Redis has them, and once the
  store has stopped, all of them as Redis has them: what a hub restarted with the same
  id, or another hub, would find.

The lease is counted by the Redis server's clock, in real seconds, while the hub renews
it on the virtual clock (every third of :data:`LEASE` of virtual time, so often in real
time): a run takes a few real seconds, well inside the lease, so no lease runs out
during a run. Items change hands here by agents exiting, hanging, being stopped and
handing back; a lease running out is tested with real hubs (tests/work/redis/).
"""

from __future__ import annotations

import functools
import itertools
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import pytest
import redis
import trio
from hypothesis import HealthCheck, given, settings

from strategies import Intensity, OneForAll
from supervisor import ChildSpec, ItemStatus, PoolSpec, SupervisorSpec, Verdict, WorkItem
from supervisor.testing import (
    Crash,
    InvariantViolation,
    Kill,
    Schedule,
    Submit,
    Trace,
    WorkSnapshot,
    _invariants_work,
    check_all,
    check_work_completions,
    check_work_deliveries,
    check_work_order,
    check_work_outcomes,
    run_schedule,
    sim_result,
    specs_and_work_schedules,
    work_schedules,
)
from supervisor.work.redis import RedisWorkQueue, _deps, _query, _store
from supervisor.work.redis._codec import _decode_map, _item_from

from ..redis_server import RedisServer, redis_server, redis_server_factory

__all__ = ["redis_server", "redis_server_factory"]

pytestmark = pytest.mark.slow

T = TypeVar("T")
LEASE = 30.0
# Virtual seconds a Redis round takes (about 2 ms): a power of two, so that the sums of
# times stay exact and an event the schedule puts at the instant a timer fires (a crash
# when a hang is due) lands at exactly that instant, as in runs without Redis.
LATENCY = 2.0**-9
# Every example of a property runs on the test's one server (each run empties it first).
ONE_SERVER = [HealthCheck.function_scoped_fixture]


def examples(n: int) -> int:
    """``n`` examples, or the count ``pytest --explore`` asks for (see tests/conftest.py)."""
    return int(os.environ.get("HUBVISOR_EXPLORE_EXAMPLES", n))


@contextmanager
def rounds_in_virtual_time() -> Iterator[None]:
    """The Redis store's blocking calls run in trio's thread, then take :data:`LATENCY`
    of virtual time (see the module's docstring)."""

    async def in_thread(fn: Callable[..., T], *args: Any, abandon_on_cancel: bool = False) -> T:
        result = fn(*args)
        await trio.sleep(LATENCY)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_store, "in_thread", in_thread)
        patch.setattr(_query, "in_thread", in_thread)
        patch.setattr(_deps, "in_thread", in_thread)  # its counts and reconcile (issue 21)
        yield


class RecordedRedisQueue(RedisWorkQueue):
    """A :class:`RedisWorkQueue` whose :meth:`items` is the whole record (see the
    module's docstring); everything else is the store's own."""

    def __init__(self, url: str) -> None:
        super().__init__(url, lease=LEASE)
        self.view = redis.Redis.from_url(url, decode_responses=True)
        self.released: dict[str, WorkItem] = {}  # forgotten here, their release held
        self.stopped = False

    def hand_back(self, item_id: str, attempt: int, agent: str, now: float) -> Any:
        verdict = super().hand_back(item_id, attempt, agent, now)
        if verdict.accepted and verdict.item is not None:
            self.released[item_id] = verdict.item
        return verdict

    def retry(self, item_id: str, now: float) -> WorkItem:
        item = super().retry(item_id, now)
        self.released[item_id] = item
        return item

    async def run(self, host: Any, *, task_status: Any) -> None:
        try:
            await super().run(host, task_status=task_status)
        finally:
            self.stopped = True

    def items(self) -> list[WorkItem]:
        held = {} if self.stopped else {i.id: i for i in super().items()}
        unwritten = {op.item_id for op in self.writes.ops}
        out = []
        for k in sorted(self.view.scan_iter(f"{self.prefix}:work:{{*}}:item:*")):
            item_id = k.rsplit(":", 1)[1]
            if item_id in held:
                out.append(held.pop(item_id))
            elif item_id in unwritten and item_id in self.released and not self.stopped:
                out.append(self.released[item_id])
            else:
                out.append(_item_from(_decode_map(self.view.hgetall(k))))
        return out + list(held.values())  # submitted, not written yet


@pytest.fixture
def redis_queue(redis_server: RedisServer) -> Iterator[Callable[..., RedisWorkQueue]]:
    """Makes one :class:`RecordedRedisQueue` (or ``cls``) per run, on an empty database;
    Redis's rounds run in virtual time while the fixture is active."""
    made: list[RecordedRedisQueue] = []
    flush = redis_server.client()

    def make(cls: type[RecordedRedisQueue] = RecordedRedisQueue) -> RedisWorkQueue:
        flush.flushdb()
        made.append(cls(redis_server.url))
        return made[-1]

    with rounds_in_virtual_time():
        yield make
    for q in made:
        q.view.close()
    flush.close()


def run(spec: SupervisorSpec, schedule: Schedule, queue: Callable[[], RedisWorkQueue]) -> Trace:
    trace = run_schedule(spec, schedule, queue=queue)
    # Priorities on Redis (docs/work-controls.md): decided by the take script among the
    # items in Redis, so an item counts as ready once its submit was written (within two
    # rounds), and an item put back after an attempt stays with its hub and goes first
    with pytest.MonkeyPatch.context() as patch:
        order = functools.partial(check_work_order, written=2 * LATENCY, held_first=True)
        patch.setattr(_invariants_work, "check_work_order", order)
        check_all(trace)
    return trace


def final(trace: Trace) -> dict[str, Any]:
    snaps = [r for r in trace.log if isinstance(r, WorkSnapshot) and r.final]
    return {s.id: s for s in snaps[-1].items}


def agent(cid: str, agent_type: str = "w", **kw: Any) -> ChildSpec:
    return ChildSpec(id=cid, argv=["simulated"], agent_type=agent_type, **kw)


def pool(size: int = 2) -> PoolSpec:
    template = ChildSpec(id="t", argv=["simulated"], heartbeat_timeout=3.0)
    return PoolSpec(agent_type="w", template=template, size=size)


RESILIENT = SupervisorSpec(name="root", children=[pool(2)], intensity=Intensity(1000, 1))


# --------------------------------------------------------------------------------------
# The properties (a subset of test_work_properties.py's, fewer examples: each run talks
# to Redis)


class TestWorkInvariantsHoldOnRedis:
    @settings(max_examples=examples(12), deadline=None, suppress_health_check=ONE_SERVER)
    @given(spec_and_schedule=specs_and_work_schedules(max_depth=2, ordering=True, delays=False))
    def test_random_trees_and_schedules(
        self,
        redis_queue: Callable[..., RedisWorkQueue],
        spec_and_schedule: tuple[SupervisorSpec, Schedule],
    ) -> None:
        spec, schedule = spec_and_schedule
        run(spec, schedule, redis_queue)

    @settings(max_examples=examples(10), deadline=None, suppress_health_check=ONE_SERVER)
    @given(
        spec_and_schedule=specs_and_work_schedules(
            max_depth=1, hang=True, ordering=True, delays=False
        )
    )
    def test_random_trees_with_hangs(
        self,
        redis_queue: Callable[..., RedisWorkQueue],
        spec_and_schedule: tuple[SupervisorSpec, Schedule],
    ) -> None:
        spec, schedule = spec_and_schedule
        run(spec, schedule, redis_queue)

    @settings(max_examples=examples(8), deadline=None, suppress_health_check=ONE_SERVER)
    @given(schedule=work_schedules(RESILIENT, hang=True, ordering=True, delays=False))
    def test_nothing_is_lost_while_agents_keep_being_restarted(
        self, redis_queue: Callable[..., RedisWorkQueue], schedule: Schedule
    ) -> None:
        trace = run(RESILIENT, schedule, redis_queue)
        quiesced = [r for r in trace.log if isinstance(r, WorkSnapshot) and r.quiesced]
        assert [] == [
            (s.id, s.status)
            for s in quiesced[-1].items
            if s.status not in ("completed", "failed", "dead")
        ]
        assert len(schedule.work) == len(quiesced[-1].items)


# --------------------------------------------------------------------------------------
# Scenarios, exactly (as in test_work_properties.py; the item ids are Redis's)


def test_a_crash_mid_item_is_reclaimed_and_done_after_the_restart(
    redis_queue: Callable[..., RedisWorkQueue],
) -> None:
    spec = SupervisorSpec(name="root", children=[agent("a")])
    schedule = Schedule(
        crashes=[Crash(1.5, "a", Kill(signal.SIGKILL))],
        work=[Submit(1.0, "w", {"n": 1, "seconds": 2})],
    )
    trace = run(spec, schedule, redis_queue)
    ((item_id, item),) = final(trace).items()
    assert ("completed", 2, 2) == (item.status, item.attempt, item.deliveries)
    assert sim_result({"n": 1, "seconds": 2}, 2, "a") == item.result
    kinds = [e.kind for e in trace.events if getattr(e, "item_id", None) == item_id]
    assert ["work_submitted", "work_assigned", "work_reclaimed", "work_assigned"] == kinds[:4]


def test_the_hubs_stop_gives_held_items_back_to_redis_without_spending_them(
    redis_queue: Callable[..., RedisWorkQueue],
) -> None:
    spec = SupervisorSpec(name="root", children=[agent("a")])
    trace = run_schedule(
        spec, Schedule(work=[Submit(1.0, "w", {"n": 1, "seconds": 1000})]), settle=5,
        queue=redis_queue,
    )  # fmt: skip
    check_all(trace)
    (item,) = final(trace).values()
    assert ("queued", 0, 1) == (item.status, item.deliveries, item.attempt)


def test_failures_retry_until_the_deliveries_are_used_then_dead_letter(
    redis_queue: Callable[..., RedisWorkQueue],
) -> None:
    spec = SupervisorSpec(name="root", children=[agent("a")])
    work = [
        Submit(0.0, "w", {"n": 1, "fail": 1}, max_deliveries=2),
        Submit(0.0, "w", {"n": 2, "fail": "retry"}, max_deliveries=2),
        Submit(0.0, "w", {"n": 3, "fail": "final"}),
    ]
    trace = run(spec, Schedule(work=work), redis_queue)
    statuses = sorted((s.status, s.deliveries) for s in final(trace).values())
    assert [("completed", 2), ("dead", 2), ("failed", 1)] == statuses


def test_one_for_all_restarts_hand_back_through_the_stream(
    redis_queue: Callable[..., RedisWorkQueue],
) -> None:
    """A sibling's crash stops the holder for a restart: it hands its item back, which
    goes back to the stream, and is finished after the restart without a delivery spent."""
    spec = SupervisorSpec(
        name="root",
        strategy=OneForAll(),
        intensity=Intensity(10, 10),
        children=[agent("a"), agent("b", agent_type="q")],
    )
    schedule = Schedule(crashes=[Crash(1.5, "b")], work=[Submit(1.0, "w", {"n": 1, "seconds": 2})])
    trace = run(spec, schedule, redis_queue)
    (item,) = final(trace).values()
    assert ("completed", 1) == (item.status, item.deliveries)
    reclaims = [e for e in trace.events if e.kind == "work_reclaimed"]
    assert ["handback"] == [e.reason for e in reclaims]  # type: ignore[attr-defined]


def test_same_inputs_same_trace_but_for_the_ids(
    redis_queue: Callable[..., RedisWorkQueue],
) -> None:
    """Rounds in virtual time make a run a function of its inputs (ids aside: each
    incarnation of the queue draws its own)."""
    schedule = Schedule(
        crashes=[Crash(1.0, "w-agent-2"), Crash(2.25, "w-agent-1", Kill(signal.SIGKILL))],
        work=[Submit(at, "w", {"n": n, "seconds": 1.5}) for n, at in enumerate([0, 1, 1, 2])],
    )
    traces = [run(RESILIENT, schedule, redis_queue) for _ in range(3)]

    def shape(trace: Trace) -> list[tuple[Any, ...]]:
        ids: dict[str, str] = {}
        n = itertools.count(1)
        out = []
        for e in trace.events:
            item = getattr(e, "item_id", None)
            if item is not None:
                ids.setdefault(item, f"item-{next(n)}")
            out.append((e.kind, e.at, getattr(e, "child_id", ""), ids.get(item or "", "")))
        return out

    assert shape(traces[0]) == shape(traces[1]) == shape(traces[2])


# --------------------------------------------------------------------------------------
# The checks read Redis's record, not only the hub's view


class RefundsCrashes(RecordedRedisQueue):
    """Counts a crash like a graceful stop: the delivery is given back."""

    def reclaim(
        self, agent: str, reason: Literal["exit", "hang", "stop", "unreachable"], now: float
    ) -> Verdict:
        return super().reclaim(agent, "stop" if reason == "exit" else reason, now)


class LosesResults(RecordedRedisQueue):
    """Decides a completion but never writes it to Redis."""

    def _finish(self, item: WorkItem, agent: str) -> None:
        if item.status is not ItemStatus.COMPLETED:
            super()._finish(item, agent)


def test_a_redis_queue_that_refunds_crashes_is_caught(
    redis_queue: Callable[..., RedisWorkQueue],
) -> None:
    schedule = Schedule(
        crashes=[Crash(1.5, f"w-agent-{n}", Kill(signal.SIGKILL)) for n in (1, 2)],
        work=[Submit(1.0, "w", {"n": 1, "seconds": 2})],
    )
    trace = run_schedule(RESILIENT, schedule, queue=lambda: redis_queue(RefundsCrashes))
    # (caught while the item waits out its retry delay: one delivery short)
    with pytest.raises(InvariantViolation, match=r"\[work-deliveries\] the queue counts \d"):
        check_work_deliveries(trace)


def test_a_result_decided_but_never_written_to_redis_is_caught(
    redis_queue: Callable[..., RedisWorkQueue],
) -> None:
    """While the hub runs, its own copy says completed; once it has stopped, Redis's
    record is what is left, and it says the item is still running."""
    spec = SupervisorSpec(name="root", children=[agent("a")])
    schedule = Schedule(work=[Submit(1.0, "w", {"n": 1})])
    trace = run_schedule(spec, schedule, queue=lambda: redis_queue(LosesResults))
    with pytest.raises(InvariantViolation, match=r"the queue now says assigned with attempt 1"):
        check_work_completions(trace)
    with pytest.raises(
        InvariantViolation,
        match=r"is assigned in the queue after the hub stopped; its events say completed",
    ):
        check_work_outcomes(trace)
