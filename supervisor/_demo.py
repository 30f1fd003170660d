"""What ``hubvisor demo`` runs: the four agent types in a pipeline, with work flowing.

A *planning* agent splits each task into pieces for the *workers*; a worker hashes and
counts the words of its piece's generated text and hands the result to *qc*, which
recomputes it and passes it to *review*, which accepts it. One worker crashes now and
then and one hangs now and then, so within a minute a new user sees spawns, work
flowing, a crash whose item is reclaimed and finished elsewhere, and a hang detected
and killed. A feeder service submits a new task every few seconds. No Redis needed.
"""

from __future__ import annotations

import sys
from typing import Any

import attrs
import trio

from strategies import ExponentialBackoff, FixedBackoff, Intensity, OneForOne, RestForOne

from ._spec import ChildSpec, PoolSpec, SupervisorSpec

__all__ = ["DemoFeeder", "demo_spec"]


def _agent(
    kind: str, *, env: dict[str, str] | None = None, child_id: str | None = None
) -> ChildSpec:
    return ChildSpec(
        id=child_id or kind,
        argv=[sys.executable, "-m", f"agents.{kind}"],
        agent_type=kind,
        env={"HUBVISOR_DEMO_WORK_SECONDS": "0.4", **(env or {})},
        shutdown=3.0,
        start_period=0.5,
        heartbeat_timeout=3.0,
    )


def demo_spec(
    *, crash_rate: float = 0.3, hang_rate: float = 0.2, dependencies: bool = True
) -> SupervisorSpec:
    """The demo tree; ``crash_rate`` and ``hang_rate`` are the faulty workers' chances
    per item to crash or to hang. With ``dependencies`` the planner submits its pieces
    with keys and a task review that waits for them (``after``; on every work store);
    without, it submits the pieces alone."""
    planning_env = {} if dependencies else {"HUBVISOR_DEMO_DEPENDENCIES": "0"}
    faulty = SupervisorSpec(
        name="faulty-workers",
        strategy=OneForOne(),
        # Restarts wait longer than an item's first retry delay (about 1 s): the item a
        # faulty worker dropped goes to a healthy worker, not back to the faulty one.
        backoff=ExponentialBackoff(initial=2.0, factor=2, cap=8, jitter=0.2, reset_after=10),
        intensity=Intensity(max_restarts=20, window=60),
        children=[
            _agent(
                "worker",
                child_id="worker-crashy",
                env={"HUBVISOR_DEMO_CRASH_RATE": str(crash_rate)},
            ),
            _agent(
                "worker",
                child_id="worker-hangy",
                env={"HUBVISOR_DEMO_HANG_RATE": str(hang_rate)},
            ),
        ],
    )
    return SupervisorSpec(
        name="hub",
        strategy=OneForOne(),
        intensity=Intensity(max_restarts=5, window=30),
        children=[
            PoolSpec(
                agent_type="worker",
                template=_agent("worker"),
                size=2,
                max_size=16,
                backoff=ExponentialBackoff(
                    initial=0.5, factor=2, cap=8, jitter=0.2, reset_after=10
                ),
                intensity=Intensity(max_restarts=20, window=60),
            ),
            faulty,
            PoolSpec(agent_type="qc", template=_agent("qc"), size=2, max_size=8),
            SupervisorSpec(
                name="planning-review",
                strategy=RestForOne(),
                backoff=FixedBackoff(1.0),
                intensity=Intensity(max_restarts=5, window=60),
                children=[
                    PoolSpec(
                        agent_type="planning",
                        template=_agent("planning", env=planning_env),
                        size=1,
                    ),
                    PoolSpec(agent_type="review", template=_agent("review"), size=1),
                ],
            ),
        ],
    )


@attrs.define
class DemoFeeder:
    """A hub service that submits a planning task every ``every`` seconds.

    Each task is ``{"task": "task-N", "seed": N, "pieces": pieces, "lines": lines}``;
    the pipeline turns it into ``pieces`` worker, qc and review items.
    """

    every: float = 4.0
    pieces: int = 4
    lines: int = 2000
    limit: int | None = None
    name: str = "demo-feeder"
    submitted: int = 0

    async def run(self, hub: Any, *, task_status: trio.TaskStatus[None]) -> None:
        """Submit tasks until cancelled (or ``limit`` tasks)."""
        task_status.started()
        while self.limit is None or self.submitted < self.limit:
            self.submitted += 1
            n = self.submitted
            hub.work.submit(
                "planning",
                {"task": f"task-{n}", "seed": n, "pieces": self.pieces, "lines": self.lines},
                source="demo",
            )
            await trio.sleep(self.every)
