"""Time-dependent supervision (backoff, intensity windows, start period) on a MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from strategies import ExponentialBackoff, FixedBackoff, Intensity, OneForOne
from supervisor import ChildSpec, Event, Hub, SupervisorEscalation, SupervisorSpec
from supervisor.testing import SimBehaviour, SimulatedProcessBackend


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def child(cid: str, **kw: object) -> ChildSpec:
    return ChildSpec(id=cid, argv=["sim"], **kw)  # type: ignore[arg-type]


async def run_until_escalation(hub: Hub) -> tuple[list[Event], SupervisorEscalation | None]:
    events = hub.bus.subscribe()
    error = None
    try:
        await hub.serve()
    except SupervisorEscalation as exc:
        error = exc
    hub.bus.close()
    return [e async for e in events], error


async def test_exponential_backoff_delays_are_exact(autojump_clock: trio.testing.MockClock) -> None:
    """Consecutive crashes wait initial, initial*factor, ... up to the cap."""
    backend = SimulatedProcessBackend({"a": [SimBehaviour(lifetime=0.5, exit_code=1)]})
    spec = SupervisorSpec(
        name="root",
        children=[child("a")],
        intensity=Intensity(max_restarts=5, window=1000),
        backoff=ExponentialBackoff(initial=1, factor=2, cap=5, reset_after=100),
    )
    events, error = await run_until_escalation(Hub(spec, backend=backend))

    assert error is not None and error.child_id == "a"
    delays = [e.delay for e in events if e.kind == "backing_off"]  # type: ignore[attr-defined]
    assert [1, 2, 4, 5, 5] == delays
    starts = [e.at for e in events if e.kind == "starting"]
    # Each start = previous start + lifetime 0.5 + the delay.
    assert [pytest.approx(s) for s in [0, 1.5, 4.0, 8.5, 14.0, 19.5]] == starts


async def test_intensity_window_slides(autojump_clock: trio.testing.MockClock) -> None:
    """Crashes spaced wider than the window never escalate; tighter ones do."""
    backend = SimulatedProcessBackend({"a": [SimBehaviour(lifetime=2.0)]})
    spec = SupervisorSpec(
        name="root", children=[child("a")], intensity=Intensity(max_restarts=2, window=3)
    )
    hub = Hub(spec, backend=backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(20)  # ten crashes, each 2 s apart: at most 2 within any 3 s
        assert hub.root.which_children()[0].restarts >= 9
        await hub.stop()

    backend = SimulatedProcessBackend({"a": [SimBehaviour(lifetime=1.0)]})
    t0 = trio.current_time()
    events, error = await run_until_escalation(Hub(spec, backend=backend))
    assert error is not None
    # Restarts at t=1 and t=2 are allowed; the third, at t=3, is one too many within 3 s.
    escalated = [e for e in events if e.kind == "escalated"]
    assert [pytest.approx(3.0)] == [e.at - t0 for e in escalated]
    assert 3 == sum(e.kind == "starting" for e in events)


async def test_backoff_resets_after_stable_run(autojump_clock: trio.testing.MockClock) -> None:
    """A child that stayed up past reset_after waits the initial delay again."""
    lives = [SimBehaviour(lifetime=0.1), SimBehaviour(lifetime=0.1), SimBehaviour(lifetime=50)]
    backend = SimulatedProcessBackend({"a": [*lives, SimBehaviour(lifetime=0.1)]})
    spec = SupervisorSpec(
        name="root",
        children=[child("a")],
        intensity=Intensity(max_restarts=4, window=1000),
        backoff=ExponentialBackoff(initial=1, factor=3, cap=100, reset_after=10),
    )
    events, _ = await run_until_escalation(Hub(spec, backend=backend))
    delays = [e.delay for e in events if e.kind == "backing_off"]  # type: ignore[attr-defined]
    assert [1, 3, 1, 3] == delays


async def test_start_period_marks_failed_starts(autojump_clock: trio.testing.MockClock) -> None:
    """An exit before start_period is a failed start; after it the child was running."""
    backend = SimulatedProcessBackend(
        {"a": [SimBehaviour(lifetime=0.5), SimBehaviour(lifetime=3.0)]}
    )
    spec = SupervisorSpec(
        name="root",
        children=[child("a", start_period=1.0)],
        intensity=Intensity(max_restarts=1, window=1000),
        backoff=FixedBackoff(2.0),
    )
    events, _ = await run_until_escalation(Hub(spec, backend=backend))
    exits = [e for e in events if e.kind == "exited"]
    assert [True, False] == [e.failed_start for e in exits]  # type: ignore[attr-defined]
    running = [e.at for e in events if e.kind == "running"]
    assert [pytest.approx(3.5)] == running  # second spawn at 2.5 + start period 1.0


async def test_graceful_stop_escalates_to_sigkill(autojump_clock: trio.testing.MockClock) -> None:
    """A child ignoring its stop signal is SIGKILLed exactly after its shutdown timeout."""
    backend = SimulatedProcessBackend({"a": [SimBehaviour(on_stop="ignore")]})
    spec = SupervisorSpec(name="root", children=[child("a", shutdown=7.0)])
    hub = Hub(spec, backend=backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        t0 = trio.current_time()
        await hub.stop()
        assert pytest.approx(7.0) == trio.current_time() - t0
    proc = backend.current("a")
    assert [15, 9] == proc.signals
    assert proc.status is not None and proc.status.signal == 9


async def test_one_for_one_keeps_siblings(autojump_clock: trio.testing.MockClock) -> None:
    """Only the failed child restarts under one-for-one."""
    backend = SimulatedProcessBackend({"b": [SimBehaviour(lifetime=1.0), SimBehaviour()]})
    spec = SupervisorSpec(
        name="root", strategy=OneForOne(), children=[child("a"), child("b"), child("c")]
    )
    hub = Hub(spec, backend=backend)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(5)
        assert [0, 1, 0] == [c.restarts for c in hub.root.which_children()]
        await hub.stop()
