"""Deterministic testing of supervision trees: a simulated process backend.

Use :class:`SimulatedProcessBackend` in place of real processes, under trio's
``MockClock(autojump_threshold=0)``: the runtime, strategies, backoff and intensity
code are the production ones.
"""

from __future__ import annotations

from ._sim import (
    SimBehaviour as SimBehaviour,
    SimulatedProcess as SimulatedProcess,
    SimulatedProcessBackend as SimulatedProcessBackend,
)

__all__ = ["SimBehaviour", "SimulatedProcess", "SimulatedProcessBackend"]
