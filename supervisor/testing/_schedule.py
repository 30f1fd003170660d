"""Crash schedules: what happens to which simulated process, at which virtual time."""

from __future__ import annotations

import math
import signal
from collections.abc import Iterable
from typing import Any, TypeAlias

import attrs

from ._errors import InvalidSchedule

__all__ = ["Crash", "Exit", "Hang", "How", "Kill", "Schedule"]


@attrs.frozen
class Exit:
    """The process exits by itself with ``code`` (0 is a normal exit)."""

    code: int = 1


@attrs.frozen
class Kill:
    """The process is killed by ``signal`` that the supervisor did not send."""

    signal: int = int(signal.SIGKILL)


@attrs.frozen
class Hang:
    """The process stops heartbeating but keeps running (the watchdog must catch it)."""


How: TypeAlias = Exit | Kill | Hang


def _check_at(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
    ):
        raise InvalidSchedule(
            f"Crash.at must be a finite number of virtual seconds >= 0 after the tree "
            f"started (got {value!r}); e.g. Crash(at=1.5, child_id='worker-1')"
        )


def _check_how(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, Exit | Kill | Hang):
        raise InvalidSchedule(
            f"Crash.how must be Exit(code), Kill(signal) or Hang() (got {value!r}); "
            "e.g. Crash(at=1.0, child_id='a', how=Exit(1))"
        )


@attrs.frozen
class Crash:
    """At ``at`` virtual seconds after the tree started, the newest process of ``child_id``
    ends as ``how`` says.

    A crash that finds no live process of that child (it is backing off, stopped or was
    removed) does nothing; the trace records it as not applied.

    Example::

        Crash(at=2.0, child_id="planner", how=Kill(signal.SIGSEGV))
    """

    at: float = attrs.field(validator=_check_at)
    child_id: str
    how: How = attrs.field(default=Exit(1), validator=_check_how)


def _to_crashes(value: Iterable[Crash]) -> tuple[Crash, ...]:
    try:
        crashes = tuple(value)
    except TypeError:
        crashes = (value,)  # type: ignore[assignment]  # reported just below
    for c in crashes:
        if not isinstance(c, Crash):
            raise InvalidSchedule(
                f"Schedule.crashes must hold Crash objects (got {c!r}); "
                "e.g. Schedule([Crash(at=1.0, child_id='a')])"
            )
    # Stable: crashes at the same time apply in the order given.
    return tuple(sorted(crashes, key=lambda c: c.at))


def _to_ids(value: Iterable[str]) -> frozenset[str]:
    try:
        ids = frozenset(value) if not isinstance(value, str) else None
    except TypeError:
        ids = None
    if ids is None or not all(isinstance(i, str) for i in ids):
        raise InvalidSchedule(
            f"Schedule.stubborn must be a set of child ids (got {value!r}); "
            "e.g. stubborn={'worker-1'}"
        )
    return ids


@attrs.frozen
class Schedule:
    """A whole scenario for :func:`~supervisor.testing.run_schedule`.

    Args:
        crashes: what happens when; kept sorted by time (stable for equal times).
        stubborn: ids of children whose processes ignore their stop signal, so that only
            SIGKILL after the ``shutdown`` timeout ends them.
    """

    crashes: tuple[Crash, ...] = attrs.field(default=(), converter=_to_crashes)
    stubborn: frozenset[str] = attrs.field(default=frozenset(), converter=_to_ids)

    @property
    def end(self) -> float:
        """The time of the last crash (0 for an empty schedule)."""
        return self.crashes[-1].at if self.crashes else 0.0
