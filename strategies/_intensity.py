"""When to give up: restart intensity, OTP's ``intensity``/``period`` pair."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

from ._errors import InvalidPolicy


@attrs.frozen
class IntensityDecision:
    """The outcome of recording one restart.

    Attributes:
        allowed: ``False`` means the limit is exhausted: the supervisor must stop its
            children and escalate to its parent.
        history: the restart times to keep for the next decision.
    """

    allowed: bool
    history: tuple[float, ...]


@runtime_checkable
class IntensityPolicy(Protocol):
    """Decides whether one more restart is allowed.

    ``record`` is a pure function of the past restart times kept by the supervisor and
    the current time (``trio.current_time()``, so ``MockClock`` drives it exactly).
    """

    def record(self, history: Sequence[float], now: float) -> IntensityDecision:
        """Record a restart at ``now`` and say whether it is within the limit."""
        ...

    def describe(self) -> str:
        """A short human phrase for the limit, used in escalation messages."""
        ...


@attrs.frozen
class Intensity:
    """At most ``max_restarts`` restarts within any ``window`` seconds.

    One more than that makes the supervisor give up, as in OTP: with
    ``Intensity(max_restarts=3, window=5)`` the fourth restart within five seconds
    escalates. ``max_restarts=0`` means any failure escalates.
    """

    max_restarts: int = attrs.field(default=3)
    window: float = attrs.field(default=5.0)

    @max_restarts.validator
    def _check_max(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidPolicy(
                f"Intensity.max_restarts must be an int >= 0 (got {value!r}); "
                "e.g. Intensity(max_restarts=3, window=5)"
            )

    @window.validator
    def _check_window(self, attribute: attrs.Attribute[float], value: float) -> None:
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise InvalidPolicy(
                f"Intensity.window must be a positive number of seconds (got {value!r}); "
                "e.g. Intensity(max_restarts=3, window=5)"
            )

    def record(self, history: Sequence[float], now: float) -> IntensityDecision:
        """Keep the restarts within ``window`` of ``now``, add ``now``, compare with the max."""
        threshold = now - self.window
        kept = (*(t for t in history if t >= threshold), now)
        return IntensityDecision(allowed=len(kept) <= self.max_restarts, history=kept)

    def describe(self) -> str:
        """E.g. ``"3 restarts in 5s"``."""
        return f"{self.max_restarts} restarts in {self.window:g}s"
