"""Retry delays (issue 21): how long a failed attempt's item waits before it is
delivered again, from the :mod:`strategies` backoff policies, per agent type."""

from __future__ import annotations

import math
import random
import time
import weakref
from collections.abc import Mapping
from typing import Any

import trio

from strategies import BackoffPolicy, ExponentialBackoff

from .._errors import ConfigError
from ._item import ItemStatus, Verdict, WorkItem
from ._queue import MemoryWorkQueue

__all__ = [
    "DEFAULT_RETRY_BACKOFF",
    "MAX_RETRY_AFTER",
    "BackoffPolicy",
    "LocalOrdering",
    "RetryDelays",
    "after_failure",
    "fail_then_delay",
    "reclaim_then_delay",
    "wait_for_wake",
]

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


class LocalOrdering:
    """Delays for a queue that decides in a local :class:`MemoryWorkQueue` (``_local``):
    the SQLite and Redis queues."""

    def _decider(self) -> MemoryWorkQueue:
        local: MemoryWorkQueue = self._local  # type: ignore[attr-defined]
        return local

    def retry_later(self, item_id: str, seconds: float) -> WorkItem | None:
        """Hold a failed item ``seconds`` (see :meth:`MemoryWorkQueue.retry_later`). On
        Redis the item stays leased to this hub (renewed as any it holds) and waits in
        its memory: if the hub dies, the hub that takes the item over delivers it at
        once (a graceful stop releases it to the stream, ready)."""
        return self._decider().retry_later(item_id, seconds)

    def delayed(self, agent_type: str) -> int:
        """Items of ``agent_type`` held here that wait for their time."""
        return self._decider().delayed(agent_type)

    def next_ready(self) -> float | None:
        """The earliest Unix time a delayed item held here becomes ready, if any."""
        return self._decider().next_ready()

    def clock(self) -> float:
        """The wall clock delays are read against (the decisions' own)."""
        return self._decider().clock()


RETRY_DELAYS: weakref.WeakKeyDictionary[Any, RetryDelays] = weakref.WeakKeyDictionary()
"""Each work service's dispatch -> its retry delays (the service registers them)."""


def fail_then_delay(dispatch: Any, agent: str, body: Any, retry: bool, now: float) -> Verdict:
    """``queue.fail`` for an agent's FAIL, then its retry delay (``body["retry_after"]``
    or the pool's backoff)."""
    verdict: Verdict = dispatch.queue.fail(
        body["item"], body["attempt"], agent, body["error"], retry, now
    )
    after_failure(dispatch, verdict.item, body.get("retry_after"))
    return verdict


def reclaim_then_delay(dispatch: Any, agent: str, reason: Any, now: float) -> Verdict:
    """``queue.reclaim``; an exit or a hang (the item's fault) then waits its retry delay
    (a stop or an unreachable agent does not)."""
    verdict: Verdict = dispatch.queue.reclaim(agent, reason, now)
    if reason in ("exit", "hang") and verdict.accepted:
        after_failure(dispatch, verdict.item, None)
    return verdict


def after_failure(dispatch: Any, item: WorkItem | None, asked: Any) -> None:
    """A failed attempt put ``item`` back: hold it for its retry delay (the agent's
    ``retry_after``, else the pool's backoff), if the queue can."""
    if item is None or item.status is not ItemStatus.QUEUED:
        return  # final, or dead-lettered
    retry_later = getattr(dispatch.queue, "retry_later", None)
    delays = RETRY_DELAYS.get(dispatch)
    delay = delays(item, asked) if delays is not None else None
    if retry_later is not None and delay:
        retry_later(item.id, delay)


async def wait_for_wake(wake: trio.Event, queue: Any) -> None:
    """Wait until ``wake`` is set or the earliest delayed item of ``queue`` is ready
    (one timer, for the earliest: its wall time moved to trio's clock)."""
    next_ready = getattr(queue, "next_ready", None)
    at = next_ready() if next_ready is not None else None
    if at is None:
        await wake.wait()
        return
    clock = getattr(queue, "clock", time.time)
    with trio.move_on_at(trio.current_time() + max(0.0, at - clock()) + 0.001):
        await wake.wait()
