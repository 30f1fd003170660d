"""The planning agent: splits a task into pieces for workers.

Payload ``{"task": str, "seed": int, "pieces": K, "lines": L}``; submits K ``worker``
items ``{"task", "piece", "seed", "lines"}`` (piece 0 to K-1), then a ``review`` item
``{"task", "pieces": K}`` that waits for those K (``after``: it runs once every piece
completed, and is cancelled if one is dead), and returns ``{"pieces": K}``. Each submit
has a key made of the planning item's id, so a retried attempt creates nothing twice.
With ``HUBVISOR_DEMO_DEPENDENCIES=0`` (the demo on Redis, which has no dependencies
yet) it submits the pieces alone. Run as ``python -m agents.planning``
under hubvisor.
"""

from __future__ import annotations

import os

from ._demo_work import require, simulate_work
from .base import JSON, Assignment, BaseAgent

__all__ = ["PlanningAgent"]


class PlanningAgent(BaseAgent):
    """Splits ``{"task", "seed", "pieces", "lines"}`` into ``pieces`` worker items."""

    agent_type = "planning"

    def validate_assignment(self, payload: JSON) -> None:
        require(payload, task=str, seed=int, pieces=int, lines=int)

    async def do_work(self, assignment: Assignment) -> JSON:
        await simulate_work(assignment)
        p = assignment.payload
        if os.environ.get("HUBVISOR_DEMO_DEPENDENCIES") == "0":
            for piece in range(p["pieces"]):
                await assignment.submit(
                    "worker",
                    {"task": p["task"], "piece": piece, "seed": p["seed"], "lines": p["lines"]},
                )
            return {"pieces": p["pieces"]}
        keys = [f"{assignment.item}/piece-{piece}" for piece in range(p["pieces"])]
        for piece, key in enumerate(keys):
            await assignment.submit(
                "worker",
                {"task": p["task"], "piece": piece, "seed": p["seed"], "lines": p["lines"]},
                key=key,
            )
        await assignment.submit(
            "review",
            {"task": p["task"], "pieces": p["pieces"]},
            key=f"{assignment.item}/review",
            after=[f"worker:{key}" for key in keys],
        )
        return {"pieces": p["pieces"]}


if __name__ == "__main__":
    PlanningAgent.main()
