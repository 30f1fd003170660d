"""Dependencies, idempotent keys and routing to tiers (issue 21), decided by the
in-memory queue: the part of :class:`~supervisor.MemoryWorkQueue` that keeps the key
index and the items waiting for others (a mixin: the queue holds the state)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import ControlError
from ._item import FINAL, ItemStatus, WorkItem, _dependency_ended

__all__ = ["DependencyIndex", "blocked_count"]


class DependencyIndex:
    """Keys and dependencies of :class:`~supervisor.MemoryWorkQueue` (its state: the
    attributes below, set by its ``__init__``)."""

    _items: dict[str, WorkItem]
    _queues: dict[str, Any]
    _keys: dict[tuple[str, str], str]
    _dependents: dict[str, list[str]]
    _blocked: dict[str, set[str]]
    _settling: list[tuple[WorkItem, float]] | None
    _finished: Any
    settled: list[WorkItem]

    def _finish(self, item: WorkItem, status: ItemStatus, now: float) -> None:
        raise NotImplementedError

    def _requeue(self, item: WorkItem, *, front: bool) -> None:
        raise NotImplementedError

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

    def _unblock(self, item: WorkItem) -> None:
        """Forget that ``item`` (cancelled while queued) waits for its dependencies."""
        self._blocked.get(item.agent_type, set()).discard(item.id)
        for other in item.waiting_on:
            waiting = self._dependents.get(other)
            if waiting is not None and item.id in waiting:
                waiting.remove(item.id)
        item.waiting_on = []

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


def blocked_count(queue: Any, agent_type: str) -> int:
    """Items of ``agent_type`` waiting for their dependencies in ``queue`` (0: a queue
    without dependencies)."""
    blocked = getattr(queue, "blocked", None)
    return 0 if blocked is None else int(blocked(agent_type))
