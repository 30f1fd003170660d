"""A group restart (one-for-all, rest-for-one, a custom strategy) stops its siblings in a
task of its own, in OTP's order, while its supervisor goes on: simulated processes on a
MockClock, one sibling whose graceful stop takes 10 s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from strategies import FixedBackoff, Intensity, OneForAll
from supervisor import ChildSpec, Event, Hub, PoolSpec, SupervisorSpec
from supervisor.testing import SimBehaviour, SimulatedProcessBackend
from tests.user_policies import OneAndNext

SLOW = SimBehaviour(stop_delay=10.0)  # exits 10 s after its stop signal
KINDS = ("exited", "stopped", "backing_off", "restarting", "starting", "supervisor_stopped")


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def child(cid: str) -> ChildSpec:
    return ChildSpec(id=cid, argv=["sim"], shutdown=60.0)


def rows(events: Sequence[Event], since: float = 0.5) -> list[tuple[Any, ...]]:
    """``(at, kind, child, reason)`` of the supervision events after ``since``."""
    return [
        (round(e.at, 6), e.kind, e.child_id, getattr(e, "reason", None))
        for e in events
        if e.kind in KINDS and e.at > since
    ]


async def test_the_supervisor_stopped_during_a_group_stop_waits_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One-for-all over a, b, c; a fails at 1 and the group stops c, then b (10 s). A
    stop of the supervisor at 2 waits for b, calls the restart off and stops the rest,
    with the events of a stop done inside the loop."""
    backend = SimulatedProcessBackend({"a": [SimBehaviour(lifetime=1.0)], "b": [SLOW]})
    spec = SupervisorSpec(
        name="root", strategy=OneForAll(), children=[child("a"), child("b"), child("c")]
    )
    hub = Hub(spec, backend=backend)
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(2)
        await hub.stop()
        assert 11 == pytest.approx(trio.current_time())
    hub.bus.close()

    assert [
        (1, "exited", "a", None),
        (1, "exited", "c", None),
        (1, "stopped", "c", "restarting"),
        (11, "exited", "b", None),
        (11, "stopped", "b", "restarting"),
        (11, "stopped", "a", "shutdown"),
        (11, "stopped", "b", "shutdown"),
        (11, "stopped", "c", "shutdown"),
        (11, "supervisor_stopped", "root", None),
    ] == rows([e async for e in events])


async def test_an_exit_during_a_group_stop_is_handled_after_the_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As in OTP, one restart at a time: a fails at 1 and its group (a and b, one and
    next) stops b until 11; c's exit at 2 is decided once a and b have started again."""
    backend = SimulatedProcessBackend(
        {"a": [SimBehaviour(lifetime=1.0), SimBehaviour()], "b": [SLOW, SimBehaviour()]}
    )
    backend.script["c"] = [SimBehaviour(lifetime=2.0), SimBehaviour()]  # type: ignore[index]
    spec = SupervisorSpec(
        name="root",
        strategy=OneAndNext(),
        intensity=Intensity(5, 100),
        children=[child("a"), child("b"), child("c")],
    )
    hub = Hub(spec, backend=backend)
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(20)
        await hub.stop()
    hub.bus.close()

    assert [
        (1, "exited", "a", None),
        (2, "exited", "c", None),
        (11, "exited", "b", None),
        (11, "stopped", "b", "restarting"),
        (11, "restarting", "a", None),
        (11, "starting", "a", None),
        (11, "restarting", "b", None),
        (11, "starting", "b", None),
        (11, "restarting", "c", None),
        (11, "starting", "c", None),
    ] == rows([e async for e in events if e.at < 20])


async def test_requests_during_a_group_stop(autojump_clock: trio.testing.MockClock) -> None:
    """While the group of a and b stops b (1 to 11), a request about c returns at once;
    a terminate of a waits for the group, then calls its restart off: b stays down too."""
    backend = SimulatedProcessBackend({"a": [SimBehaviour(lifetime=1.0)], "b": [SLOW]})
    spec = SupervisorSpec(
        name="root",
        strategy=OneAndNext(),
        backoff=FixedBackoff(1.0),
        children=[child("a"), child("b"), child("c")],
    )
    hub = Hub(spec, backend=backend)
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(2)
        await hub.restart_child("c")
        assert 2 == pytest.approx(trio.current_time())
        states = {r.info.id: r.info.state.value for r in hub.which_children()}
        assert {"a": "stopped", "b": "stopping"} == {x: states[x] for x in "ab"}
        await hub.terminate_child("a")
        assert 11 == pytest.approx(trio.current_time())
        await trio.sleep(5)  # well past the backoff
        states = {r.info.id: r.info.state.value for r in hub.which_children()}
        assert {"a": "stopped", "b": "stopped", "c": "running"} == states
        await hub.stop()
    hub.bus.close()

    group = [r for r in rows([e async for e in events]) if r[2] in "ab"]
    assert [
        (1, "exited", "a", None),
        (11, "exited", "b", None),
        (11, "stopped", "b", "restarting"),
        (11, "backing_off", "a", None),
        (11, "stopped", "a", "terminated"),
        (11, "stopped", "b", "terminated"),
    ] == group


async def test_a_pools_group_stops_its_members_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A one-for-all pool of 3: agent-1 fails at 1; agent-2 and agent-3 are stopped at
    once (agent-3 at 1, the slow agent-2 at 11), then all three start in order."""
    backend = SimulatedProcessBackend(
        {"w-agent-1": [SimBehaviour(lifetime=1.0), SimBehaviour()], "w-agent-2": [SLOW]}
    )
    pool = PoolSpec(agent_type="w", template=child("t"), size=3, strategy=OneForAll())
    hub = Hub(SupervisorSpec(name="root", children=[pool]), backend=backend)
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(20)
        await hub.stop()
    hub.bus.close()

    assert [
        (1, "exited", "w-agent-1", None),
        (1, "exited", "w-agent-3", None),
        (1, "stopped", "w-agent-3", "restarting"),
        (11, "exited", "w-agent-2", None),
        (11, "stopped", "w-agent-2", "restarting"),
        (11, "restarting", "w-agent-1", None),
        (11, "starting", "w-agent-1", None),
        (11, "restarting", "w-agent-2", None),
        (11, "starting", "w-agent-2", None),
        (11, "restarting", "w-agent-3", None),
        (11, "starting", "w-agent-3", None),
    ] == rows([e async for e in events if e.at < 20])
