"""The qc agent: recomputes a worker's result and says whether it matches.

Payload ``{"task", "piece", "seed", "lines", "sha256", "words"}`` (a worker's qc item);
submits a ``review`` item ``{"task", "piece", "ok"}`` and returns ``{"ok": bool}``. Run
as ``python -m agents.qc`` under hubvisor.
"""

from __future__ import annotations

import trio

from ._demo_work import require, simulate_work
from .base import JSON, Assignment, BaseAgent
from .worker import compute

__all__ = ["QcAgent"]


class QcAgent(BaseAgent):
    """Checks a worker's hash and word count by recomputing them."""

    agent_type = "qc"

    def validate_assignment(self, payload: JSON) -> None:
        require(payload, task=str, piece=int, seed=int, lines=int, sha256=str, words=int)

    async def do_work(self, assignment: Assignment) -> JSON:
        await simulate_work(assignment)
        p = assignment.payload
        expected = await trio.to_thread.run_sync(compute, p, abandon_on_cancel=True)
        ok = expected["sha256"] == p["sha256"] and expected["words"] == p["words"]
        if not ok:
            self.log(f"task {p['task']} piece {p['piece']}: worker result does not match")
        await assignment.submit("review", {"task": p["task"], "piece": p["piece"], "ok": ok})
        return {"ok": ok}


if __name__ == "__main__":
    QcAgent.main()
