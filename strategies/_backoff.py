"""When a child restarts: delay policies between a failure and the restart."""

from __future__ import annotations

import math
import random
from typing import Protocol, runtime_checkable

import attrs

from ._errors import InvalidPolicy


@runtime_checkable
class BackoffPolicy(Protocol):
    """Decides how long to wait before restarting a failed child.

    The runtime keeps, per child, ``attempt``: the number of consecutive restarts of that
    child (1 for the first restart after a healthy run). Before it counts a failure it asks
    ``resets_after(uptime)``; ``True`` means the child ran long enough to be called stable,
    and ``attempt`` starts again at 1. ``delay`` must be a pure function of its arguments
    and the random numbers it draws from ``rng`` (the runtime passes a seeded generator,
    so simulated runs are reproducible).
    """

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before restart number ``attempt`` (1-based)."""
        ...

    def resets_after(self, uptime: float) -> bool:
        """Whether a child that ran ``uptime`` seconds counts as stable again."""
        ...

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The smallest and largest delay ``delay(attempt, ...)`` may return."""
        ...


def _check_non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidPolicy(
            f"{type(instance).__name__}.{attribute.name} must be a finite number of seconds "
            f"(got {value!r}); pass e.g. {attribute.name}=1.0"
        )
    if value < 0:
        raise InvalidPolicy(
            f"{type(instance).__name__}.{attribute.name} must be >= 0 (got {value!r}); "
            f"a delay cannot be negative, use 0 for none"
        )


@attrs.frozen
class NoBackoff:
    """Restart at once."""

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Always 0."""
        return 0.0

    def resets_after(self, uptime: float) -> bool:
        """Always stable: there is no state to reset."""
        return True

    def bounds(self, attempt: int) -> tuple[float, float]:
        """``(0, 0)``."""
        return (0.0, 0.0)


@attrs.frozen
class FixedBackoff:
    """Wait the same ``delay`` seconds before every restart."""

    seconds: float = attrs.field(default=1.0, validator=_check_non_negative)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Always ``seconds``."""
        return float(self.seconds)

    def resets_after(self, uptime: float) -> bool:
        """Always stable: the delay does not grow."""
        return True

    def bounds(self, attempt: int) -> tuple[float, float]:
        """``(seconds, seconds)``."""
        return (float(self.seconds), float(self.seconds))


@attrs.frozen
class ExponentialBackoff:
    """Wait ``initial * factor ** (attempt - 1)`` seconds, capped at ``cap``, with jitter.

    Args:
        initial: delay before the first restart.
        factor: growth per consecutive restart (>= 1).
        cap: the largest delay, jitter included.
        jitter: fraction in [0, 1]; the delay is drawn uniformly from
            ``[d * (1 - jitter), d]`` where ``d`` is the capped delay ("equal jitter"
            keeps the delay bounded by ``cap`` and spreads restarts of many children).
        reset_after: a child that stays up this many seconds is stable again and the
            next failure waits ``initial`` once more.

    Example::

        ExponentialBackoff(initial=0.5, factor=2, cap=30, jitter=0.2, reset_after=60)
    """

    initial: float = attrs.field(default=0.1, validator=_check_non_negative)
    factor: float = attrs.field(default=2.0, validator=_check_non_negative)
    cap: float = attrs.field(default=30.0, validator=_check_non_negative)
    jitter: float = attrs.field(default=0.0, validator=_check_non_negative)
    reset_after: float = attrs.field(default=60.0, validator=_check_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.factor < 1:
            raise InvalidPolicy(
                f"ExponentialBackoff.factor must be >= 1 (got {self.factor!r}); "
                "a factor below 1 would shrink the delay on every failure"
            )
        if self.jitter > 1:
            raise InvalidPolicy(
                f"ExponentialBackoff.jitter must be in [0, 1] (got {self.jitter!r}); "
                "it is the fraction of the delay that is randomised, e.g. jitter=0.2"
            )
        if self.cap < self.initial:
            raise InvalidPolicy(
                f"ExponentialBackoff.cap ({self.cap!r}) must be >= initial ({self.initial!r}); "
                "raise cap or lower initial"
            )

    def _capped(self, attempt: int) -> float:
        if attempt < 1:
            raise InvalidPolicy(f"attempt must be >= 1 (got {attempt!r})")
        # Compare exponents instead of computing factor ** n, which overflows for long
        # crash loops.
        if self.initial == 0:
            return 0.0
        if self.factor > 1 and (attempt - 1) * math.log(self.factor) > math.log(
            self.cap / self.initial
        ):
            return float(self.cap)
        return float(min(self.cap, self.initial * self.factor ** (attempt - 1)))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The capped delay for ``attempt``, less up to ``jitter`` of it at random."""
        d = self._capped(attempt)
        if self.jitter:
            return d * (1 - self.jitter * rng.random())
        return d

    def resets_after(self, uptime: float) -> bool:
        """Stable once the child stayed up ``reset_after`` seconds."""
        return uptime >= self.reset_after

    def bounds(self, attempt: int) -> tuple[float, float]:
        """``(capped * (1 - jitter), capped)``."""
        d = self._capped(attempt)
        return (d * (1 - self.jitter), d)
