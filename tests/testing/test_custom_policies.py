"""A user's own restart policies, property-tested with supervisor.testing.

Written the way a user would: small attrs classes that satisfy the ``strategies``
protocols, an oracle that states what the strategy is meant to do, and the toolkit's
generators and checks.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import attrs
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings

from supervisor import ChildSpec, SupervisorSpec
from supervisor.testing import (
    Crash,
    InvariantViolation,
    Schedule,
    StrategyOracle,
    check_all,
    check_backoff,
    check_siblings,
    run_schedule,
    specs_and_schedules,
)
from tests.user_policies import OneAndNext


@attrs.frozen
class OneAndPrevious:
    """A buggy "one and next": it takes the child *before* the failed one."""

    def to_restart(self, failed: str, children: Sequence[str]) -> Sequence[str]:
        i = list(children).index(failed)
        return list(children[max(0, i - 1) : i + 1])


def one_and_next(failed: str, children: Sequence[str]) -> list[str]:
    """What OneAndNext is meant to do, stated independently of its code."""
    after = dict(itertools.pairwise(children))
    return [failed] + ([after[failed]] if failed in after else [])


@attrs.frozen
class LinearBackoff:
    """Wait ``step * attempt`` seconds, at most ``cap``; stable after ``reset`` seconds."""

    step: float = 0.5
    cap: float = 3.0
    reset: float = 10.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return min(self.cap, self.step * attempt)

    def resets_after(self, uptime: float) -> bool:
        return uptime >= self.reset

    def bounds(self, attempt: int) -> tuple[float, float]:
        d = min(self.cap, self.step * attempt)
        return (d, d)


ORACLES: dict[type, StrategyOracle] = {OneAndNext: one_and_next, OneAndPrevious: one_and_next}
CUSTOM = specs_and_schedules(
    strategies=st.just(OneAndNext()),
    backoff=st.builds(
        LinearBackoff,
        step=st.sampled_from([0.25, 0.5, 1.0]),
        cap=st.sampled_from([1.0, 3.0]),
    ),
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(CUSTOM)
def test_one_and_next_with_linear_backoff(
    spec_and_schedule: tuple[SupervisorSpec, Schedule],
) -> None:
    """The custom strategy and backoff keep every invariant on random trees."""
    spec, sched = spec_and_schedule

    check_all(run_schedule(spec, sched), oracles=ORACLES)


def test_buggy_custom_strategy_is_caught_and_shrunk() -> None:
    """The oracle catches a strategy that restarts the wrong neighbour, in a minimal tree."""

    def broken(ss: tuple[SupervisorSpec, Schedule]) -> bool:
        try:
            check_siblings(run_schedule(*ss), oracles=ORACLES)
        except InvariantViolation:
            return True
        return False

    spec, sched = find(
        specs_and_schedules(strategies=st.just(OneAndPrevious()), max_depth=1, max_crashes=4),
        broken,
        settings=settings(
            derandomize=True,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        ),
    )

    assert 2 == len(spec.children)
    # The first child has no previous sibling: the buggy strategy forgets its successor.
    assert [spec.children[0].id] == [c.child_id for c in sched.crashes]


def test_linear_backoff_bounds_are_its_own() -> None:
    """A custom backoff is checked against its own ``bounds``."""

    @attrs.frozen
    class Liar(LinearBackoff):
        def bounds(self, attempt: int) -> tuple[float, float]:
            return (0.0, 0.1)

    spec = SupervisorSpec(
        name="root", children=[ChildSpec(id="a", argv=["x"], notify=False)], backoff=Liar()
    )
    trace = run_schedule(spec, [Crash(1, "a")])

    with pytest.raises(InvariantViolation, match=r"bounds are \(0.0, 0.1\)"):
        check_backoff(trace)


def test_a_group_restarts_stop_does_not_delay_another_members_backoff() -> None:
    """Found by exploration: p1-agent-3 backs off 0.25 s, then p1-agent-1's group restart
    stops the stubborn p1-agent-2 (1 s to SIGKILL). The group's stop ran inside the loop,
    so p1-agent-3 restarted at 1 s; it runs in a task of its own now."""
    from strategies import Intensity
    from supervisor import PoolSpec
    from supervisor.testing import Crash, Exit

    def child(cid: str) -> ChildSpec:
        return ChildSpec(id=cid, argv=["simulated"], shutdown=1.0)

    backoff = LinearBackoff(step=0.25, cap=1.0)
    pool = PoolSpec(
        agent_type="p1",
        template=child("template"),
        size=3,
        max_size=3,
        strategy=OneAndNext(),
        intensity=Intensity(2, 0.5),
        backoff=backoff,
    )
    spec = SupervisorSpec(
        name="root",
        children=[child("c1"), pool, child("c2")],
        strategy=OneAndNext(),
        intensity=Intensity(0, 0.5),
        backoff=backoff,
    )
    crashes = (Crash(0.0, "p1-agent-3", Exit(1)), Crash(0.0, "p1-agent-1", Exit(1)))
    schedule = Schedule(crashes=crashes, stubborn=frozenset(["p1-agent-2"]))

    check_all(run_schedule(spec, schedule), oracles=ORACLES)
