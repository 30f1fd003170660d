"""The example tree ``hubvisor demo`` runs: a pool per agent type of placeholder agents."""

from __future__ import annotations

import sys

from strategies import ExponentialBackoff, FixedBackoff, Intensity, OneForOne, RestForOne

from ._spec import ChildSpec, PoolSpec, SupervisorSpec

__all__ = ["demo_spec"]


def _agent(kind: str, crash_rate: float, interval: float) -> ChildSpec:
    return ChildSpec(
        id=kind,
        argv=[
            sys.executable,
            "-m",
            "agents.placeholder",
            "--crash-rate",
            str(crash_rate),
            "--interval",
            str(interval),
        ],
        shutdown=3.0,
        start_period=0.5,
    )


def demo_spec(*, crash_rate: float = 0.15, interval: float = 1.0) -> SupervisorSpec:
    """The demo tree; ``crash_rate`` is the workers' chance to crash per unit of work."""
    return SupervisorSpec(
        name="hub",
        strategy=OneForOne(),
        intensity=Intensity(max_restarts=5, window=30),
        children=[
            PoolSpec(
                agent_type="worker",
                template=_agent("worker", crash_rate, interval),
                size=3,
                max_size=16,
                backoff=ExponentialBackoff(
                    initial=0.5, factor=2, cap=8, jitter=0.2, reset_after=10
                ),
                intensity=Intensity(max_restarts=20, window=60),
            ),
            PoolSpec(
                agent_type="qc",
                template=_agent("qc", 0.0, interval),
                size=2,
                max_size=8,
            ),
            SupervisorSpec(
                name="planning-review",
                strategy=RestForOne(),
                backoff=FixedBackoff(1.0),
                intensity=Intensity(max_restarts=5, window=60),
                children=[
                    PoolSpec(
                        agent_type="planning",
                        template=_agent("planning", 0.0, interval),
                        size=1,
                        max_size=4,
                        strategy=OneForOne(),
                    ),
                    PoolSpec(
                        agent_type="review",
                        template=_agent("review", crash_rate / 2, interval),
                        size=1,
                        max_size=4,
                    ),
                ],
            ),
        ],
    )
