"""Agent programs that hubvisor supervises.

``agents.worker``, ``agents.qc``, ``agents.planning`` and ``agents.review`` are the demo's
work-taking agents (``python -m agents.worker``); :class:`BaseAgent` is what they are
built on (``docs/agent-protocol.md`` describes the protocol for agents in any language).
``agents.notify`` sends readiness and heartbeats from any Python child, and
``agents.placeholder`` is a small stand-in agent that takes no work.

The names below load on first use, so ``import agents.notify`` stays free of trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Assignment, BaseAgent, HandBack, RetryAfter

__all__ = ["Assignment", "BaseAgent", "HandBack", "RetryAfter"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
