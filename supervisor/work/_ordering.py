"""Retry delays (issue 21): how long a failed attempt's item waits before it is
delivered again, from the :mod:`strategies` backoff policies, per agent type."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

from strategies import BackoffPolicy, ExponentialBackoff

from .._errors import ConfigError
from ._item import WorkItem

__all__ = ["DEFAULT_RETRY_BACKOFF", "MAX_RETRY_AFTER", "BackoffPolicy", "RetryDelays"]

DEFAULT_RETRY_BACKOFF: BackoffPolicy = ExponentialBackoff(
    initial=1.0, factor=2.0, cap=60.0, jitter=0.2
)
"""1 s, 2 s, 4 s ... up to 60 s, each drawn from its lower 20 % (jitter)."""

MAX_RETRY_AFTER = 86_400.0  # seconds a FAIL's retry_after may ask at most (a day)


class RetryDelays:
    """Seconds a failed item waits before its next delivery.

    Args:
        policy: one backoff policy for every type, a mapping agent type -> policy (per
            pool; the key ``"*"`` for the types not named), or ``None`` (at once).
    """

    def __init__(self, policy: BackoffPolicy | Mapping[str, BackoffPolicy] | None) -> None:
        self._policies: Mapping[str, BackoffPolicy | None]
        if policy is None:
            self._policies = {}
        elif isinstance(policy, Mapping):
            for key, value in policy.items():
                _check_policy(value, f"retry_backoff[{key!r}]")
            self._policies = dict(policy)
        else:
            _check_policy(policy, "retry_backoff")
            self._policies = {"*": policy}

    def policy(self, agent_type: str) -> BackoffPolicy | None:
        """The policy for ``agent_type`` (``None``: retried at once)."""
        return self._policies.get(agent_type, self._policies.get("*"))

    def __call__(self, item: WorkItem | None, asked: Any = None) -> float | None:
        """The delay before ``item`` (just failed) is delivered again: the agent's
        ``retry_after`` when it gave a valid one, else the policy's delay for the item's
        n-th failed delivery; ``None``: at once."""
        valid = isinstance(asked, int | float) and not isinstance(asked, bool)
        if valid and math.isfinite(asked) and asked >= 0:
            return min(float(asked), MAX_RETRY_AFTER) or None
        if item is None:
            return None
        policy = self.policy(item.agent_type)
        if policy is None:
            return None
        # The jitter is drawn from the item and its delivery: spread over items, the same
        # in every run of one schedule (simulated runs replay exactly).
        rng = random.Random(f"{item.id}:{item.deliveries}")
        return policy.delay(max(1, item.deliveries), rng) or None


def _check_policy(policy: Any, name: str) -> None:
    if not isinstance(policy, BackoffPolicy):
        raise ConfigError(
            f"WorkService({name}=...) must be a strategies backoff policy such as "
            f"ExponentialBackoff(initial=1, cap=60) or None (got {policy!r:.80})"
        )
