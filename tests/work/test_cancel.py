"""Cancel and time limits with real agents, on each backend (memory, SQLite, Redis).

The agents are tests/raw_agent.py: ``--v2`` speaks protocol 2 and honours ``CANCEL``
(answering FAIL), the default speaks 1 (stopped instead). See docs/work-controls.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from supervisor import ChildSpec, ControlError, Hub, ItemStatus, WorkItem, WorkService
from supervisor.work import FINAL, MemoryWorkQueue
from supervisor.work.sqlite import SqliteWorkQueue

from .. import raw_agent
from ..helpers import PY, TIMEOUT, is_, until, wait_event
from ..redis_hubs import record
from ..redis_server import RedisServer, redis_server_factory

__all__ = ["redis_server_factory"]

BACKENDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.slow)]


def agent(cid: str, *flags: str, **kw: Any) -> ChildSpec:
    kw.setdefault("shutdown", 2.0)
    kw.setdefault("heartbeat_timeout", 2.0)
    return ChildSpec(id=cid, argv=[PY, "-c", raw_agent.PROGRAM, *flags], agent_type="w", **kw)


@pytest.fixture(params=BACKENDS)
def make_queue(request: Any, tmp_path: Path) -> Iterator[Any]:
    """A factory of the backend's queue (one Redis server per test when it is Redis)."""
    if request.param == "memory":
        yield MemoryWorkQueue
    elif request.param == "sqlite":
        made: list[SqliteWorkQueue] = []

        def make() -> SqliteWorkQueue:
            made.append(SqliteWorkQueue(tmp_path / "state"))
            return made[-1]

        yield make
        for q in made:
            q.close()
    else:
        from supervisor.work.redis import RedisWorkQueue

        factory = request.getfixturevalue("redis_server_factory")
        server: RedisServer = factory()
        yield lambda: RedisWorkQueue(server.url, lease=2)


async def _serve(specs: list[ChildSpec], service: WorkService) -> AsyncIterator[Any]:
    hub = Hub(specs, work=service, hub_id="A")
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        try:
            yield hub, events
        finally:
            await hub.stop()


def serve(specs: list[ChildSpec], service: WorkService) -> Any:
    import contextlib

    return contextlib.asynccontextmanager(_serve)(specs, service)


async def ended(hub: Hub, item_id: str) -> WorkItem:
    """The item once it has ended (a final status)."""
    with trio.fail_after(TIMEOUT):
        return await hub.work.wait(item_id)


async def held(hub: Hub, agent_id: str, item_id: str) -> None:
    await until(lambda: hub.work.assignment(agent_id) == item_id)


def is_redis(hub: Hub) -> bool:
    return type(hub.work.queue).__name__ == "RedisWorkQueue"


# Cancel -------------------------------------------------------------------------------


async def test_a_cancelled_held_item_is_given_up_by_a_v2_agent_which_stays(
    make_queue: Any,
) -> None:
    """A v2 agent holding the item gets CANCEL, answers FAIL (refused: the attempt is
    over); the item ends cancelled, the wait ends with it, and the same process takes
    the next item (not stopped)."""
    async with serve([agent("a1", "--v2")], WorkService(make_queue())) as (hub, events):
        running = await wait_event(events, is_("running", "a1"))
        item = hub.work.submit("w", {"hold": True})
        await held(hub, "a1", item.id)
        cancelled = hub.work.cancel(item.id, "not needed")
        assert ItemStatus.CANCELLED == cancelled.status
        done = await ended(hub, item.id)
        assert ItemStatus.CANCELLED == done.status
        assert "cancelled: not needed" == done.error
        assert ["cancelled"] == [h.outcome for h in done.history]
        refused = await wait_event(events, is_("work_refused"))
        assert item.id == refused.item_id  # type: ignore[attr-defined]
        nxt = hub.work.submit("w", {"n": 4})
        after = await ended(hub, nxt.id)
        assert (ItemStatus.COMPLETED, 8) == (after.status, after.result["double"])
        assert running.pid == hub.agents.live("a1")  # type: ignore[attr-defined]
        assert ItemStatus.CANCELLED == (await hub.work.fetch(item.id)).status
        with pytest.raises(ControlError, match="has ended"):
            hub.work.cancel(item.id)


async def test_a_v1_agent_holding_a_cancelled_item_is_stopped(make_queue: Any) -> None:
    async with serve([agent("a1")], WorkService(make_queue())) as (hub, events):
        running = await wait_event(events, is_("running", "a1"))
        item = hub.work.submit("w", {"hold": True})
        await held(hub, "a1", item.id)
        hub.work.cancel(item.id)
        exited = await wait_event(events, is_("exited", "a1"))
        assert running.pid == exited.pid  # type: ignore[attr-defined]
        assert ItemStatus.CANCELLED == (await ended(hub, item.id)).status
        nxt = hub.work.submit("w", {"n": 1})  # the restarted agent takes it
        assert ItemStatus.COMPLETED == (await ended(hub, nxt.id)).status
        assert ItemStatus.CANCELLED == hub.work.get(item.id).status


async def test_a_v2_agent_that_does_not_give_up_is_stopped_after_the_grace(
    make_queue: Any,
) -> None:
    service = WorkService(make_queue(), cancel_grace=0.5)
    async with serve([agent("a1", "--v2")], service) as (hub, events):
        await wait_event(events, is_("running", "a1"))
        item = hub.work.submit("w", {"hold": True, "deaf": True})
        await held(hub, "a1", item.id)
        with trio.fail_after(TIMEOUT):
            start = trio.current_time()
            hub.work.cancel(item.id)
            exited = await wait_event(events, is_("exited", "a1"))
        assert trio.current_time() - start >= 0.5
        assert not exited.expected  # type: ignore[attr-defined]
        assert ItemStatus.CANCELLED == (await ended(hub, item.id)).status


async def test_a_queued_item_is_cancelled_at_once_and_never_runs(make_queue: Any) -> None:
    """The item leaves its queue (with Redis: the stream, by the server-side script, as
    no hub holds it yet) and ends cancelled; the agent never sees it."""
    async with serve([agent("a1", "--v2")], WorkService(make_queue())) as (hub, events):
        await wait_event(events, is_("running", "a1"))
        busy = hub.work.submit("w", {"hold": True})
        await held(hub, "a1", busy.id)
        queued = hub.work.submit("w", {"n": 1})
        assert await hub.work.stored(queued.id)
        assert ItemStatus.CANCELLED == (await hub.work.cancel_any(queued.id)).status
        if not is_redis(hub):
            assert 0 == hub.work.queue.depth("w")
        await hub.work.cancel_any(busy.id)
        nxt = hub.work.submit("w", {"n": 3})
        assert ItemStatus.COMPLETED == (await ended(hub, nxt.id)).status
        done = await ended(hub, queued.id)
        assert (ItemStatus.CANCELLED, 0, []) == (done.status, done.attempt, done.history)


# Time limits --------------------------------------------------------------------------


async def test_an_attempt_past_its_time_limit_ends_timed_out_and_counts(
    make_queue: Any,
) -> None:
    """Per-type default of 0.5 s, two deliveries: each attempt times out (CANCEL, the
    agent gives up), the item is retried once, then dead; the agent stays."""
    service = WorkService(make_queue(), time_limits={"w": 0.5}, max_deliveries=2)
    async with serve([agent("a1", "--v2")], service) as (hub, events):
        running = await wait_event(events, is_("running", "a1"))
        item = hub.work.submit("w", {"sleep": 60})
        seen: list[Any] = []
        await wait_event(events, is_("work_dead"), seen)
        done = await ended(hub, item.id)
        assert ItemStatus.DEAD == done.status
        assert ["timed_out", "timed_out"] == [h.outcome for h in done.history]
        assert "time limit 0.5s" in (done.error or "")
        timed = [e for e in seen if e.kind == "work_timed_out"]
        assert [False, True] == [e.final for e in timed]  # type: ignore[attr-defined]
        assert running.pid == hub.agents.live("a1")  # type: ignore[attr-defined]
        quick = hub.work.submit("w", {"n": 2})  # under the limit: completes
        assert ItemStatus.COMPLETED == (await ended(hub, quick.id)).status


async def test_an_items_own_time_limit_wins_and_a_v1_agent_is_stopped(
    make_queue: Any,
) -> None:
    service = WorkService(make_queue(), time_limits={"w": 600}, max_deliveries=1)
    async with serve([agent("a1")], service) as (hub, events):
        await wait_event(events, is_("running", "a1"))
        item = hub.work.submit("w", {"sleep": 60}, time_limit=0.5)
        assert 0.5 == item.time_limit
        assert await hub.work.stored(item.id)
        assert 0.5 == (await hub.work.fetch(item.id)).time_limit  # on Redis: its hash
        await wait_event(events, is_("exited", "a1"))
        done = await ended(hub, item.id)
        assert (ItemStatus.DEAD, ["timed_out"]) == (
            done.status,
            [h.outcome for h in done.history],
        )


def test_bad_time_limits_are_refused_naming_the_value() -> None:
    with pytest.raises(Exception, match=r"time_limits=\.\.\.\)\['w'\] must be seconds > 0"):
        WorkService(time_limits={"w": 0})
    with pytest.raises(Exception, match="cancel_grace"):
        WorkService(cancel_grace=-1)
    assert ItemStatus.CANCELLED in FINAL


@pytest.mark.slow
async def test_with_redis_a_hub_cancels_an_item_another_hub_holds(
    redis_server_factory: Any,
) -> None:
    """Hub B cancels an item hub A's agent runs: Redis ends it at once (atomically, one
    log entry); A learns it at its next lease renewal and sends its agent CANCEL; the
    agent stays and takes the next item."""
    from supervisor.work.redis import RedisWorkQueue

    server = redis_server_factory()
    a = Hub(
        [agent("a1", "--v2")], work=WorkService(RedisWorkQueue(server.url, lease=1.5)), hub_id="A"
    )
    other = ChildSpec(id="o1", argv=[PY, "-c", raw_agent.PROGRAM], agent_type="o", shutdown=2.0)
    b = Hub([other], work=WorkService(RedisWorkQueue(server.url, lease=1.5)), hub_id="B")
    events = a.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        try:
            running = await wait_event(events, is_("running", "a1"))
            item = a.work.submit("w", {"hold": True})
            await held(a, "a1", item.id)
            cancelled = await b.work.cancel_any(item.id, "from B")
            assert (ItemStatus.CANCELLED, "cancelled: from B") == (
                cancelled.status,
                cancelled.error,
            )
            seen = await wait_event(events, is_("work_cancelled", "a1"))
            assert item.id == seen.item_id  # type: ignore[attr-defined]
            await until(lambda: a.work.assignment("a1") is None)
            nxt = a.work.submit("w", {"n": 5})
            assert ItemStatus.COMPLETED == (await ended(a, nxt.id)).status
            assert running.pid == a.agents.live("a1")  # type: ignore[attr-defined]
            assert ItemStatus.CANCELLED == (await b.work.fetch(item.id)).status
            client = server.client()
            try:
                ends = [r["outcome"] for r in record(client) if r["item"] == item.id]
                assert ["cancelled"] == ends
            finally:
                client.close()
            with pytest.raises(ControlError, match="has ended"):
                await b.work.cancel_any(item.id)
        finally:
            await b.stop()
            await a.stop()


@pytest.mark.slow
async def test_with_redis_an_items_time_limit_travels_with_it_to_the_hub_that_takes_it(
    redis_server_factory: Any,
) -> None:
    """Hub B (no agent of type w) submits an item with its own time limit; hub A, whose
    per-type default is far longer, takes it from Redis and applies the item's limit: the
    attempt ends timed_out, then the item dead. B's `work show` shows the limit."""
    from supervisor.work.redis import RedisWorkQueue

    server = redis_server_factory()
    a = Hub(
        [agent("a1", "--v2")],
        work=WorkService(
            RedisWorkQueue(server.url, lease=2), time_limits={"w": 600}, max_deliveries=1
        ),
        hub_id="A",
    )
    other = ChildSpec(id="o1", argv=[PY, "-c", raw_agent.PROGRAM], agent_type="o", shutdown=2.0)
    b_work = WorkService(RedisWorkQueue(server.url, lease=2), max_deliveries=1)
    b = Hub([other], work=b_work, hub_id="B")
    events = a.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        try:
            await wait_event(events, is_("running", "a1"))
            item = b.work.submit("w", {"sleep": 60}, time_limit=0.5)
            assert await b.work.stored(item.id)
            shown = await b.work.fetch(item.id)  # queued, or A took it already
            assert 0.5 == shown.time_limit and shown.status in (
                ItemStatus.QUEUED,
                ItemStatus.ASSIGNED,
            )
            assert 0.5 == shown.to_json()["time_limit"]
            timed = await wait_event(events, is_("work_timed_out"))
            assert (item.id, 0.5) == (timed.item_id, timed.time_limit)  # type: ignore[attr-defined]
            done = await ended(a, item.id)
            assert (ItemStatus.DEAD, ["timed_out"]) == (
                done.status,
                [h.outcome for h in done.history],
            )
            with trio.fail_after(TIMEOUT):  # A writes the end in its next round
                while (again := await b.work.fetch(item.id)).status is not ItemStatus.DEAD:
                    await trio.sleep(0.05)
            assert 0.5 == again.time_limit
        finally:
            await b.stop()
            await a.stop()


# The time limit's clock --------------------------------------------------------------


class _Stalls:
    """A stall meter the test moves by hand."""

    def __init__(self) -> None:
        self.total = 0.0
        self.watchers = 0

    def stalled(self) -> float:
        return self.total

    def watch(self) -> None:
        self.watchers += 1

    def unwatch(self) -> None:
        self.watchers -= 1


class _Port:
    def __init__(self) -> None:
        self.stalls = _Stalls()
        self.condemned: list[str] = []

    def condemn(self, agent_id: str, why: str, *, pid: int | None = None) -> bool:
        self.condemned.append(why)
        return True


async def test_a_stall_of_the_hub_does_not_count_against_the_time_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 10 s limit with 4 s of the hub's own stall in it runs out at 14 s, not 10 s."""
    from supervisor.work._controls import Controls
    from supervisor.work._dispatch import Dispatch, _Agent

    queue = MemoryWorkQueue()
    dispatch = Dispatch(queue, None, handback_pause=0, submit=lambda *a, **k: None)
    port = _Port()
    dispatch.hub = type("FakeHub", (), {"agents": port, "bus": None})()  # type: ignore[assignment]
    dispatch.publish = lambda *a, **k: None  # type: ignore[method-assign]
    dispatch.agents["a1"] = _Agent("w", "hub", 42, hello=True, running=True)
    item = queue.submit("w", None, max_deliveries=2, source="test", now=0.0)
    queue.assign("w", "a1", 0.0)
    async with trio.open_nursery() as nursery:
        dispatch.nursery = nursery
        controls = Controls(dispatch, None, 10.0)
        nursery.start_soon(controls._watch_limit, "a1", item.id, 1, 10.0)
        await trio.sleep(5)
        port.stalls.total = 4.0  # the hub did not run for 4 s of those
        await trio.sleep(8.9)  # 13.9 s
        assert ItemStatus.ASSIGNED == queue.get(item.id).status
        await trio.sleep(0.2)  # 14.1 s
        assert ItemStatus.QUEUED == queue.get(item.id).status
        assert ["timed_out"] == [h.outcome for h in queue.get(item.id).history]
        assert ["a1 ran past its time limit 10s (protocol v1: no CANCEL)"] == [
            why.replace(item.id, "a1") for why in port.condemned
        ]
        assert 0 == port.stalls.watchers
        nursery.cancel_scope.cancel()


def test_sqlite_keeps_the_time_limit_and_the_cancelled_status_across_a_reopen(
    tmp_path: Path,
) -> None:
    q = SqliteWorkQueue(tmp_path)
    try:
        a = q.submit("w", None, max_deliveries=1, source="test", now=1.0)
        a.time_limit = 30.0  # as WorkService.submit sets it, before the write
        b = q.submit("w", None, max_deliveries=1, source="test", now=1.0)
        q.cancel(b.id, "not needed", 2.0)
        q.flush_sync()
    finally:
        q.close()
    again = SqliteWorkQueue(tmp_path)
    try:
        assert 30.0 == again.get(a.id).time_limit
        assert (ItemStatus.CANCELLED, "cancelled: not needed") == (
            again.get(b.id).status,
            again.get(b.id).error,
        )
        assert [a.id] == [i.id for i in again.items() if i.status is ItemStatus.QUEUED]
    finally:
        again.close()
