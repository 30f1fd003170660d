"""The review agent: accepts a piece that passed qc.

Payload ``{"task": str, "piece": int, "ok": bool}``; returns ``{"accepted": ok}``. The
planner's ``{"task": str, "pieces": K}`` (handed out once every piece's worker item
completed) returns ``{"task": task, "pieces": K}``. Run as ``python -m agents.review``
under hubvisor.
"""

from __future__ import annotations

from ._demo_work import require, simulate_work
from .base import JSON, Assignment, BaseAgent

__all__ = ["ReviewAgent"]


class ReviewAgent(BaseAgent):
    """Accepts each piece whose qc check passed."""

    agent_type = "review"

    def validate_assignment(self, payload: JSON) -> None:
        if isinstance(payload, dict) and "pieces" in payload:
            require(payload, task=str, pieces=int)
        else:
            require(payload, task=str, piece=int, ok=bool)

    async def do_work(self, assignment: Assignment) -> JSON:
        await simulate_work(assignment)
        p = assignment.payload
        if "pieces" in p:  # the planner's review of the whole task: every piece is done
            return {"task": p["task"], "pieces": p["pieces"]}
        return {"accepted": p["ok"]}


if __name__ == "__main__":
    ReviewAgent.main()
