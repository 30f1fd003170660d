"""Property tests of a supervision tree: copy this file next to your own tests."""

from __future__ import annotations

import signal

from hypothesis import given, settings

from strategies import ExponentialBackoff, Intensity, RestForOne
from supervisor import ChildSpec, PoolSpec, SupervisorSpec
from supervisor.testing import (
    Crash,
    Kill,
    Schedule,
    check_all,
    run_schedule,
    schedules,
    specs_and_schedules,
)

# 1. The tree as it runs in production. In the simulation argv is never executed.
TREE = SupervisorSpec(
    name="hub",
    strategy=RestForOne(),
    intensity=Intensity(max_restarts=3, window=60),
    backoff=ExponentialBackoff(initial=1, cap=30, jitter=0.2),
    children=[
        ChildSpec(id="planner", argv=["python", "-m", "agents.planning"]),
        ChildSpec(id="qc", argv=["python", "-m", "agents.qc"], restart="transient"),
        PoolSpec(
            agent_type="worker",
            template=ChildSpec(id="worker", argv=["python", "-m", "agents.worker"]),
            size=3,
        ),
    ],
)


# 2. Whatever order its agents crash in, every invariant holds.
@settings(max_examples=100)
@given(schedules(TREE))
def test_any_crash_schedule(schedule: Schedule) -> None:
    check_all(run_schedule(TREE, schedule, max_agents=5))


# 3. One scenario, pinned down exactly: minutes of backoff take milliseconds.
def test_planner_crash_restarts_the_rest() -> None:
    trace = run_schedule(TREE, [Crash(at=5.0, child_id="planner", how=Kill(signal.SIGSEGV))])

    restarted = [e.child_id for e in trace.events if e.kind == "restarting"]
    assert ["planner", "qc", "worker-pool"] == restarted
    check_all(trace)


# 4. Random trees, for code that builds trees or for your own restart policies.
@settings(max_examples=30)
@given(specs_and_schedules(max_depth=1))
def test_random_trees(spec_and_schedule: tuple[SupervisorSpec, Schedule]) -> None:
    spec, schedule = spec_and_schedule
    check_all(run_schedule(spec, schedule))
