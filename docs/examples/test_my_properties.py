"""Your own properties of a tree: "10 failures never take the hub down"."""

from __future__ import annotations

from hypothesis import given, settings

from strategies import Intensity
from supervisor import ChildSpec, PoolSpec, SupervisorSpec
from supervisor.testing import Schedule, check_all, run_schedule, schedules

TREE = SupervisorSpec(
    name="hub",
    intensity=Intensity(max_restarts=10, window=60),
    children=[
        ChildSpec(id="planner", argv=["python", "-m", "agents.planning"]),
        PoolSpec(
            agent_type="worker",
            template=ChildSpec(id="worker", argv=["python", "-m", "agents.worker"]),
            size=3,
            intensity=Intensity(max_restarts=10, window=60),
        ),
    ],
)


@settings(max_examples=50)
@given(schedules(TREE, max_crashes=10))
def test_ten_failures_never_take_the_hub_down(schedule: Schedule) -> None:
    trace = run_schedule(TREE, schedule)

    assert trace.hub_survived, trace.format()
    assert trace.never_escalated  # not even the pool gave up
    # Every crash that hit a process was followed by a restart of that child.
    for crash in trace.crashes_applied:
        assert trace.count("restarting", crash.crash.child_id) >= 1
    # The last snapshot is taken once the run settled: every child runs again.
    last = trace.snapshots[-1]
    assert all(state == "running" for _, _, state, _ in last.tree), last
    check_all(trace)  # and hubvisor kept its own promises
