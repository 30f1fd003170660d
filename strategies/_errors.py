"""The root of hubvisor's exception hierarchy, and the policies' own error.

The root lives here, in the lowest layer, so that the policies raise errors of the same
hierarchy as the runtime (``supervisor.HubvisorError`` is this class).
"""

from __future__ import annotations

__all__ = ["HubvisorError", "InvalidPolicy"]


class HubvisorError(Exception):
    """Base class of every error hubvisor raises on purpose."""


class InvalidPolicy(HubvisorError, ValueError):
    """A restart policy (strategy, backoff or intensity) got a bad value."""
