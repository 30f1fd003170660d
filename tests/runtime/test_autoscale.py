"""Pools that scale with the work, with real agent processes: a pool at 0 spawns agents
when items arrive, grows within its bounds and retires them when the queue is done."""

from __future__ import annotations

import pytest
import trio

from supervisor import Autoscale, ChildSpec, Hub, InvalidPoolSpec, PoolSpec

from .. import raw_agent
from ..helpers import TIMEOUT, wait_event

pytestmark = pytest.mark.slow


def pool(**autoscale: float) -> PoolSpec:
    template = ChildSpec(id="w", argv=raw_agent.argv(), agent_type="w", heartbeat_timeout=5.0)
    policy = Autoscale(**{"min": 0, "max": 3, "cooldown": 0.2, **autoscale})  # type: ignore[arg-type]
    return PoolSpec(agent_type="w", template=template, size=0, max_size=4, autoscale=policy)


async def test_a_pool_at_zero_spawns_agents_for_work_and_retires_them_after() -> None:
    hub = Hub([pool(target_waiting=2, scale_down_after=0.5)])
    hub.autoscaler.tick = 0.05
    events = hub.bus.subscribe(kinds=("scaled", "work_completed", "starting"))
    sizes: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        assert hub.which_children() == [] or all(
            r.info.kind != "worker" for r in hub.which_children()
        )
        items = [hub.work.submit("w", {"n": n, "sleep": 0.3}) for n in range(8)]
        done = 0
        grown: list[object] = []
        with trio.fail_after(TIMEOUT):
            while done < len(items):
                event = await events.receive()
                if event.kind == "work_completed":
                    done += 1
                elif event.kind == "scaled":
                    grown.append(event)
                    sizes.append(event.target)
            shrink = await wait_event(events, lambda e: e.kind == "scaled" and e.action == "shrink")
        assert grown[0].action == "grow" and grown[0].size == 0
        assert "wait" in grown[0].reason
        assert max(sizes) == 3  # never above max, though 8 items waited
        assert shrink.target == 0 and "idle" in shrink.reason
        status = hub.autoscaler.status()
        assert list(status) == ["hub/w-pool"] or len(status) == 1
        assert next(iter(status.values()))["last"] == shrink.reason
        await hub.stop()
    assert all(hub.work.get(i.id).status == "completed" for i in items)


async def test_max_agents_caps_the_growth() -> None:
    hub = Hub([pool(target_waiting=1, scale_down_after=60)], max_agents=2)
    hub.autoscaler.tick = 0.05
    events = hub.bus.subscribe(kinds=("scaled",))
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        for n in range(6):
            hub.work.submit("w", {"n": n, "sleep": 1})
        with trio.fail_after(TIMEOUT):
            first = await events.receive()
        assert first.target == 2  # 6 wait, max 3, but the hub may run only 2 agents
        with trio.move_on_after(0.5):
            more = await events.receive()
            assert more.target <= 2
        await hub.stop()


def test_an_autoscaling_pool_must_start_within_its_bounds() -> None:
    with pytest.raises(InvalidPoolSpec, match="outside autoscale's 1..3"):
        PoolSpec(
            agent_type="w",
            template=ChildSpec(id="w", argv=["true"]),
            size=0,
            autoscale=Autoscale(min=1, max=3),
        )
    with pytest.raises(InvalidPoolSpec, match="larger than max_size 2"):
        PoolSpec(
            agent_type="w",
            template=ChildSpec(id="w", argv=["true"]),
            size=1,
            max_size=2,
            autoscale=Autoscale(min=1, max=3),
        )
