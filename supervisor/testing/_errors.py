"""The error ``supervisor.testing`` raises for bad schedules and runner arguments."""

from __future__ import annotations

from .._errors import InvalidSpec

__all__ = ["InvalidSchedule"]


class InvalidSchedule(InvalidSpec):
    """A crash schedule, or an argument of :func:`run_schedule` or of a strategy, is invalid.

    Raised when the value is built or passed, before anything runs; the message names
    the value and what to pass instead. It is an :class:`~supervisor.InvalidSpec` (so
    also a :class:`~supervisor.HubvisorError` and a ``ValueError``).
    """
