"""``hub.work.wait``: the item once it has ended, with real agents (memory and Redis).

The waits are event-driven: every test waits on the real outcome of a real agent's work
(or its timeout), never on a sleep.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from strategies import Intensity
from supervisor import (
    ChildSpec,
    ConfigError,
    ControlError,
    Hub,
    ItemStatus,
    SupervisorSpec,
    WaitTimeout,
    WorkService,
)
from supervisor.work import FINAL, WorkItem
from supervisor.work._waiters import Waiters

from ..helpers import PY, TIMEOUT, is_, running, until, wait_event
from .test_service import AGENT, agent


async def test_a_wait_returns_the_item_once_it_completed_failed_or_was_dead_lettered() -> None:
    """completed, failed (FAIL retry=false) and dead (its agent always crashes) each end
    the wait with the item as it ended."""
    crashing = AGENT.replace('if p.get("crash") and attempt == 1:', 'if p.get("crash"):')
    spec = SupervisorSpec(
        name="hub",
        children=[
            agent("a1"),
            ChildSpec(id="c1", argv=[PY, "-c", crashing], agent_type="c", shutdown=2.0),
        ],
        intensity=Intensity(20, 10),
    )
    async with running(spec) as (hub, _):
        done = hub.work.submit("w", {"n": 21})
        bad = hub.work.submit("w", {"fail": "bad input"})
        dead = hub.work.submit("c", {"crash": True}, max_deliveries=2)
        with trio.fail_after(TIMEOUT):
            got = [await hub.work.wait(i.id) for i in (done, bad, dead)]
        assert [ItemStatus.COMPLETED, ItemStatus.FAILED, ItemStatus.DEAD] == [g.status for g in got]
        assert 42 == got[0].result["double"]
        assert "bad input" == got[1].error
        assert "used all 2 deliveries" in (got[2].error or "")
        assert 0 == hub.work.waiters
        # An item that has ended is returned at once, however often.
        assert got[0] is await hub.work.wait(done.id, timeout=0)


async def test_a_wait_times_out_with_the_item_as_last_seen_and_the_item_goes_on() -> None:
    async with running([agent("a1")]) as (hub, events):
        item = hub.work.submit("w", {"n": 2, "sleep": 1.0})
        await wait_event(events, is_("work_assigned"))
        with pytest.raises(WaitTimeout) as caught:
            await hub.work.wait(item.id, timeout=0.05)
        assert (item.id,) == caught.value.item_ids
        assert ItemStatus.ASSIGNED == caught.value.items[0].status
        assert f"{item.id!r} (still assigned) did not end within 0.05s" in str(caught.value)
        assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, ControlError)
        assert 0 == hub.work.waiters
        with trio.fail_after(TIMEOUT):
            assert ItemStatus.COMPLETED == (await hub.work.wait(item.id)).status


@pytest.mark.parametrize("timeout", [-1, float("nan"), "5", True])
async def test_a_bad_timeout_or_an_unknown_id_is_an_error_naming_it(timeout: Any) -> None:
    async with running([agent("a1")]) as (hub, _):
        with pytest.raises(ControlError, match="no work item 'w-404'"):
            await hub.work.wait("w-404")
        item = hub.work.submit("w", {"n": 1})
        with pytest.raises(ControlError, match="timeout must be seconds >= 0"):
            await hub.work.wait(item.id, timeout=timeout)
        assert 0 == hub.work.waiters


async def test_a_cancelled_wait_leaves_no_waiter_behind() -> None:
    async with running([agent("a1")]) as (hub, events):
        item = hub.work.submit("w", {"hold": True})
        await wait_event(events, is_("work_assigned"))
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(hub.work.wait, item.id)
            await until(lambda: hub.work.waiters == 3)
            nursery.cancel_scope.cancel()
        assert 0 == hub.work.waiters
        assert {} == hub.work._waiters._by_item


async def test_the_hub_stopping_ends_a_wait_with_an_error_saying_so() -> None:
    hub = Hub([agent("a1")])
    events = hub.bus.subscribe()
    failure: list[BaseException] = []

    async def waiter(item_id: str) -> None:
        try:
            await hub.work.wait(item_id)
        except ControlError as exc:
            failure.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        item = hub.work.submit("w", {"hold": True})
        await wait_event(events, is_("work_assigned"))
        nursery.start_soon(waiter, item.id)
        await until(lambda: hub.work.waiters == 1)
        await hub.stop()
    assert 0 == hub.work.waiters
    assert [
        f"the hub stopped before work item {item.id!r} ended (it is queued); it is lost "
        "with the hub (kept in its memory only)"
    ] == [str(e) for e in failure]
    # And a wait after the stop says so at once.
    with pytest.raises(ControlError, match="the hub stopped before"):
        await hub.work.wait(item.id)


async def test_waiters_are_capped_and_the_cap_frees_as_waits_end() -> None:
    """docs/bounds.md: the (max_waiters + 1)th wait is refused, naming the cap; a wait
    that returns frees its place."""
    with pytest.raises(ConfigError, match="max_waiters"):
        WorkService(max_waiters=0)
    async with running([agent("a1")], work=WorkService(max_waiters=2)) as (hub, events):
        held = hub.work.submit("w", {"hold": True})
        await wait_event(events, is_("work_assigned"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.work.wait, held.id)
            nursery.start_soon(hub.work.wait, held.id)
            await until(lambda: hub.work.waiters == 2)
            with pytest.raises(ControlError, match=r"max_waiters=2\); wait for fewer"):
                await hub.work.wait(held.id)
            nursery.cancel_scope.cancel()
        quick = hub.work.submit("w", {"n": 1})  # queued behind the held one: never runs
        with pytest.raises(WaitTimeout):
            await hub.work.wait(quick.id, timeout=0)
        assert 0 == hub.work.waiters


def test_final_is_the_ended_statuses_and_the_json_says_it() -> None:
    """A new final status is one entry in FINAL; an item's JSON carries ``final``."""
    assert {
        ItemStatus.COMPLETED,
        ItemStatus.FAILED,
        ItemStatus.DEAD,
        ItemStatus.CANCELLED,
    } == set(FINAL)
    item = WorkItem(id="w-1", agent_type="w", payload=None, max_deliveries=1, created_at=0)
    assert item.to_json()["final"] is False
    item.status = ItemStatus.DEAD
    assert item.to_json()["final"] is True


async def test_a_store_is_polled_with_backoff_and_a_failed_read_is_tried_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a store, a waiter reads its item again after 0.5 s, then 1 s, then every 2 s;
    a read the store fails (an outage) does not end the wait. Without a store nothing is
    read again but on the item's events."""
    item = WorkItem(id="w-1", agent_type="w", payload=None, max_deliveries=1, created_at=0)
    reads: list[float] = []

    async def read(item_id: str) -> WorkItem:
        reads.append(trio.current_time())
        if len(reads) == 2:
            raise OSError("the store does not answer")
        if len(reads) == 4:
            item.status = ItemStatus.COMPLETED
        return item

    start = trio.current_time()
    got = await Waiters().wait("w-1", None, read, poll=True)
    assert ItemStatus.COMPLETED == got.status
    assert [0.0, 0.5, 1.5, 3.5] == [round(t - start, 3) for t in reads]

    item.status, reads[:] = ItemStatus.QUEUED, []
    waiters = Waiters()
    with trio.move_on_after(100):
        await waiters.wait("w-1", None, read, poll=False)
    assert 1 == len(reads)  # memory: no polling at all
    assert 0 == waiters.count
