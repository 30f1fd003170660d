"""Agent programs that hubvisor supervises.

``agents.placeholder`` is a small stand-in agent used by ``hubvisor demo``.
"""

from __future__ import annotations

__all__: list[str] = []
