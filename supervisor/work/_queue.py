"""The queue protocol and the in-memory queue: every decision on an item, synchronous."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from .._errors import ControlError
from ._item import (
    FINAL,
    AttemptRecord,
    ItemStatus,
    Verdict,
    WorkItem,
    _dependency_ended,
    _used_up,
)

_HISTORY = 20  # attempts kept per item


@runtime_checkable
class WorkQueue(Protocol):
    """Holds work items and decides every transition; the service only feeds it.

    Every method is synchronous and decides from its arguments and the queue's state
    alone (``now`` is passed in), so a backend can be property-tested without a hub.
    """

    def submit(
        self, agent_type: str, payload: Any, *, max_deliveries: int, source: str, now: float
    ) -> WorkItem:
        """Queue a new item and return it."""
        ...

    def has_work(self, agent_type: str) -> bool:
        """Whether an item of ``agent_type`` is queued."""
        ...

    def assign(self, agent_type: str, agent: str, now: float) -> WorkItem | None:
        """Give the oldest queued item of ``agent_type`` to ``agent`` (a new attempt)."""
        ...

    def complete(self, item_id: str, attempt: int, agent: str, result: Any, now: float) -> Verdict:
        """The agent finished the item."""
        ...

    def fail(
        self, item_id: str, attempt: int, agent: str, error: str, retry: bool, now: float
    ) -> Verdict:
        """The agent failed the item; with ``retry`` it is queued again while deliveries
        remain, else it is final."""
        ...

    def hand_back(self, item_id: str, attempt: int, agent: str, now: float) -> Verdict:
        """The agent gives the item back unfinished; no delivery is spent."""
        ...

    def progress(
        self, item_id: str, attempt: int, agent: str, progress: Any, checkpoint: Any
    ) -> Verdict:
        """The agent reports progress and a checkpoint for the next attempt."""
        ...

    def reclaim(
        self, agent: str, reason: Literal["exit", "hang", "stop", "unreachable"], now: float
    ) -> Verdict:
        """The agent is gone (or being killed): its item goes back, or dead-letters."""
        ...

    def retry(self, item_id: str, now: float) -> WorkItem:
        """Queue a dead or failed item again with fresh deliveries."""
        ...

    def get(self, item_id: str) -> WorkItem:
        """The item, or :class:`ControlError` naming the unknown id."""
        ...

    def items(self) -> Iterable[WorkItem]:
        """Every item, oldest first."""
        ...

    def held_by(self, agent: str) -> WorkItem | None:
        """The item ``agent`` holds, if any."""
        ...

    def depth(self, agent_type: str) -> int:
        """Items of ``agent_type`` waiting for an agent (the service's ``max_queued`` cap
        and the autoscaler read it)."""
        ...


class MemoryWorkQueue:
    """The in-memory :class:`WorkQueue` (the embedded default): lost with the hub.

    Args:
        keep_finished: how many completed/failed/dead items to keep for inspection
            (the oldest are forgotten beyond that; queued and assigned ones never are).
    """

    def __init__(self, *, keep_finished: int = 10_000) -> None:
        self.hub_id = ""
        """The hub named in each :class:`AttemptRecord` (the work service sets it)."""
        self._items: dict[str, WorkItem] = {}
        self._queues: dict[str, deque[str]] = {}
        self._held: dict[str, str] = {}  # agent -> item id
        self._finished: deque[str] = deque()
        self._keep = keep_finished
        self._ids = itertools.count(1)
        self._keys: dict[tuple[str, str], str] = {}  # (type, key) -> the kept item's id
        self._dependents: dict[str, list[str]] = {}  # item id -> ids waiting on it
        self._blocked: dict[str, set[str]] = {}  # type -> ids waiting for dependencies
        self._settling: list[tuple[WorkItem, float]] | None = None  # a cascade under way
        self.settled: list[WorkItem] = []
        """Items cancelled because a dependency ended otherwise than completed, not yet
        reported (the work service takes them for its events)."""

    # reading

    def get(self, item_id: str) -> WorkItem:
        """The item with ``item_id``."""
        try:
            return self._items[item_id]
        except KeyError:
            raise ControlError(
                f"no work item {item_id!r}; `hubvisor work list` lists them"
            ) from None

    def items(self) -> Iterable[WorkItem]:
        """Every item kept, oldest first."""
        return list(self._items.values())

    def held_by(self, agent: str) -> WorkItem | None:
        """The item ``agent`` holds, if any."""
        item_id = self._held.get(agent)
        return self._items[item_id] if item_id is not None else None

    def has_work(self, agent_type: str) -> bool:
        """Whether an item of ``agent_type`` is queued."""
        return bool(self._queues.get(agent_type))

    def depth(self, agent_type: str) -> int:
        """How many items of ``agent_type`` are queued."""
        return len(self._queues.get(agent_type, ()))

    # transitions

    def submit(
        self,
        agent_type: str,
        payload: Any,
        *,
        max_deliveries: int,
        source: str,
        now: float,
        key: str | None = None,
        after: Iterable[str] = (),
        require: dict[str, str] | None = None,
    ) -> WorkItem:
        """Queue a new item; its id is ``<type>-<n>``. With ``key``, the kept item of
        ``agent_type`` submitted with that key, if any, is returned instead (nothing is
        created); with ``after``, the item waits until those items completed (see
        :meth:`_wait_for`)."""
        if key is not None:
            existing = self.keyed(agent_type, key)
            if existing is not None:
                return existing
        deps = list({d.id: d for d in map(self.get_dependency, after)}.values())
        after = [d.id for d in deps]
        item = WorkItem(
            id=f"{agent_type}-{next(self._ids)}",
            agent_type=agent_type,
            payload=payload,
            max_deliveries=max_deliveries,
            created_at=now,
            source=source,
            key=key,
            after=after,
            require=dict(require or {}),
        )
        self._items[item.id] = item
        if key is not None:
            self._keys[(agent_type, key)] = item.id
        if not self._wait_for(item, deps, now):
            self._queues.setdefault(agent_type, deque()).append(item.id)
        return item

    def assign(
        self, agent_type: str, agent: str, now: float, labels: Mapping[str, str] | None = None
    ) -> WorkItem | None:
        """Give the oldest queued item of ``agent_type`` to ``agent`` (whose pool has
        ``labels``: the oldest one whose ``require`` they match)."""
        if agent in self._held:
            raise ControlError(f"agent {agent!r} already holds {self._held[agent]!r}")
        queue = self._queues.get(agent_type)
        if not queue:
            return None
        picked = _pick(queue, self._items, labels or {})
        if picked is None:
            return None
        item = self._items[picked]
        item.status = ItemStatus.ASSIGNED
        item.progress = None  # the new attempt reports its own (the checkpoint stays)
        item.attempt += 1
        item.deliveries += 1
        item.agent = agent
        item.started_at = now
        self._held[agent] = item.id
        return item

    def _fence(self, item_id: str, attempt: int, agent: str) -> WorkItem | str:
        item = self._items.get(item_id)
        if item is None:
            return f"no item {item_id!r}"
        if item.status is not ItemStatus.ASSIGNED or item.attempt != attempt:
            return (
                f"stale: {item_id!r} attempt {attempt} is not the current one "
                f"(status {item.status}, attempt {item.attempt})"
            )
        if item.agent != agent:
            return f"{item_id!r} attempt {attempt} is held by {item.agent!r}, not {agent!r}"
        return item

    def _release(self, item: WorkItem, agent: str, outcome: str, reason: str, now: float) -> None:
        item.history.append(AttemptRecord(item.attempt, agent, outcome, reason, now, self.hub_id))
        del item.history[:-_HISTORY]
        self._held.pop(agent, None)
        item.agent = None

    def _finish(self, item: WorkItem, status: ItemStatus, now: float) -> None:
        item.status = status
        item.finished_at = now
        self._finished.append(item.id)
        while len(self._finished) > self._keep:
            old = self._finished.popleft()
            if self._items.get(old) is not None and self._items[old].status in FINAL:
                self._unkey(self._items.pop(old))
        self._settle_dependents(item, now)

    def _requeue(self, item: WorkItem, *, front: bool) -> None:
        item.status = ItemStatus.QUEUED
        queue = self._queues.setdefault(item.agent_type, deque())
        if front:  # it waited its turn once already
            queue.appendleft(item.id)
        else:
            queue.append(item.id)

    def complete(self, item_id: str, attempt: int, agent: str, result: Any, now: float) -> Verdict:
        """Mark the item completed with ``result`` (fenced)."""
        item = self._fence(item_id, attempt, agent)
        if isinstance(item, str):
            return Verdict(False, item)
        self._release(item, agent, "completed", "", now)
        item.result = result
        item.error = None  # an earlier attempt's failure is history now
        self._finish(item, ItemStatus.COMPLETED, now)
        return Verdict(True, item=item)

    def fail(
        self, item_id: str, attempt: int, agent: str, error: str, retry: bool, now: float
    ) -> Verdict:
        """Record a failure; queue again while deliveries remain, else dead-letter."""
        item = self._fence(item_id, attempt, agent)
        if isinstance(item, str):
            return Verdict(False, item)
        self._release(item, agent, "failed", error, now)
        item.error = error
        if not retry:
            self._finish(item, ItemStatus.FAILED, now)
        elif item.deliveries >= item.max_deliveries:
            item.error = _used_up(item)
            self._finish(item, ItemStatus.DEAD, now)
        else:
            self._requeue(item, front=True)
        return Verdict(True, item=item)

    def hand_back(self, item_id: str, attempt: int, agent: str, now: float) -> Verdict:
        """Queue the item again at the front; the delivery is not spent."""
        item = self._fence(item_id, attempt, agent)
        if isinstance(item, str):
            return Verdict(False, item)
        self._release(item, agent, "handed_back", "", now)
        item.deliveries -= 1
        self._requeue(item, front=True)
        return Verdict(True, item=item)

    def progress(
        self, item_id: str, attempt: int, agent: str, progress: Any, checkpoint: Any
    ) -> Verdict:
        """Keep the progress and the checkpoint (fenced)."""
        item = self._fence(item_id, attempt, agent)
        if isinstance(item, str):
            return Verdict(False, item)
        item.progress = progress
        if checkpoint is not None:
            item.checkpoint = checkpoint
        return Verdict(True, item=item)

    def reclaim(
        self, agent: str, reason: Literal["exit", "hang", "stop", "unreachable"], now: float
    ) -> Verdict:
        """Take back what ``agent`` holds: a stop refunds the delivery, an exit or hang
        spends it, and an item with no deliveries left is dead-lettered."""
        item = self.held_by(agent)
        if item is None:
            return Verdict(False, f"{agent!r} holds nothing")
        self._release(item, agent, f"reclaimed:{reason}", reason, now)
        if reason in ("stop", "unreachable"):
            item.deliveries -= 1
        if item.deliveries >= item.max_deliveries:
            item.error = _used_up(item)
            self._finish(item, ItemStatus.DEAD, now)
        else:
            self._requeue(item, front=True)
        return Verdict(True, item=item)

    def adopt(self, item: WorkItem) -> None:
        """Hold ``item`` (taken from a shared store) and queue it behind the others."""
        self._items[item.id] = item
        self._requeue(item, front=False)

    def forget(self, item_id: str) -> WorkItem | None:
        """Drop the item (another hub took it): whoever holds it here is refused later."""
        item = self._items.pop(item_id, None)
        if item is None:
            return None
        self._unkey(item)
        queue = self._queues.get(item.agent_type)
        if queue is not None and item_id in queue:
            queue.remove(item_id)
        if item.agent is not None and self._held.get(item.agent) == item_id:
            del self._held[item.agent]
        return item

    def retry(self, item_id: str, now: float) -> WorkItem:
        """Queue a dead or failed item again, with its deliveries reset."""
        item = self.get(item_id)
        if item.status not in (ItemStatus.DEAD, ItemStatus.FAILED):
            raise ControlError(
                f"work item {item_id!r} is {item.status}; only dead or failed items can be retried"
            )
        with_finished = [i for i in self._finished if i != item_id]
        self._finished = deque(with_finished)
        item.deliveries = 0
        item.error = None
        item.finished_at = None
        self._requeue(item, front=False)
        return item

    # ----------------------------------------------------------------------------------
    # Dependencies and idempotent keys (issue 21)

    def touch(self, item_id: str) -> None:
        """An item changed outside the usual steps (a store writes it; a no-op here)."""

    def keyed(self, agent_type: str, key: str) -> WorkItem | None:
        """The kept item of ``agent_type`` submitted with ``key``, if any. A key lasts as
        long as its item is kept: once the item is pruned (``keep_finished``) the key is
        free again, so the index never holds more keys than items kept."""
        item_id = self._keys.get((agent_type, key))
        return None if item_id is None else self._items.get(item_id)

    def get_dependency(self, item_id: str) -> WorkItem:
        """The item ``item_id`` a new item would wait for, or a :class:`ControlError`.
        ``TYPE:KEY`` names the kept item of ``TYPE`` submitted with ``KEY`` (an agent's
        ``SUBMIT`` does not learn the ids of the items it submits; it names them so)."""
        agent_type, colon, key = item_id.partition(":")
        if colon:
            keyed = self.keyed(agent_type, key)
            if keyed is None:
                raise ControlError(
                    f"--after names {item_id!r}, but no kept item of type {agent_type!r} "
                    f"was submitted with key {key!r}; submit it first (with --key)"
                )
            return keyed
        item = self._items.get(item_id)
        if item is None:
            raise ControlError(
                f"--after names {item_id!r}, which is no work item kept here (unknown, or "
                "finished and pruned by keep_finished); `hubvisor work list` lists them"
            )
        return item

    def _unkey(self, item: WorkItem) -> None:
        if item.key is not None and self._keys.get((item.agent_type, item.key)) == item.id:
            del self._keys[(item.agent_type, item.key)]

    def _wait_for(self, item: WorkItem, deps: list[WorkItem], now: float) -> bool:
        """Make the new ``item`` wait for those of ``deps`` not completed; one that ended
        otherwise cancels it at once. True when it waits (or ended): not queued."""
        for dep in deps:
            if dep.status in FINAL and dep.status is not ItemStatus.COMPLETED:
                item.error = _dependency_ended(dep)
                self.settled.append(item)
                self._finish(item, ItemStatus.CANCELLED, now)
                return True
        item.waiting_on = [d.id for d in deps if d.status is not ItemStatus.COMPLETED]
        for dep_id in item.waiting_on:
            self._dependents.setdefault(dep_id, []).append(item.id)
        if item.waiting_on:
            self._blocked.setdefault(item.agent_type, set()).add(item.id)
        return bool(item.waiting_on)

    def depth_for(self, agent_type: str, labels: Mapping[str, str]) -> int:
        """How many queued items of ``agent_type`` a pool with ``labels`` may take."""
        queue = self._queues.get(agent_type, ())
        return sum(1 for i in queue if _matches(self._items[i].require, labels))

    def blocked(self, agent_type: str) -> int:
        """How many items of ``agent_type`` wait for their dependencies (not in
        :meth:`depth`; the service's ``max_queued`` counts them too)."""
        return len(self._blocked.get(agent_type, ()))

    def _settle_dependents(self, dep: WorkItem, now: float) -> None:
        """``dep`` ended: its dependents stop waiting for it when it completed (queued
        once they wait for nothing), else they are cancelled, naming it, and theirs in
        turn — in a loop, first ended first, never by recursion (a chain of any length
        is cancelled without growing the stack)."""
        if self._settling is not None:  # inside a cascade: the loop below takes it
            self._settling.append((dep, now))
            return
        self._settling = [(dep, now)]
        try:
            while self._settling:
                self._settle_one(*self._settling.pop(0))
        finally:
            self._settling = None

    def _settle_one(self, dep: WorkItem, now: float) -> None:
        for item_id in self._dependents.pop(dep.id, ()):
            item = self._items.get(item_id)
            if (
                item is None
                or item.status is not ItemStatus.QUEUED
                or dep.id not in item.waiting_on
            ):
                continue
            if dep.status is ItemStatus.COMPLETED:
                item.waiting_on.remove(dep.id)
                self.touch(item.id)
                if not item.waiting_on:
                    self._blocked.get(item.agent_type, set()).discard(item.id)
                    self._requeue(item, front=False)
                continue
            self._blocked.get(item.agent_type, set()).discard(item.id)
            for other in item.waiting_on:
                waiting = self._dependents.get(other)
                if waiting is not None and item.id in waiting:
                    waiting.remove(item.id)
            item.waiting_on = []
            item.error = _dependency_ended(dep)
            self.settled.append(item)
            del self.settled[:-10_000]  # nobody reads them (a queue alone): bounded
            self._finish(item, ItemStatus.CANCELLED, now)

    def _index_controls(self) -> None:
        """Rebuild the key index and the waiting dependents from the items held (after
        a store loaded them)."""
        self._keys.clear()
        self._dependents.clear()
        self._blocked.clear()
        for item in self._items.values():
            if item.key is not None:
                self._keys[(item.agent_type, item.key)] = item.id
            if item.status is ItemStatus.QUEUED and item.waiting_on:
                self._blocked.setdefault(item.agent_type, set()).add(item.id)
                for dep_id in item.waiting_on:
                    self._dependents.setdefault(dep_id, []).append(item.id)
        # A dependency that ended while nobody settled it (it was assigned when the last
        # hub died, and its last delivery was spent then): settle it now.
        for dep_id in list(self._finished):  # in the order they ended
            dep = self._items.get(dep_id)
            if dep is not None and dep_id in self._dependents:
                self._settle_dependents(dep, dep.finished_at or 0.0)


def _matches(require: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a pool with ``labels`` may take an item that requires ``require``."""
    return all(labels.get(k) == v for k, v in require.items())


def _pick(queue: deque[str], items: dict[str, WorkItem], labels: Mapping[str, str]) -> str | None:
    """Take the first id of ``queue`` whose item's ``require`` matches ``labels``."""
    for n, item_id in enumerate(queue):
        if _matches(items[item_id].require, labels):
            if n == 0:
                return queue.popleft()
            del queue[n]
            return item_id
    return None
