"""Restart policies written as a user would (README's example), shared by the tests."""

from __future__ import annotations

from collections.abc import Sequence

import attrs


@attrs.frozen
class OneAndNext:
    """Restart the failed child and the one started right after it."""

    def to_restart(self, failed: str, children: Sequence[str]) -> Sequence[str]:
        i = list(children).index(failed)
        return list(children[i : i + 2])
