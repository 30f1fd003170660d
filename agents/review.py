"""The review agent: accepts a piece that passed qc.

Payload ``{"task": str, "piece": int, "ok": bool}``; returns ``{"accepted": ok}``. Run
as ``python -m agents.review`` under hubvisor.
"""

from __future__ import annotations

from ._demo_work import require, simulate_work
from .base import JSON, Assignment, BaseAgent

__all__ = ["ReviewAgent"]


class ReviewAgent(BaseAgent):
    """Accepts each piece whose qc check passed."""

    agent_type = "review"

    def validate_assignment(self, payload: JSON) -> None:
        require(payload, task=str, piece=int, ok=bool)

    async def do_work(self, assignment: Assignment) -> JSON:
        await simulate_work(assignment)
        return {"accepted": assignment.payload["ok"]}


if __name__ == "__main__":
    ReviewAgent.main()
