"""Which siblings restart when one child fails: OTP's three static strategies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

from ._errors import InvalidPolicy


@runtime_checkable
class RestartStrategy(Protocol):
    """Decides which children restart when one of them fails.

    ``to_restart`` is a pure function: given the id of the failed child and the ids of
    all children of the supervisor in start order, it returns the ids to restart, in
    start order. The failed child must be in the result. The runtime stops the returned
    siblings that still run (in reverse start order) and starts all of them again (in
    start order).

    Example, a user-written strategy that restarts the failed child and the one after it::

        @attrs.frozen
        class OneAndNext:
            def to_restart(self, failed: str, children: Sequence[str]) -> Sequence[str]:
                i = list(children).index(failed)
                return list(children[i : i + 2])
    """

    def to_restart(self, failed: str, children: Sequence[str]) -> Sequence[str]:
        """Return the ids to restart, in start order, when ``failed`` failed."""
        ...


def _index(failed: str, children: Sequence[str]) -> int:
    try:
        return list(children).index(failed)
    except ValueError:
        raise InvalidPolicy(
            f"failed child {failed!r} is not among the children {list(children)!r}"
        ) from None


@attrs.frozen
class OneForOne:
    """Restart only the child that failed (OTP ``one_for_one``)."""

    def to_restart(self, failed: str, children: Sequence[str]) -> Sequence[str]:
        """Return ``[failed]``."""
        _index(failed, children)
        return [failed]


@attrs.frozen
class OneForAll:
    """Restart every child when one fails (OTP ``one_for_all``)."""

    def to_restart(self, failed: str, children: Sequence[str]) -> Sequence[str]:
        """Return all children in start order."""
        _index(failed, children)
        return list(children)


@attrs.frozen
class RestForOne:
    """Restart the failed child and every child started after it (OTP ``rest_for_one``)."""

    def to_restart(self, failed: str, children: Sequence[str]) -> Sequence[str]:
        """Return the suffix of ``children`` that starts at ``failed``."""
        return list(children)[_index(failed, children) :]
