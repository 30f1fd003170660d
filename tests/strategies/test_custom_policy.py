"""A user-written policy plugs into the runtime without touching it."""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs
import pytest
import trio
import trio.testing

from strategies import Intensity
from supervisor import ChildSpec, Hub, SupervisorSpec
from supervisor.testing import SimBehaviour, SimulatedProcessBackend
from tests.user_policies import OneAndNext


@attrs.frozen
class Linear:
    """Wait ``step * attempt`` seconds; never resets."""

    step: float = 1.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return self.step * attempt

    def resets_after(self, uptime: float) -> bool:
        return False

    def bounds(self, attempt: int) -> tuple[float, float]:
        return (self.step * attempt, self.step * attempt)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_user_strategy_and_backoff(autojump_clock: trio.testing.MockClock) -> None:
    """OneAndNext restarts b and c when b fails; Linear waits 1 s then 2 s."""
    backend = SimulatedProcessBackend(
        {"b": [SimBehaviour(lifetime=1), SimBehaviour(lifetime=1), SimBehaviour()]}
    )
    spec = SupervisorSpec(
        name="root",
        strategy=OneAndNext(),
        backoff=Linear(1.0),
        intensity=Intensity(5, 100),
        children=[ChildSpec(id=x, argv=["sim"]) for x in "abcd"],
    )
    hub = Hub(spec, backend=backend)
    events = hub.bus.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        await trio.sleep(30)
        restarts = {r.info.id: r.info.restarts for r in hub.which_children()}
        await hub.stop()
    hub.bus.close()
    delays = [e.delay async for e in events if e.kind == "backing_off"]  # type: ignore[attr-defined]

    assert {"a": 0, "b": 2, "c": 2, "d": 0} == restarts
    assert [1.0, 2.0] == delays


@attrs.frozen
class Broken:
    """A strategy with a bug: it forgets the failed child."""

    def to_restart(self, failed: str, children: Sequence[str]) -> Sequence[str]:
        return [c for c in children if c != failed]


@attrs.frozen
class Raises:
    """A backoff with a bug: it raises."""

    def delay(self, attempt: int, rng: random.Random) -> float:
        raise ZeroDivisionError("oops")

    def resets_after(self, uptime: float) -> bool:
        return True

    def bounds(self, attempt: int) -> tuple[float, float]:
        return (0.0, 0.0)


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        ({"strategy": Broken()}, "returned ['a'] without the failed child"),
        ({"backoff": Raises()}, "ZeroDivisionError: oops"),
    ],
)
async def test_buggy_policy_escalates_cleanly(
    autojump_clock: trio.testing.MockClock, policy: dict[str, object], fragment: str
) -> None:
    """A policy that raises or leaves out the failed child makes its supervisor give up in
    order, with a message naming the bug, instead of crashing the hub."""
    from supervisor import SupervisorEscalation

    backend = SimulatedProcessBackend({"b": [SimBehaviour(lifetime=1)]})
    inner = SupervisorSpec(
        name="inner",
        children=[ChildSpec(id=x, argv=["sim"]) for x in "ab"],
        **policy,  # type: ignore[arg-type]
    )
    spec = SupervisorSpec(name="root", intensity=Intensity(0, 1), children=[inner])
    hub = Hub(spec, backend=backend)
    with pytest.raises(SupervisorEscalation) as info:
        await hub.serve()

    assert "root/inner" in str(info.value) or "inner" == info.value.child_id
    assert fragment in info.value.reason
    assert [] == backend.live()
