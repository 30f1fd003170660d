"""The in-memory queue that decides, remembering what changed since the last write."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from .._item import FINAL, ItemStatus, Verdict, WorkItem
from .._queue import MemoryWorkQueue

__all__ = ["TrackedQueue", "seq_of"]

_FINAL = FINAL


def seq_of(item_id: str) -> int:
    """The ``n`` of an id ``<type>-<n>`` (0 for an id not of that form)."""
    tail = item_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class TrackedQueue(MemoryWorkQueue):
    """A :class:`MemoryWorkQueue` that marks each item it changes (or prunes) dirty, for
    the next write, and gives each item a place (``pos``) in its list: its type's queue
    while queued (front: below every other, back: above), the finished list once
    finished (above every other: they are pruned oldest first). Every decision is the
    memory queue's own.

    ``dirty`` holds ids in the order they were first changed since the last write (an
    insertion-ordered dict used as a set); an id whose item is gone is a row to delete.
    It never holds more ids than the items kept plus those pruned since the last write.
    """

    def __init__(self, *, keep_finished: int) -> None:
        super().__init__(keep_finished=keep_finished)
        self.stamp = float  # its methods get Unix time (the queue's wall()) already
        self.dirty: dict[str, None] = {}
        self.pos: dict[str, int] = {}
        self.lo = 0  # the front of every queue (a smaller pos goes first)
        self.hi = 0  # the back of every queue and of the finished list
        self.last_id = 0  # the last id's n handed out

    def touch(self, item_id: str) -> None:
        """Mark ``item_id`` for the next write."""
        self.dirty[item_id] = None

    def take_dirty(self, limit: int) -> list[str]:
        """The oldest ``limit`` dirty ids, no longer dirty."""
        ids = list(itertools.islice(self.dirty, limit))
        for item_id in ids:
            del self.dirty[item_id]
        return ids

    def put_back(self, ids: Iterable[str]) -> None:
        """A write that failed: its ids are dirty again, ahead of the others."""
        self.dirty = {**dict.fromkeys(ids), **self.dirty}

    def install(self, items: Iterable[WorkItem], pos: dict[str, int], next_id: int) -> None:
        """Hold ``items`` (read from the database, oldest first; none assigned) with their
        places, and hand out ids from ``next_id`` on."""
        items = list(items)
        for item in items:
            self._items[item.id] = item
        order = sorted(items, key=lambda i: (pos.get(i.id, 0), seq_of(i.id)))
        for item in order:
            if item.status is ItemStatus.QUEUED and not item.waiting_on:
                self._place(item, front=False)  # by priority; a delayed one waits
            elif item.status in _FINAL:
                self._finished.append(item.id)
        self.pos.update(pos)
        self.lo = min(self.pos.values(), default=0)
        self.hi = max(self.pos.values(), default=0)
        self._ids = itertools.count(next_id)
        self.last_id = next_id - 1
        self._index_controls()

    # --------------------------------------------------------------------------------
    # the memory queue's own steps, tracked

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
        priority: int = 0,
        not_before: float | None = None,
    ) -> WorkItem:
        if key is not None:
            existing = self.keyed(agent_type, key)
            if existing is not None:
                return existing
        item = super().submit(
            agent_type,
            payload,
            max_deliveries=max_deliveries,
            source=source,
            now=now,
            key=key,
            after=after,
            require=require,
            priority=priority,
            not_before=not_before,
        )
        self.last_id = seq_of(item.id)
        self.hi += 1
        self.pos[item.id] = self.hi
        self.touch(item.id)
        return item

    def assign(
        self, agent_type: str, agent: str, now: float, labels: Mapping[str, str] | None = None
    ) -> WorkItem | None:
        item = super().assign(agent_type, agent, now, labels)
        if item is not None:
            self.touch(item.id)
        return item

    def progress(
        self, item_id: str, attempt: int, agent: str, progress: Any, checkpoint: Any
    ) -> Verdict:
        verdict = super().progress(item_id, attempt, agent, progress, checkpoint)
        if verdict.accepted:
            self.touch(item_id)
        return verdict

    def forget(self, item_id: str) -> WorkItem | None:
        item = super().forget(item_id)
        if item is not None:
            self.pos.pop(item_id, None)
            self.touch(item_id)
        return item

    def _release(self, item: WorkItem, agent: str, outcome: str, reason: str, now: float) -> None:
        super()._release(item, agent, outcome, reason, now)
        self.touch(item.id)

    def _requeue(self, item: WorkItem, *, front: bool) -> None:
        super()._requeue(item, front=front)
        if front:
            self.lo -= 1
            self.pos[item.id] = self.lo
        else:
            self.hi += 1
            self.pos[item.id] = self.hi
        self.touch(item.id)

    def _finish(self, item: WorkItem, status: ItemStatus, now: float) -> None:
        # The memory queue prunes from the left of its finished list while it is over
        # the bound: exactly these ids go, if they go.
        # Its place is taken first: finishing it may finish (cancel) its dependents,
        # which go after it.
        n = max(0, len(self._finished) + 1 - self._keep)
        gone = list(itertools.islice(itertools.chain(self._finished, (item.id,)), n))
        self.hi += 1
        self.pos[item.id] = self.hi
        self.touch(item.id)
        super()._finish(item, status, now)
        for old in gone:
            if old not in self._items:
                self.pos.pop(old, None)
                self.touch(old)
