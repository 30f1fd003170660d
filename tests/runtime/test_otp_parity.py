"""OTP parity (issue 13): scenarios from OTP's supervisor_SUITE, on hubvisor's public API."""

from __future__ import annotations

import math
import signal

import pytest
import trio
import trio.testing

from strategies import FixedBackoff, OneForAll, RestForOne
from supervisor import (
    INFINITY,
    ChildNotFound,
    ChildSpec,
    ControlError,
    Hub,
    InvalidChildSpec,
    OutputSpec,
    SupervisorSpec,
)
from supervisor.testing import SimBehaviour, SimulatedProcessBackend

from ..helpers import TIMEOUT, is_, python_child, running, sleeper, wait_event


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_temporary_child_is_forgotten_after_terminate_child() -> None:
    """OTP forgets a temporary child's spec however it terminates."""
    spec = sleeper("t", restart="temporary")
    async with running([sleeper("p"), spec]) as (hub, events):
        await wait_event(events, is_("running", "t"))
        await hub.terminate_child("t")
        assert ["p"] == [r.info.id for r in hub.which_children()]
        assert 1 == hub.count_children()["specs"]
        with pytest.raises(ChildNotFound):
            await hub.restart_child("t")
        await hub.start_child("hub", spec)  # the same spec starts again
        await wait_event(events, is_("running", "t"))


@pytest.mark.parametrize("strategy", [RestForOne(), OneForAll()], ids=["rest", "all"])
async def test_terminate_during_pending_group_restart_leaves_the_group_down(
    autojump_clock: trio.testing.MockClock, strategy: RestForOne | OneForAll
) -> None:
    """a crashes, a and b back off 5 s; terminate_child(a) then: b stays down too
    (OTP hanging_restart_loop_rest_for_one), until restarted on purpose."""
    backend = SimulatedProcessBackend(
        {"a": [SimBehaviour(lifetime=1.0), SimBehaviour()], "b": [SimBehaviour()]}
    )
    spec = SupervisorSpec(
        name="root",
        children=[ChildSpec(id="a", argv=["sim"]), ChildSpec(id="b", argv=["sim"])],
        strategy=strategy,
        backoff=FixedBackoff(5),
    )
    hub = Hub(spec, backend=backend)
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await wait_event(events, is_("backing_off", "a"))
        states = {r.info.id: r.info.state.value for r in hub.which_children()}
        assert {"a": "backing_off", "b": "backing_off"} == states
        await trio.sleep(1)
        await hub.terminate_child("a")
        await trio.sleep(30)  # well past the backoff
        states = {r.info.id: r.info.state.value for r in hub.which_children()}
        assert {"a": "stopped", "b": "stopped"} == states
        await hub.restart_child("b")
        states = {r.info.id: r.info.state.value for r in hub.which_children()}
        assert {"a": "stopped", "b": "starting"} == states
        await hub.stop()


async def test_start_child_with_something_that_is_not_a_spec() -> None:
    """A clear ControlError naming the value, not an AttributeError."""
    async with running([sleeper("a")]) as (hub, _):
        with pytest.raises(ControlError, match="start_child needs a ChildSpec.*got 'worker-9'"):
            await hub.start_child("hub", "worker-9")  # type: ignore[arg-type]
        with pytest.raises(ControlError, match="start_child needs"):
            await hub.root.start_child(42)  # type: ignore[arg-type]


def test_shutdown_infinity_is_accepted_and_bad_values_refused() -> None:
    assert math.isinf(ChildSpec(id="a", argv=["x"], shutdown=INFINITY).shutdown)  # type: ignore[arg-type]
    assert math.isinf(ChildSpec(id="a", argv=["x"], shutdown="infinity").shutdown)  # type: ignore[arg-type]
    assert math.isinf(ChildSpec(id="a", argv=["x"], shutdown=math.inf).shutdown)  # type: ignore[arg-type]
    for bad in (-1, math.nan, -math.inf, "forever"):
        with pytest.raises(InvalidChildSpec, match="shutdown"):
            ChildSpec(id="a", argv=["x"], shutdown=bad)  # type: ignore[arg-type]


async def test_shutdown_infinity_waits_for_the_child_to_finish() -> None:
    """An agent finishing its task on SIGTERM is waited for, never SIGKILLed."""
    code = (
        "import signal, sys, time\n"
        "def finish(*_):\n"
        "    time.sleep(2.5)\n"  # longer than any default shutdown timeout here
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, finish)\n"
        "print('ready', flush=True)\n"
        "time.sleep(1000)\n"
    )
    spec = python_child("slow", code, shutdown=INFINITY, output=OutputSpec(events=True))
    async with running([spec]) as (hub, events):
        await wait_event(events, is_("output", "slow", line="ready"))  # its handler is set
        with trio.fail_after(TIMEOUT):
            await hub.terminate_child("slow")
        (row,) = hub.which_children()
        assert "exited with code 0" == row.info.last_exit
        assert signal.SIGKILL.name not in (row.info.last_exit or "")
