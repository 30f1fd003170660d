"""The worker agent: generates a piece's text, hashes it and counts its words.

Payload ``{"task": str, "piece": int, "seed": int, "lines": int}``; submits a ``qc``
item with the payload plus ``"sha256"`` and ``"words"`` and returns ``{"sha256": hex,
"words": int}``. Run as ``python -m agents.worker`` under hubvisor.
"""

from __future__ import annotations

from typing import Any

import trio

from ._demo_work import digest, generate_text, require, simulate_work
from .base import JSON, Assignment, BaseAgent

__all__ = ["WorkerAgent"]


def compute(payload: dict[str, Any]) -> dict[str, JSON]:
    """``{"sha256", "words"}`` of the piece's generated text."""
    return digest(generate_text(payload["seed"], payload["piece"], payload["lines"]))


class WorkerAgent(BaseAgent):
    """Hashes and counts the words of one piece of generated text."""

    agent_type = "worker"

    def validate_assignment(self, payload: JSON) -> None:
        require(payload, task=str, piece=int, seed=int, lines=int)

    async def do_work(self, assignment: Assignment) -> JSON:
        await simulate_work(assignment)
        p = assignment.payload
        # CPU-bound: in a thread, so heartbeats and PINGs are answered meanwhile.
        result = await trio.to_thread.run_sync(compute, p, abandon_on_cancel=True)
        check = {k: p[k] for k in ("task", "piece", "seed", "lines")}
        await assignment.submit("qc", {**check, **result})
        return result


if __name__ == "__main__":
    WorkerAgent.main()
